"""SafeLoRA (Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large Language
Models", NeurIPS 2024, arXiv 2405.16833): after fine-tuning, project the LoRA update of the layers that left the
safety-aligned subspace back onto it.

Per LoRA-adapted weight i:
    V_i = W_aligned,i − W_base,i                     the alignment direction
    C_i = V_i V_iᵀ / ‖V_i‖_F                         the official code's "projection" (not idempotent; kept as is)
    ΔW_i = W_finetuned,i − W_aligned,i               the attacker's update
    sim_i = ⟨ΔW_i, C_i ΔW_i⟩_F / (‖ΔW_i‖_F ‖C_i ΔW_i‖_F)
    ΔW_i ← C_i ΔW_i   for the layers with sim_i < τ (`select: threshold`), or the n least similar (`select: number`)

Deviation: the paper's W_base / W_aligned are a base model and its chat version (e.g. Llama-2-7B and -chat). In the
HFT experiment the aligned model is the base model plus the alignment stage's LoRA, so V_i is that LoRA's update
(s·B₀A₀) and ΔW_i what the attack added to it (s·(BA − B₀A₀)); a layer whose alignment update is zero has no
subspace to project onto and is left alone. The repaired update is written into the frozen base weight
(W_base += C ΔW − ΔW), since C ΔW + s·B₀A₀ no longer fits the rank-r adapter.
SafeLoRA needs a LoRA attack; after a full-parameter attack (merged weights) the repair records
`repaired: false` and leaves the model as it is.
Cost: one d_out × d_out matrix product per adapted weight, no forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..config import PosInt
from ..errors import ConfigError
from ..registry import DEFENSES
from .base import DefenseConfig
from .post import PostFineTuneDefense, RepairContext, lora_delta, lora_layers

Tensor = Any
log = logging.getLogger("tamperlab")


@dataclass
class SafeLoRAConfig(DefenseConfig):
    """SafeLoRA hyper-parameters (official repository defaults: τ = 0.5; `number` mode projects 10 layers)."""

    select: Literal["threshold", "number"] = "threshold"
    """Which layers are projected: similarity below `threshold`, or the `num_layers` least similar."""
    threshold: float = 0.5
    """τ: project the layers whose cos(ΔW, CΔW) is below it."""
    num_layers: PosInt = 10
    """Number of projected layers in `number` mode."""


def projection(v: Tensor) -> Tensor:
    """C = V Vᵀ / ‖V‖_F (official SafeLoRA `get_aligned_matrix`)."""
    v = v.float()
    return (v @ v.T) / v.norm()


def cosine(a: Tensor, b: Tensor) -> float:
    """Frobenius cosine similarity of two matrices (0 when one of them is zero)."""
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 0.0


def select_layers(sims: dict[str, float], cfg: SafeLoRAConfig) -> list[str]:
    """Names of the layers to project: below τ, or the num_layers least similar (ties: name order)."""
    if cfg.select == "threshold":
        return sorted(n for n, s in sims.items() if s < cfg.threshold)
    return sorted(sorted(sims, key=lambda n: (sims[n], n))[: cfg.num_layers])


def aligned_factors(adapter_dir: Any) -> dict[str, Tensor]:
    """The released adapter's tensors, keyed as peft saves them (`<module>.lora_A.weight`)."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise ConfigError(f"safelora: no adapter_model.safetensors in {adapter_dir}")
    return load_file(str(path))


@DEFENSES.register("safelora", config=SafeLoRAConfig)
class SafeLoRADefense(PostFineTuneDefense):
    """Post-fine-tuning: project LoRA updates that left the safety-aligned subspace back onto it."""

    config_cls = SafeLoRAConfig
    paper = ("Hsu et al., Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large Language "
             "Models, NeurIPS 2024, arXiv 2405.16833")
    passes_per_step = 1
    """SFT alignment; the repair is a few matrix products per adapted weight after the attack."""
    cfg: SafeLoRAConfig

    def repair(self, model: Any, ctx: RepairContext) -> dict[str, Any]:
        layers = lora_layers(model)
        if not layers:
            # A full-parameter attack (full_finetune: true, aoa), a refusal-direction ablation or a soft prompt:
            # nothing to project. Not an error, so a grid or sweep mixing them with LoRA attacks runs through; the
            # row says it was not repaired.
            log.warning("safelora: the attacked model has no LoRA adapter (full-parameter, weight-editing or "
                        "soft-prompt attack): not repaired")
            return {"repaired": False,
                    "reason": "no LoRA update to project (full-parameter, weight-editing or soft-prompt attack)"}
        aligned = aligned_factors(ctx.aligned_adapter)
        sims: dict[str, float] = {}
        updates: dict[str, tuple[Tensor, Tensor]] = {}
        skipped = []
        for name, layer in layers.items():
            try:
                a0, b0 = aligned[f"{name}.lora_A.weight"], aligned[f"{name}.lora_B.weight"]
            except KeyError as e:
                raise ConfigError(f"safelora: the released adapter has no factors for {name} ({e})") from None
            dev = layer.lora_A["default"].weight.device
            v = lora_delta(layer, a0.to(dev), b0.to(dev))
            if not float(v.norm()) > 0:
                skipped.append(name)  # no aligned direction to project onto
                continue
            dw = lora_delta(layer) - v
            proj = projection(v) @ dw
            sims[name] = cosine(dw, proj)
            updates[name] = (dw, proj)
        chosen = select_layers(sims, self.cfg)
        for name in chosen:
            dw, proj = updates[name]
            weight = layers[name].get_base_layer().weight
            weight.add_((proj - dw).to(weight.dtype))
        return {"repaired": True, "projected": chosen, "n_projected": len(chosen), "n_layers": len(layers),
                "no_aligned_update": skipped, "similarity": {n: round(s, 6) for n, s in sims.items()}}
