"""RepNoise (Rosati et al., NeurIPS 2024, arXiv 2405.14577): push harmful representations towards noise.

    L(θ) = ℓ(θ; harmless) + β · mean_l MMD( a_l(harmful), N(0, I) ) − α · log( ℓ_lens(θ; harmful) + 1 )

a_l = output of the MLP of block l on the harmful batch; MMD with a Gaussian kernel mixture (bandwidth from the
data, ×2 steps, 5 kernels); ℓ_lens = cross-entropy of the harmful text read through the logit lens at every hidden
state (final norm + LM head), averaged over layers, so harmful information is removed from every depth, not just
the output. As in the official `rep_noise_loss` (Booster/CTRAP repos): the harmful and harmless batches are
drawn independently and compared position by position, and every loss covers the tokens where the two differ
(the shared prompt template is excluded). Deviations, for well-defined losses: padding is never a target, and
targets are not zeroed when the preceding position is shared (the official code then scores all-zero logits).
One forward/backward over the harmful and harmless rows together, plus L+1 logit-lens projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError
from ..registry import DEFENSES
from ..training import concat_batches
from ..config import PosInt
from .base import AlignmentTrainer, Defense, DefenseConfig
from .objectives import log_terms
from .representations import (DecoderParts, capture_outputs, decoder_parts, logit_lens, pad_like,
                              require_captured)

Tensor = Any

KERNEL_MUL = 2.0
"""Bandwidth ratio between consecutive Gaussian kernels of the MMD (official)."""
KERNEL_NUM = 5
"""Number of Gaussian kernels of the MMD (official)."""


@dataclass
class RepNoiseConfig(DefenseConfig):
    """RepNoise hyper-parameters (official CTRAP comparison defaults; the Booster repo uses α=0.1)."""

    alpha: float = 10.0
    """Weight α of −log(harmful logit-lens loss + 1) (official flag --rho)."""
    beta: float = 0.001
    """Weight β of the MMD-to-Gaussian-noise term (official flag --lamb)."""
    helpful_batch_size: int = 0
    """The official trainer's harmless batch is the refusal batch only; > 0 adds helpful rows to it."""
    harmful_batch_size: PosInt = 4
    """Harmful rows per step (official: the alignment batch size, 4)."""
    lens_stride: int = 1
    """Logit lens on every k-th hidden state (the last one always included); 1 = all of them, as the official
    code. Each lens is an LM-head projection of the harmful batch — the dominant cost of a step for small models
    with large vocabularies on CPU, where a stride > 1 is a documented shortcut."""

    def __post_init__(self) -> None:
        if self.lens_stride < 1:
            raise ConfigError(f"repnoise.lens_stride must be >= 1, got {self.lens_stride}")


def mmd(x: Tensor, y: Tensor, kernel_mul: float = KERNEL_MUL, kernel_num: int = KERNEL_NUM) -> Tensor:
    """Biased MMD² estimate between samples x and y (rows; same count) with a mixture of Gaussian kernels whose
    base bandwidth is the mean pairwise squared distance (not differentiated, as in the official code)."""
    import torch

    total = torch.cat([x, y], 0).float()
    n = total.shape[0]
    sq = (total * total).sum(1)
    # ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b: no n×n×d intermediate (rows are whole flattened sequences), finite gradient.
    d2 = (sq[:, None] + sq[None, :] - 2 * total @ total.T).clamp_min(0)
    bandwidth = d2.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    kernels = sum(torch.exp(-d2 / (bandwidth * kernel_mul ** i)) for i in range(kernel_num))
    b = x.shape[0]
    return (kernels[:b, :b] + kernels[b:, b:] - kernels[:b, b:] - kernels[b:, :b]).mean()


def noise_term(activations: Sequence[Tensor], mask: Tensor, generator: Any = None) -> Tensor:
    """Mean over layers of MMD(masked activations, masked standard Gaussian noise), one sample per row
    (a row's activations flattened over positions and features)."""
    import torch

    m = mask.unsqueeze(-1).to(activations[0].dtype)
    total = 0.0
    for a in activations:
        noise = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        total = total + mmd((a * m).flatten(1), (noise * m).flatten(1))
    return total / len(activations)


