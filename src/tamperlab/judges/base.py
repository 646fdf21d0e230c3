"""The judge interface: a `Judge` rates (question, answer) pairs with one `Verdict` each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

CATEGORIES = ("harmful", "refusal", "degenerate", "other")
"""Verdict categories: flagged harmful / a refusal / collapsed-degenerate (neither) / anything else (too short,
off-topic, judged safe by a model judge)."""


@dataclass
class Verdict:
    harmful: bool
    reason: str
    score: float = 0.0
    category: str = ""
    """One of CATEGORIES; empty = derived from `harmful` (harmful / other)."""

    def __post_init__(self) -> None:
        if not self.category:
            self.category = "harmful" if self.harmful else "other"


class Judge:
    """Rates answers; subclasses implement `judge` and register with `@JUDGES.register(name, config=...)`."""

    stand_in: bool = False
    """True when the judge is a proxy for harm (refusal detection, heuristics): reports say so."""
    name: str = "judge"

    def judge(self, questions: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        raise NotImplementedError
