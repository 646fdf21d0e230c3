"""T-Vaccine (Liu et al., 2024, arXiv 2410.09760): Vaccine's perturbation on safety-critical layers only.

    p_l = ‖∇_{e_l} h(θ)‖ / Σ_j ‖∇_{e_j} h(θ)‖        h = harmful CE, e_l = attention output of block l
    S ~ p  (γ blocks, without replacement)            re-drawn every J steps; p re-estimated every K steps
    min_θ_S  max_{‖ε_S‖ ≤ ρ}  ℓ(θ; D_align, e_S + ε_S)   blocks outside S frozen

As the official `BaseTrainer.training_step` (github.com/Lslland/T-Vaccine, `--optimizer mesfa`): every K steps one
harmful batch is back-propagated to the attention outputs and the layer probabilities are the normalised L2 norms
of those gradients; every J steps γ layers are sampled from them; only the trainable parameters of the sampled
blocks are updated (the others are frozen, which is where the memory saving comes from: no weight gradients,
no optimizer update for them), and Vaccine's two-pass perturbation (`vaccine.embedding_perturbation`) is applied to
the sampled layers' attention outputs, with ‖ε‖ = ρ over those layers only.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..config import PosInt
from ..distributed import all_reduce_sum, world_size
from ..registry import DEFENSES
from .base import AlignmentTrainer, Defense, DefenseConfig
from .objectives import global_token_ce, log_terms
from .representations import add_to_outputs, decoder_parts
from .vaccine import embedding_perturbation, output_grads

Tensor = Any
log = logging.getLogger("tamperlab")


@dataclass
class TVaccineConfig(DefenseConfig):
    """T-Vaccine hyper-parameters (official script `script/alignment/T-Vaccine.sh`, Llama-2-7B, 32 layers)."""

    rho: float = 3.0
    """Radius ρ of the perturbation, one L2 norm over the sampled layers (official README: 3)."""
    layers_per_step: PosInt = 8
    """γ: number of sampled (perturbed and trained) blocks (official `lisa_activated_layers` 8 of 32); capped at
    the model's block count (γ ≥ blocks is Vaccine's step)."""
    resample_every: PosInt = 20
    """J: optimizer steps between two draws of the layer set (official `lisa_interval_steps` 20)."""
    probability_every: PosInt = 200
    """K: optimizer steps between two estimates of the layer probabilities (official `probability_steps` 200)."""
    harmful_batch_size: PosInt = 1
    """Harmful rows behind one probability estimate (the official loader draws batch size 1 from 200 harmful rows)."""
    helpful_batch_size: int = 0
    """As Vaccine, the official trainer aligns on refusal data only; > 0 adds helpful rows to every batch."""


def layer_probabilities(model: Any, batch: dict[str, Tensor], modules: Sequence[Any]) -> list[float]:
    """p_l ∝ ‖d harmful loss / d output of modules[l]‖ (global batch under DDP: the squared norms add up)."""
    import torch

    _, grads = output_grads(model, batch, modules)
    sq = all_reduce_sum(torch.stack([(g.float() ** 2).sum() for g in grads]))
    norms = sq.sqrt().tolist()
    total = sum(norms)
    if not total > 0:
        return [1.0 / len(norms)] * len(norms)  # no signal (e.g. LoRA B = 0 everywhere): uniform
    return [n / total for n in norms]


def sample_layers(probs: Sequence[float], k: int, seed: Sequence[int]) -> list[int]:
    """k distinct layer indices drawn with probabilities `probs` (numpy's weighted sampling without replacement,
    as the official `np.random.choice(..., replace=False, p=...)`), sorted; seeded so every rank draws the same set
    and a resumed run draws the set the uninterrupted run drew."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float64) + 1e-12  # a zero-gradient layer can still fill the set
    return sorted(int(i) for i in np.random.default_rng(list(seed)).choice(len(p), k, replace=False, p=p / p.sum()))


@contextmanager
def frozen(params: Sequence[Tensor]) -> Iterator[None]:
    """No weight gradients for `params` inside the block (one process: requires_grad off, so autograd neither
    computes nor stores them). DDP needs every parameter in the backward, so there the gradients are computed and
    dropped afterwards (grad = None: the optimizer skips the parameter, as it skips a frozen one)."""
    if world_size() > 1:
        try:
            yield
        finally:
            for p in params:
                p.grad = None
        return
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@DEFENSES.register("tvaccine", config=TVaccineConfig)
class TVaccineDefense(Defense):
    """Targeted Vaccine: perturb and train only layers sampled by their harmful-gradient norm."""

    config_cls = TVaccineConfig
    uses_harmful = True
    paper = ("Liu et al., Targeted Vaccine: Safety Alignment for Large Language Models against Harmful Fine-Tuning "
             "via Layer-wise Perturbation, arXiv 2410.09760")
    passes_per_step = 2
    """Plus one activation-gradient pass on a harmful batch every K steps."""
    cfg: TVaccineConfig

    def __init__(self, cfg: TVaccineConfig | None = None, tokenizer: Any = None):
        super().__init__(cfg, tokenizer)
        self.probabilities: list[float] | None = None
        self.selected: list[int] = []
        self._prob_window: int | None = None
        self._sel_window: int | None = None

    def update_layers(self, trainer: AlignmentTrainer, raw: Any, device: Any) -> None:
        """Re-estimate the probabilities at the start of every K-step window and re-draw the layers every J steps
        (after a resume: at the first step, since neither survives a restart)."""
        attention = decoder_parts(raw).attention
        n_layers = min(self.cfg.layers_per_step, len(attention))
        if n_layers < self.cfg.layers_per_step and self.probabilities is None:
            log.warning("tvaccine: layers_per_step %d > the model's %d blocks: every block is selected (= Vaccine)",
                        self.cfg.layers_per_step, len(attention))
        step = trainer.state.global_step
        if self._prob_window != step // self.cfg.probability_every:
            self._prob_window = step // self.cfg.probability_every
            self.probabilities = layer_probabilities(raw, trainer.aux_batch("harmful", device), attention)
            self._sel_window = None  # new probabilities: draw again
        if self._sel_window != step // self.cfg.resample_every:
            self._sel_window = step // self.cfg.resample_every
            assert self.probabilities is not None
            self.selected = sample_layers(self.probabilities, n_layers,
                                          (trainer.args.seed, self._prob_window, self._sel_window))

    def unselected_params(self, raw: Any) -> list[Tensor]:
        """Trainable parameters of the blocks outside the sampled set (frozen for this step)."""
        chosen = set(self.selected)
        return [p for i, block in enumerate(decoder_parts(raw).layers) if i not in chosen
                for p in block.parameters() if p.requires_grad]

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        self.update_layers(trainer, raw, device)
        batch = trainer.retain_batch(inputs, device)
        attention = [decoder_parts(raw).attention[i] for i in self.selected]
        with frozen(self.unselected_params(raw)):
            clean_loss, eps = embedding_perturbation(raw, batch, attention, self.cfg.rho)
            with add_to_outputs(attention, eps):
                loss = global_token_ce(model, batch)
                trainer.backward(loss)
        log_terms(trainer, {"clean_loss": clean_loss, "perturbed_loss": float(loss.detach()),
                            "first_layer": self.selected[0], "last_layer": self.selected[-1]}, "tvaccine/")
        return loss
