"""TAR (Tamirisa et al., "Tamper-Resistant Safeguards for Open-Weight LLMs", ICLR 2025, arXiv 2408.00761).

    min_θ  λ_TR · E_{attack} [ L_TR(attack_K(θ)) ]  +  λ_retain · ( L_LM(θ; D_retain) + ‖h_θ(x_r) − h_θ₀(x_r)‖ )

attack_K = K steps of an adversary's fine-tuning (AdamW, learning rate drawn per outer step from a list) on harmful
data, started from the current θ. First-order meta-gradient, as the official `tar.py`: the gradient of L_TR is taken
at the adversary's weights θ_k after every `tr_every`-th inner step and applied at θ (no back-propagation through
the inner updates), averaged over those evaluations; θ is restored exactly afterwards. The retain term is the LM
loss on the retain batch plus the mean L2 distance of every hidden state to the initial model's (θ₀: the adapter
disabled — the LoRA starts at zero, so that is the model before TAR).

L_TR: `refusal` (default) = CE of the refusal batch at θ_k, i.e. the model still refuses after the attack (the
paper's refusal setting uses DPO on preference pairs, which this data does not have paired); `entropy` = the paper's
weaponization loss, minus the mean next-token entropy on a held-out harmful batch (a flat, high-entropy harmful
distribution the adversary cannot descend).

Cost per step: K adversary passes + K/tr_every tamper-resistance passes + 1 retain pass (+1 forward of θ₀).
Shares `lookahead.py`'s machinery: `loss_and_grads` (gradients that leave `.grad` alone), `restored` (exact
restore) and `add_to_grads` (composition).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

from ..config import PosFloat, PosInt
from ..errors import ConfigError
from ..registry import DEFENSES
from .base import AlignmentTrainer, Defense, DefenseConfig
from .lookahead import add_to_grads, loss_and_grads, restored, trainable
from .objectives import global_logits_ce, global_mean_of_sum, log_terms, shifted

Tensor = Any


@dataclass
class TARConfig(DefenseConfig):
    """TAR hyper-parameters. Defaults are CPU-sized; the official refusal run (`run_tar_dpo.sh`) uses K = 8,
    λ_TR = 0.1, adversary batch 1, tr_every 1; the weaponization runs K = 64, λ_TR = 4, tr_every 4, batch 4."""

    inner_steps: PosInt = 2
    """K: adversary fine-tuning steps simulated per outer step (official: 8 refusal, 64 weaponization)."""
    adversary_lrs: list[float] = field(default_factory=lambda: [2e-6, 2e-5, 4e-5])
    """Adversary learning rates; one is drawn per outer step (official `adversary_lr_samples`)."""
    adversary_optimizer: Literal["adamw", "sgd"] = "adamw"
    """The adversary's optimizer (official: AdamW; `sgd` is the one-step SGD adaptation used for the HFT tables of
    the T-Vaccine repository, lr 0.01, K = 1)."""
    tr_every: PosInt = 1
    """Evaluate L_TR after every n-th inner step (official `tar_inner_loop_subsample`: 1 refusal, 4 weaponization)."""
    tr_loss: Literal["refusal", "entropy"] = "refusal"
    """Tamper-resistance loss at the adversary's weights (module docstring)."""
    tr_scale: PosFloat = 0.1
    """λ_TR (official `tar_tamper_resistance_grad_scale`: 0.1 refusal, 4.0 weaponization)."""
    retain_scale: float = 1.0
    """λ_retain (official `tar_retain_scale` 1.0)."""
    retain_representations: bool = True
    """Add the hidden-state distance to the initial model to the retain loss (official `--retain_representations`);
    needs a LoRA (peft) model, whose disabled adapter is the initial model."""
    harmful_batch_size: PosInt = 1
    """Adversary batch (official refusal run: `tar_inner_loop_batch_size` 1)."""

    def __post_init__(self) -> None:
        if not self.adversary_lrs or not all(lr > 0 for lr in self.adversary_lrs):
            raise ConfigError(f"tar: adversary_lrs must be a non-empty list of positive rates, got "
                              f"{self.adversary_lrs}")
        if self.tr_every > self.inner_steps:
            raise ConfigError(f"tar: tr_every {self.tr_every} > inner_steps {self.inner_steps}: the "
                              "tamper-resistance loss would never be evaluated")


@contextmanager
def own_grads(params: Sequence[Tensor]) -> Iterator[None]:
    """Let an inner optimizer use `.grad`: the outer step's accumulated gradients are set aside and put back."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def neg_entropy(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Minus the mean next-token entropy over the supervised positions (global token mean under DDP)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    logits, labels = shifted(out.logits, batch["labels"])
    mask = labels != -100
    logp = logits.log_softmax(-1)
    plogp = (logp.exp() * logp).sum(-1)  # = −entropy per position
    return global_mean_of_sum((plogp * mask).sum(), mask.sum())


def hidden_distance(hidden: Sequence[Tensor], reference: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Mean over layers of the mean (over non-padding tokens) L2 distance between hidden states."""
    import torch

    per_layer = [global_mean_of_sum(((h.float() - r.float()).norm(dim=-1) * mask).sum(), mask.sum())
                 for h, r in zip(hidden, reference)]
    return torch.stack(per_layer).mean()


