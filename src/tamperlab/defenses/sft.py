"""SFT: plain supervised alignment on refusals ∪ helpful data (the baseline every defense is compared to)."""

from __future__ import annotations

from ..registry import DEFENSES
from .base import Defense, DefenseConfig


@DEFENSES.register("sft", config=DefenseConfig)
class SFTDefense(Defense):
    """SFT on refusal + helpful data (no defense term)."""

    paper = "baseline (RetainDataset SFT as in the CTRAP code)"
    passes_per_step = 1
