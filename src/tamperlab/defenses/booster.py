"""Booster (Huang et al., ICLR 2025, arXiv 2409.01586): attenuate the harmful perturbation.

    min_θ  f(θ) + λ · ( h(θ) − h(θ − α·∇h(θ)/‖∇h(θ)‖) )

f = alignment (retain) loss, h = harmful loss. The regulariser is how much one simulated, normalised harmful
step would *lower* the harmful loss; minimising it flattens the harmful-loss landscape around the aligned model.
First-order, as the official `BoosterAlignmentTrainer`: update = ∇f(θ) + λ·∇h(θ) − λ·∇h(θ'), with ∇h(θ')
applied at θ (no back-propagation through θ'). Same look-ahead machinery as CTRAP; three forward/backward
passes per step (harmful at θ, harmful at θ', retain at θ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..registry import DEFENSES
from .base import AlignmentTrainer, Defense, DefenseConfig
from .objectives import global_token_ce
from .lookahead import add_to_grads, loss_and_grads, normalized_step_scale, perturbed, trainable
from .objectives import log_terms


@dataclass
class BoosterConfig(DefenseConfig):
    """Booster hyper-parameters (official defaults; the maintainers use λ=25 for GSM8K with batch 10)."""

    lam: float = 5.0
    """Weight λ of the harmful-loss-reduction regulariser."""
    alpha: float = 0.1
    """Radius α of the simulated (normalised) harmful step."""


@DEFENSES.register("booster", config=BoosterConfig)
class BoosterDefense(Defense):
    """Align while penalising how much one simulated harmful step would reduce the harmful loss."""

    config_cls = BoosterConfig
    uses_harmful = True
    paper = ("Huang et al., Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating "
             "Harmful Perturbation, ICLR 2025, arXiv 2409.01586")
    passes_per_step = 3
    lookahead = True
    cfg: BoosterConfig

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        params = trainable(raw)
        retain = trainer.retain_batch(inputs, device)
        harmful = trainer.aux_batch("harmful", device)
        h_before, g_before = loss_and_grads(raw, harmful, params)
        with perturbed(params, g_before, normalized_step_scale(g_before, self.cfg.alpha)):
            h_after, g_after = loss_and_grads(raw, harmful, params)
        loss = global_token_ce(model, retain)
        trainer.backward(loss)
        coef = self.cfg.lam / trainer.args.gradient_accumulation_steps
        add_to_grads(params, g_before, coef)
        add_to_grads(params, g_after, -coef)
        log_terms(trainer, {"harmful_loss": h_before, "harmful_loss_after_step": h_after,
                            "harmful_reduction": h_before - h_after}, "booster/")
        return loss
