"""Antidote (Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against Harmful
Fine-tuning", ICML 2025, arXiv 2408.09600): after the attack, prune the weights that matter most for harmful
outputs, one shot, whatever the fine-tuning hyper-parameters were.

    S_ij = |W_ij| · ‖X_j‖₂        Wanda score on the re-alignment (harmful) data; X_j = input feature j of the
                                  layer over every non-padding calibration token
    W_ij ← 0  for the top `ratio` fraction of S in every linear layer of the decoder blocks

The weights are the fine-tuned model's effective ones: a LoRA adapter is merged into the base weights first (the
model stays a peft model whose adapter is marked merged), a full-parameter attack's weights are used as they are.
Deviations: the ranking group is one layer (Wanda's own default compares within an output row; Antidote's mask is
per layer as we read it — `group: row` gives Wanda's); the re-alignment rows are the run's held-out harmful
alignment pairs (`align_harmful`, disjoint from the attack data); padding positions are excluded from ‖X_j‖.
Cost: `n_calibration / batch_size` forward passes, no backward.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from ..config import Fraction, PosInt
from ..errors import ConfigError
from ..registry import DEFENSES
from ..training import PadCollator, TokenizedDataset
from .base import DefenseConfig
from .post import PostFineTuneDefense, RepairContext, lora_layers
from .representations import decoder_parts

Tensor = Any


@dataclass
class AntidoteConfig(DefenseConfig):
    """Antidote hyper-parameters."""

    ratio: Fraction = 0.1
    """Fraction of every layer's weights pruned (official scripts: `dense_ratio` 0.1)."""
    n_calibration: PosInt = 32
    """Harmful re-alignment rows behind the activation norms (official: 2000, batch 1; CPU default 32)."""
    calibration_batch_size: PosInt = 8
    """Rows per calibration forward pass."""
    group: Literal["layer", "row"] = "layer"
    """Where scores are ranked: the whole layer (Antidote) or each output row (Wanda's default)."""


def pruned_linears(model: Any) -> dict[str, Any]:
    """name → nn.Linear holding the effective weights inside the decoder blocks (LoRA factors excluded)."""
    import torch

    out = {}
    for i, block in enumerate(decoder_parts(model).layers):
        for name, m in block.named_modules():
            if isinstance(m, torch.nn.Linear) and "lora_" not in name:
                out[f"layers.{i}.{name}"] = m
    return out


@contextmanager
def input_sq_norms(linears: dict[str, Any], mask_ref: list[Tensor]) -> Iterator[dict[str, Tensor]]:
    """Accumulate Σ_tokens x_j² of every linear's input over the forwards run inside the block; positions where
    mask_ref[0] (the current batch's attention mask) is 0 are left out."""
    import torch

    sums: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: Any, args: tuple[Tensor, ...]) -> None:
            x = args[0].float()
            m = mask_ref[0].to(x.dtype)
            extra = x.shape[1] - m.shape[1]
            if extra > 0:
                # a prompt-tuned model (the soft-prompt attack) prepends its virtual tokens to every row inside
                # peft's forward; they are attended, so they count like real tokens
                m = torch.cat([m.new_ones(m.shape[0], extra), m], dim=1)
            m = m.unsqueeze(-1)
            s = ((x * m) ** 2).reshape(-1, x.shape[-1]).sum(0)
            sums[name] = s if name not in sums else sums[name] + s
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in linears.items()]
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


def prune_mask(score: Tensor, ratio: float, group: str) -> Tensor:
    """Boolean mask of the top `ratio` scores: floor(ratio · numel) in the layer, or floor(ratio · columns) per row."""
    import torch

    mask = torch.zeros_like(score, dtype=torch.bool)
    if group == "row":
        k = int(ratio * score.shape[1])
        if k:
            mask.scatter_(1, score.topk(k, dim=1).indices, True)
        return mask
    k = int(ratio * score.numel())
    if k:
        mask.view(-1)[score.reshape(-1).topk(k).indices] = True
    return mask


@DEFENSES.register("antidote", config=AntidoteConfig)
class AntidoteDefense(PostFineTuneDefense):
    """Post-fine-tuning: one-shot pruning of the weights with the highest Wanda score on harmful data."""

    config_cls = AntidoteConfig
    paper = ("Huang et al., Antidote: Post-fine-tuning Safety Alignment for Large Language Models against Harmful "
             "Fine-tuning, ICML 2025, arXiv 2408.09600")
    passes_per_step = 1
    """SFT alignment; the repair costs n_calibration / batch forward passes after the attack."""
    cfg: AntidoteConfig

    def activation_norms(self, model: Any, ctx: RepairContext) -> dict[str, Tensor]:
        """‖X_j‖₂ of every pruned linear's input over the calibration rows."""
        import torch

        rows = list(ctx.harmful)[: self.cfg.n_calibration]
        if not rows:
            raise ConfigError("antidote needs harmful re-alignment rows (the run's align_harmful data is empty)")
        data = TokenizedDataset(ctx.tokenizer, rows, ctx.fmt, ctx.max_length)
        collate = PadCollator(ctx.tokenizer.pad_token_id)
        linears = pruned_linears(model)
        device = next(model.parameters()).device
        mask_ref: list[Tensor] = [None]
        with input_sq_norms(linears, mask_ref) as sums:
            for start in range(0, len(data), self.cfg.calibration_batch_size):
                batch = collate([data[i] for i in range(start, min(start + self.cfg.calibration_batch_size,
                                                                   len(data)))])
                mask_ref[0] = batch["attention_mask"].to(device)
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask_ref[0])
        return {n: torch.sqrt(s) for n, s in sums.items()}

    def repair(self, model: Any, ctx: RepairContext) -> dict[str, Any]:
        for layer in lora_layers(model).values():
            layer.merge()  # effective weights = base + s·BA, in the base layer (the adapter is marked merged)
        norms = self.activation_norms(model, ctx)
        pruned, total = 0, 0
        for name, linear in pruned_linears(model).items():
            w = linear.weight
            mask = prune_mask(w.detach().abs().float() * norms[name].unsqueeze(0), self.cfg.ratio, self.cfg.group)
            w.masked_fill_(mask, 0)
            pruned += int(mask.sum())
            total += mask.numel()
        return {"repaired": True, "pruned": pruned, "weights": total, "pruned_fraction": pruned / max(total, 1),
                "calibration_rows": min(len(ctx.harmful), self.cfg.n_calibration)}
