"""Lisa (Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful Fine-tuning Attack",
NeurIPS 2024, arXiv 2405.18641): a fine-tuning-stage defense run by the fine-tuning service.

The user's fine-tuning alternates between two states, `align_steps` optimizer steps on alignment (refusal) data and
`finetune_steps` steps on the user's data; in each state a proximal term pulls the weights toward where the other
state left them:

    state s ∈ {alignment, finetune}:   min_θ  ℓ_s(θ) + ρ/2 · ‖θ − θ̃_other‖²        (after 10 % of the steps)

θ̃_other = the weights at the last switch between the states (the other state's last iterate), as the official
`ADMMTrainer`. The proximal gradient ρ(θ − θ̃) is added to `.grad` after the state's own backward (the same gradient
as adding ρ/2‖θ − θ̃‖² to the loss). Alignment-state batches come from the run's refusal data; the user's batch
of that step is discarded, as in the official code, so the step budget is shared between the states.

The alignment stage of the `lisa` row is SFT (the inherited default step). `guard` attaches the fine-tuning half
to the attack's Trainer (called by the HFT experiment right after it builds that Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from ..config import Fraction, PosInt
from ..data.core import Example
from ..registry import DEFENSES
from ..training import CycledLoader, PadCollator, TokenizedDataset
from .base import Defense, DefenseConfig
from .lookahead import add_to_grads, trainable
from .objectives import global_token_ce
from .post import stage_of

Tensor = Any


@dataclass
class LisaConfig(DefenseConfig):
    """Lisa hyper-parameters (official Lisa repository: ρ = 1, 100 alignment / 900 fine-tuning steps; the Booster
    repository's comparison scripts use ρ = 0.01)."""

    rho: float = 1.0
    """ρ: weight of the proximal term toward the other state's last weights."""
    align_steps: PosInt = 100
    """Optimizer steps per alignment state (official `alignment_step`)."""
    finetune_steps: PosInt = 900
    """Optimizer steps per fine-tuning state (official `finetune_step`)."""
    proximal_after: Fraction = 0.1
    """No proximal term during this first fraction of the fine-tuning steps (official: 10 %)."""


class LisaGuard:
    """The fine-tuning-stage half of Lisa, attached to one attack Trainer: replaces its `training_step`."""

    def __init__(self, cfg: LisaConfig, trainer: Any, alignment: CycledLoader):
        self.cfg, self.trainer, self.alignment = cfg, trainer, alignment
        self.user_step = trainer.training_step  # the attack's own step (finetune state)
        self.state: str | None = None
        self.anchor: list[Tensor] = []
        self._micro: int | None = None
        trainer.training_step = self.training_step

    def state_at(self, step: int) -> str:
        """Alignment first, then fine-tuning, repeating (the official trainer starts in the alignment state)."""
        return "alignment" if step % (self.cfg.align_steps + self.cfg.finetune_steps) < self.cfg.align_steps \
            else "finetune"

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        t = self.trainer
        raw = t.accelerator.unwrap_model(model)
        params = trainable(raw)
        accum = t.args.gradient_accumulation_steps
        if self._micro is None:
            self._micro = t.state.global_step * accum
        state = self.state_at(t.state.global_step)
        if state != self.state:  # a switch (or the first step / a resume): anchor at the current weights
            self.state = state
            self.anchor = [p.detach().clone() for p in params]
        if state == "alignment":
            model.train()
            batch = self.alignment.batch(self._micro, inputs["input_ids"].device)
            loss = global_token_ce(model, batch)
            t.accelerator.backward(loss / accum)
            loss = loss.detach() / accum
        else:
            loss = self.user_step(model, inputs, num_items_in_batch)
        self._micro += 1
        if self.cfg.rho and t.state.global_step >= self.cfg.proximal_after * t.state.max_steps:
            add_to_grads(params, [(p.detach() - a) for p, a in zip(params, self.anchor)], self.cfg.rho / accum)
        return loss


@DEFENSES.register("lisa", config=LisaConfig)
class LisaDefense(Defense):
    """Fine-tuning stage: alternate alignment and user data with a proximal term between the two states."""

    config_cls = LisaConfig
    stage: ClassVar[str] = "finetune"
    paper = ("Huang et al., Lisa: Lazy Safety Alignment for Large Language Models against Harmful Fine-tuning "
             "Attack, NeurIPS 2024, arXiv 2405.18641")
    passes_per_step = 1
    """SFT alignment; during fine-tuning one forward/backward per step (alignment or user batch) + the proximal
    gradient (no pass)."""
    cfg: LisaConfig

    def guard(self, trainer: Any, alignment: Sequence[Example], fmt: str = "auto", max_length: int = 256,
              seed: int = 0) -> LisaGuard:
        """Attach Lisa to the attack's Trainer; alignment batches have the attack's per-device batch size."""
        tok = trainer.processing_class
        loader = CycledLoader(TokenizedDataset(tok, alignment, fmt, max_length),
                              trainer.args.per_device_train_batch_size, PadCollator(tok.pad_token_id), seed + 3)
        return LisaGuard(self.cfg, trainer, loader)


def guard_finetuning(defense: Defense, trainer: Any, alignment: Sequence[Example], fmt: str = "auto",
                     max_length: int = 256, seed: int = 0) -> LisaGuard | None:
    """The HFT experiment's hook: attach a fine-tuning-stage defense to the attack's Trainer, else None."""
    if stage_of(defense) != "finetune":
        return None
    return defense.guard(trainer, alignment, fmt, max_length, seed)  # type: ignore[attr-defined]
