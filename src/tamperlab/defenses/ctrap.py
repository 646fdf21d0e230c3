"""CTRAP (arXiv 2505.16559): plant a collapse trap during alignment.

    min_θ  ℓ(θ; D_retain) + λ · ℓ_Collapse(θ − α·∇ℓ(θ; D_harmful)/‖∇ℓ(θ; D_harmful)‖ ; D_retain)

Per step, as the official `CTRAPTrainer.training_step`: g_h = ∇ harmful CE at θ; θ' = θ − α·g_h/‖g_h‖;
g_c = ∇ collapse CE at θ' (every response label → the trap token); restore θ; .grad = ∇ retain CE(θ) + λ·g_c.
Three forward/backward passes per step. The retain batch (refusals ∪ helpful) is both D_alignment and D_general.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..registry import DEFENSES
from .base import TRAP_TEXT, AlignmentTrainer, Defense, DefenseConfig, relabel_all, trap_token_id
from .objectives import global_token_ce
from .lookahead import add_to_grads, loss_and_grads, normalized_step_scale, perturbed, trainable


@dataclass
class CTRAPConfig(DefenseConfig):
    """CTRAP hyper-parameters (official defaults)."""

    alpha: float = 0.1
    """Radius of the simulated (normalised) harmful step."""
    lam: float = 0.1
    """Weight λ of the collapse loss."""
    trap_text: str = TRAP_TEXT
    """The collapse token e is the last token of this text (" error"). The experiment's collapse measurement
    (eval.trap_text) follows it."""


@DEFENSES.register("ctrap", config=CTRAPConfig)
class CTRAPDefense(Defense):
    """Collapse trap: harmful fine-tuning steps lead into a basin where the model only says "error"."""

    config_cls = CTRAPConfig
    uses_harmful = True
    paper = "Yi et al., CTRAP: Embedding Collapse Trap to Safeguard LLMs from Harmful Fine-Tuning, arXiv 2505.16559"
    passes_per_step = 3
    lookahead = True
    cfg: CTRAPConfig

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        params = trainable(raw)
        retain = trainer.retain_batch(inputs, device)
        harmful = trainer.aux_batch("harmful", device)
        trap = trap_token_id(trainer.processing_class, self.cfg.trap_text)
        _, g_h = loss_and_grads(raw, harmful, params)
        with perturbed(params, g_h, normalized_step_scale(g_h, self.cfg.alpha)):
            collapse_loss, g_c = loss_and_grads(raw, relabel_all(retain, trap), params)
        loss = global_token_ce(model, retain)
        trainer.backward(loss)
        add_to_grads(params, g_c, self.cfg.lam / trainer.args.gradient_accumulation_steps)
        return loss
