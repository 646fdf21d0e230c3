"""Post-fine-tuning defenses (SafeLoRA, Antidote): repairs applied to the model *after* the attacker's fine-tuning.

They are registered in DEFENSES like the alignment-stage ones, so a recipe names them in `defenses:` and every
table treats them as one more row. Their alignment stage is plain SFT (the inherited default step, with the same
batches and optimizer as the `sft` row); what distinguishes them is `repair`, which the HFT experiment calls on the
attacked model right after the attack's training and before any measurement (`repair_attacked`, one call in
`experiments/ctrap.py` `attack()`). A defense's `stage` says where it acts: "alignment" for the existing ones
(no attribute), "post" here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..data.core import Example
from .base import Defense

Tensor = Any


def stage_of(defense: Defense) -> str:
    """'alignment' (default), 'finetune' or 'post'."""
    return str(getattr(defense, "stage", "alignment"))


@dataclass
class RepairContext:
    """What a post-fine-tuning repair may use besides the attacked model."""

    aligned_adapter: Path
    """The alignment stage's adapter, as released before the attack (SafeLoRA's aligned weights)."""
    harmful: Sequence[Example]
    """Harmful (prompt, harmful answer) rows held out from the attack data (Antidote's re-alignment set)."""
    tokenizer: Any
    fmt: str = "auto"
    """Prompt format of the run."""
    max_length: int = 256


class PostFineTuneDefense(Defense):
    """A defense that repairs the fine-tuned model; alignment is SFT."""

    stage: ClassVar[str] = "post"

    def repair(self, model: Any, ctx: RepairContext) -> dict[str, Any]:
        """Modify the attacked model in place; return what was done (logged with the attack's metrics)."""
        raise NotImplementedError


def repair_attacked(defense: Defense, model: Any, ctx: RepairContext) -> dict[str, Any] | None:
    """The HFT experiment's hook: repair the attacked model if the defense acts after fine-tuning, else None."""
    if not isinstance(defense, PostFineTuneDefense):
        return None
    import torch

    model.eval()
    with torch.no_grad():
        return defense.repair(model, ctx)


def lora_layers(model: Any) -> dict[str, Any]:
    """Module name → peft LoRA layer (adapter 'default') of a peft model; {} for a plain model."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_A", {})}


def lora_delta(layer: Any, a: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    """ΔW = scaling · B A of a LoRA layer (its live factors, or the given ones), in float32."""
    a = layer.lora_A["default"].weight if a is None else a
    b = layer.lora_B["default"].weight if b is None else b
    return layer.scaling["default"] * (b.float() @ a.float())