def differing_tokens(ids: Tensor, other_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Positions of `ids` whose token differs from `other_ids` at the same (row, position) — the official
    token mask for unpaired harmful / harmless batches — restricted to real (non-padding) tokens."""
    return (ids != pad_like(other_ids, ids)) & attention_mask.bool()


def masked_lm_loss(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Mean next-token CE of the tokens selected by mask (the text itself is the target)."""
    import torch.nn.functional as F

    target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    lg = logits[:, :-1, :].float()
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), ignore_index=-100)


def lens_states(n_states: int, stride: int) -> list[int]:
    """Indices of the hidden states read through the logit lens: every stride-th, always the last."""
    idx = list(range(0, n_states, stride))
    return idx if idx[-1] == n_states - 1 else idx + [n_states - 1]


def lens_loss(parts: DecoderParts, logits: Tensor, hidden_states: Sequence[Tensor], ids: Tensor,
              mask: Tensor) -> Tensor:
    """(CE of the output logits + Σ_l CE through the logit lens at hidden state l) / #states, summed as the
    official code does (which includes the already-normalised last state, normalised again)."""
    total = masked_lm_loss(logits, ids, mask)
    for h in hidden_states:
        total = total + masked_lm_loss(logit_lens(parts, h), ids, mask)
    return total / len(hidden_states)


def _widen(mask: Tensor, width: int) -> Tensor:
    import torch.nn.functional as F

    return F.pad(mask, (0, width - mask.shape[1]), value=False)


@DEFENSES.register("repnoise", config=RepNoiseConfig)
class RepNoiseDefense(Defense):
    """Representation noising: harmful inputs map to Gaussian-like activations that carry no harmful signal."""

    config_cls = RepNoiseConfig
    uses_harmful = True
    paper = ("Rosati et al., Representation Noising: A Defence Mechanism Against Harmful Finetuning, "
             "NeurIPS 2024, arXiv 2405.14577")
    passes_per_step = 2
    cfg: RepNoiseConfig

    def terms(self, model: Any, raw: Any, harmless: dict[str, Tensor], harmful: dict[str, Tensor],
              pad_token_id: int, generator: Any = None) -> dict[str, Tensor]:
        """The three terms and the total objective, from one forward pass over both batches."""
        import torch

        parts = decoder_parts(raw)
        m_harm = differing_tokens(harmful["input_ids"], harmless["input_ids"], harmful["attention_mask"])
        m_safe = differing_tokens(harmless["input_ids"], harmful["input_ids"], harmless["attention_mask"])
        both = concat_batches(harmful, harmless, pad_token_id)
        n, width = harmful["input_ids"].shape[0], both["input_ids"].shape[1]
        m_harm, m_safe = _widen(m_harm, width), _widen(m_safe, width)
        with capture_outputs(parts.mlp) as slots:
            out = model(input_ids=both["input_ids"], attention_mask=both["attention_mask"],
                        output_hidden_states=True)
        acts = [a[:n] for a in require_captured(slots)]
        ids = both["input_ids"]
        noise = noise_term(acts, m_harm, generator)
        states = [out.hidden_states[i][:n] for i in lens_states(len(out.hidden_states), self.cfg.lens_stride)]
        harmful_lens = lens_loss(parts, out.logits[:n], states, ids[:n], m_harm)
        harmless_ce = masked_lm_loss(out.logits[n:], ids[n:], m_safe)
        total = harmless_ce + self.cfg.beta * noise - self.cfg.alpha * torch.log(harmful_lens + 1)
        return {"loss": total, "harmless_loss": harmless_ce, "noise": noise, "harmful_lens_loss": harmful_lens}

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        device = inputs["input_ids"].device
        harmless = trainer.retain_batch(inputs, device)
        harmful = trainer.aux_batch("harmful", device)
        t = self.terms(model, raw, harmless, harmful, trainer.processing_class.pad_token_id)
        trainer.backward(t["loss"])
        log_terms(trainer, {k: float(v.detach()) for k, v in t.items() if k != "loss"}, "repnoise/")
        return t["loss"]
