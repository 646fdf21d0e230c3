"""Vaccine (Huang et al., NeurIPS 2024, arXiv 2402.01109): perturbation-aware alignment.

    min_θ  max_{‖ε‖ ≤ ρ}  ℓ(θ; D_align, e + ε)      e = the attention outputs of every decoder block

Per step, as the official `BaseTrainer.training_step` (Booster/CTRAP repos): pass 1 back-propagates the
alignment loss to the attention outputs e_l and sets ε_l = ρ·∇_{e_l}ℓ / ‖∇_e ℓ‖ (one L2 norm over all layers:
the worst-case first-order perturbation of radius ρ); pass 2 adds ε_l to each attention output through forward
hooks and back-propagates the alignment loss again — only this gradient reaches the optimizer. Two
forward/backward passes per step (pass 1 computes no weight gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..distributed import all_reduce_sum
from ..registry import DEFENSES
from .base import AlignmentTrainer, Defense, DefenseConfig
from .objectives import global_token_ce, log_terms
from .representations import add_to_outputs, capture_outputs, decoder_parts, require_captured

Tensor = Any


def output_grads(model: Any, batch: dict[str, Tensor], modules: Sequence[Any]) -> tuple[Tensor, list[Tensor]]:
    """(loss, d loss / d output of each module) for the global token-mean CE of `batch`: gradients w.r.t. the
    activations only (no weight gradient is computed or touched)."""
    import torch

    with capture_outputs(modules) as slots:
        loss = global_token_ce(model, batch)
    grads = torch.autograd.grad(loss, require_captured(slots))
    return loss.detach(), [g.detach() for g in grads]


def embedding_perturbation(model: Any, batch: dict[str, Tensor], modules: Sequence[Any],
                           rho: float) -> tuple[float, list[Tensor]]:
    """Vaccine's worst-case first-order perturbation of the outputs of `modules`: ε_l = ρ·g_l/‖g‖ with one L2 norm
    over the given modules (all attention modules for Vaccine, the sampled ones for T-Vaccine).
    Returns (clean loss, [ε_l])."""
    loss, grads = output_grads(model, batch, modules)
    # ‖ε‖ = ρ over the global batch: the squared norms of the ranks' rows add up.
    sq = all_reduce_sum(sum((g.float() ** 2).sum() for g in grads).detach())
    scale = rho / (float(sq.sqrt()) + 1e-7)
    return float(loss), [g * scale for g in grads]


@dataclass
class VaccineConfig(DefenseConfig):
    """Vaccine hyper-parameters (official defaults of the CTRAP/Booster comparison scripts)."""

    rho: float = 5.0
    """Radius ρ of the hidden-embedding perturbation (global L2 norm over all layers; Vaccine README example: 2)."""
    helpful_batch_size: int = 0
    """The official Vaccine trainer aligns on refusal data only; > 0 adds helpful rows to every batch."""


@DEFENSES.register("vaccine", config=VaccineConfig)
class VaccineDefense(Defense):
    """Perturbation-aware alignment: stay aligned when hidden embeddings drift by up to ρ."""

    config_cls = VaccineConfig
    paper = ("Huang et al., Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful "
             "Fine-tuning Attack, NeurIPS 2024, arXiv 2402.01109")
    passes_per_step = 2
    cfg: VaccineConfig

    def perturbation(self, raw: Any, batch: dict[str, Tensor]) -> tuple[float, list[Tensor]]:
        """(clean alignment loss, ε per attention module) with ‖ε‖ = ρ over all layers together."""
        return embedding_perturbation(raw, batch, decoder_parts(raw).attention, self.cfg.rho)

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        batch = trainer.retain_batch(inputs, inputs["input_ids"].device)
        clean_loss, eps = self.perturbation(raw, batch)
        with add_to_outputs(decoder_parts(raw).attention, eps):
            loss = global_token_ce(model, batch)
            trainer.backward(loss)  # inside the block: activation checkpointing re-runs the hooked forward
        log_terms(trainer, {"clean_loss": clean_loss, "perturbed_loss": float(loss.detach())}, "vaccine/")
        return loss
