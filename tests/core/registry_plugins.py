"""Throw-away components for tests/core/test_registry_plugins.py: a defense, an attack, a judge, a fingerprint and
a watermark, each one class with one decorator and nothing else anywhere — what adding a method to tamperlab
takes. Importing this module registers them; the test imports it inside `Registry.scratch()` blocks so that the
registrations are undone afterwards (and never leak into the contract tests that iterate every registry).

Each counts its uses in `CALLS`, so the test can check that the run really went through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tamperlab.attacks.base import Attack, AttackContext, AttackResult, AttackSpec
from tamperlab.defenses.base import Defense, DefenseConfig
from tamperlab.eaas.watermarks import EmbMarker, EmbMarkerConfig
from tamperlab.fingerprints.base import Fingerprint, FingerprintConfig, FingerprintPair, FingerprintSet
from tamperlab.judges import Judge, Verdict
from tamperlab.registry import ATTACKS, DEFENSES, FINGERPRINTS, JUDGES, WATERMARKS

CALLS: Counter[str] = Counter()


@dataclass
class CountingDefenseConfig(DefenseConfig):
    """SFT with a tag (checks that recipe params reach the component)."""

    tag: int = 0
    """Recorded in CALLS."""


@DEFENSES.register("test-counting-defense", config=CountingDefenseConfig)
class CountingDefense(Defense):
    """Throw-away defense: SFT's step, counted."""

    def step(self, trainer: Any, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        CALLS["defense.step"] += 1
        CALLS[f"defense.tag={self.cfg.tag}"] += 1
        return super().step(trainer, model, raw, inputs)


@dataclass
class PassThroughAttackConfig(AttackSpec):
    """A training-free attack that releases the aligned model unchanged."""

    name: str = "test-pass-through"
    marker: str = "untouched"
    """Written into the attack's data provenance."""


@ATTACKS.register("test-pass-through", config=PassThroughAttackConfig)
class PassThroughAttack(Attack):
    """Throw-away attack: no training, the aligned adapter as released."""

    def run(self, ctx: AttackContext) -> AttackResult:
        from tamperlab.models import load_adapter

        CALLS["attack.run"] += 1
        model = load_adapter(ctx.base_model, ctx.adapter_dir, trainable=False)
        model.eval()
        return AttackResult(model, data={"marker": self.cfg.marker, "harmful_pool": len(ctx.harmful_pool)})


@dataclass
class FixedJudgeConfig:
    """What the fixed judge answers."""

    harmful: bool = True
    """Verdict for every answer."""


@JUDGES.register("test-fixed-judge", config=FixedJudgeConfig)
class FixedJudge(Judge):
    """Throw-away judge: the same verdict for every answer."""

    name = "test-fixed-judge"

    def __init__(self, cfg: FixedJudgeConfig | None = None):
        self.cfg = cfg or FixedJudgeConfig()

    def judge(self, questions: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        CALLS["judge.answers"] += len(answers)
        return [Verdict(self.cfg.harmful, "fixed") for _ in answers]


@FINGERPRINTS.register("test-two-pairs", config=FingerprintConfig)
class TwoPairsFingerprint(Fingerprint):
    """Throw-away fingerprint: two fixed trigger → answer pairs."""

    def build_pairs(self, tok: Any, model: Any = None, clean: Sequence[Any] = ()) -> FingerprintSet:
        CALLS["fingerprint.build_pairs"] += 1
        pairs = [FingerprintPair(f"zq trigger {i}", f"owner mark {i}") for i in range(2)]
        return FingerprintSet("test-two-pairs", pairs, {"source": "test"})


@WATERMARKS.register("test-counting-embmarker", config=EmbMarkerConfig)
class CountingEmbMarker(EmbMarker):
    """Throw-away watermark: EmbMarker, counting the texts it watermarks."""

    name = "test-counting-embmarker"

    def apply(self, texts: Sequence[str], clean: np.ndarray) -> np.ndarray:
        CALLS["watermark.texts"] += len(texts)
        return super().apply(texts, clean)