@DEFENSES.register("tar", config=TARConfig)
class TARDefense(Defense):
    """Tamper-resistant training: stay aligned after K simulated steps of harmful fine-tuning."""

    config_cls = TARConfig
    uses_harmful = True
    paper = ("Tamirisa et al., Tamper-Resistant Safeguards for Open-Weight LLMs, ICLR 2025, arXiv 2408.00761")
    passes_per_step = 5
    """2K + 1 with the default K = 2 (K adversary, K tamper-resistance, 1 retain)."""
    lookahead = True
    cfg: TARConfig

    def adversary_lr(self, trainer: AlignmentTrainer) -> float:
        """One learning rate per outer step, the same on every rank and after a resume."""
        import numpy as np

        rng = np.random.default_rng([trainer.args.seed, trainer.state.global_step])
        return float(self.cfg.adversary_lrs[int(rng.integers(len(self.cfg.adversary_lrs)))])

    def inner_batches(self, trainer: AlignmentTrainer, device: Any) -> list[dict[str, Tensor]]:
        """K adversary batches (+1 held-out batch for the entropy loss), distinct for every micro-step."""
        loader = trainer.aux["harmful"]
        n = self.cfg.inner_steps + 1
        first = (trainer._micro or 0) * n
        return [loader.batch(first + k, device) for k in range(n)]

    def tamper_resistance(self, raw: Any, params: Sequence[Tensor], adversary: Sequence[dict[str, Tensor]],
                          tr_batch: dict[str, Tensor], lr: float) -> tuple[list[Tensor], list[float]]:
        """Run the K-step adversary from the current weights; mean L_TR gradient over the evaluated inner steps and
        the L_TR values. The weights and `.grad` are exactly as before afterwards."""
        import torch

        loss_fn = neg_entropy if self.cfg.tr_loss == "entropy" else None
        total: list[Tensor] | None = None
        values: list[float] = []
        with restored(params), own_grads(params):
            opt = (torch.optim.AdamW(params, lr=lr) if self.cfg.adversary_optimizer == "adamw"
                   else torch.optim.SGD(params, lr=lr))
            for k, batch in enumerate(adversary):
                _, g = loss_and_grads(raw, batch, params)
                for p, gi in zip(params, g):
                    p.grad = gi.to(p.dtype)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if (k + 1) % self.cfg.tr_every == 0:
                    value, g_tr = loss_and_grads(raw, tr_batch, params, loss_fn)
                    values.append(value)
                    total = g_tr if total is None else [a + b for a, b in zip(total, g_tr)]
        assert total is not None  # tr_every <= inner_steps (checked in the config)
        return [t / len(values) for t in total], values

    def retain_loss(self, model: Any, raw: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(LM loss, hidden-state distance to θ₀ or None), from one forward through the (DDP) model."""
        import torch

        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    output_hidden_states=self.cfg.retain_representations)
        lm = global_logits_ce(out.logits, batch["labels"])
        if not self.cfg.retain_representations:
            return lm, None
        if not hasattr(raw, "disable_adapter"):
            raise ConfigError("tar: retain_representations needs a LoRA (peft) model (its disabled adapter is the "
                              "initial model); set retain_representations: false for full-parameter alignment")
        with torch.no_grad(), raw.disable_adapter():
            ref = raw(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                      output_hidden_states=True).hidden_states
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).to(out.hidden_states[0].dtype)
        return lm, hidden_distance(out.hidden_states, ref, mask)

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        params = trainable(raw)
        retain = trainer.retain_batch(inputs, device)
        batches = self.inner_batches(trainer, device)
        tr_batch = batches[-1] if self.cfg.tr_loss == "entropy" else inputs
        lr = self.adversary_lr(trainer)
        g_tr, tr_values = self.tamper_resistance(raw, params, batches[:-1], tr_batch, lr)
        lm, rep = self.retain_loss(model, raw, retain)
        loss = lm if rep is None else lm + rep
        trainer.backward(self.cfg.retain_scale * loss)
        add_to_grads(params, g_tr, self.cfg.tr_scale / trainer.args.gradient_accumulation_steps)
        log_terms(trainer, {"retain_lm": float(lm.detach()), "retain_rep": float(rep.detach()) if rep is not None
                            else 0.0, "tr_loss_first": tr_values[0], "tr_loss_last": tr_values[-1],
                            "adversary_lr": lr}, "tar/")
        return loss
