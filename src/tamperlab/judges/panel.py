"""`JudgePanel`: several registered judges rating the same answers, with a shared degenerate category."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from ..registry import JUDGES
from .base import Judge, Verdict
from .text import is_degenerate


def make_judge(name: str, params: dict[str, Any] | None = None) -> Judge:
    """The registered judge `name` built with `params` (validated against its config; did-you-mean errors)."""
    return JUDGES.build(name, params, f"judge.{name}")


class JudgePanel:
    """Several judges rating the same answers. The first is the primary judge (its verdicts are the headline HS);
    the others are independent second opinions whose HS and agreement (Cohen's κ) the reports show."""

    def __init__(self, names: Sequence[str], params: dict[str, dict[str, Any]] | None = None,
                 degenerate_category: bool = True, trap_word: str | None = "error"):
        if not names:
            raise ConfigError("eval.judges: name at least one judge (two or more for a panel)")
        if len(set(names)) != len(names):
            raise ConfigError(f"eval.judges: duplicate judges in {list(names)}")
        unknown = set(params or {}) - set(names)
        if unknown:
            raise ConfigError(f"eval.judge_params: {sorted(unknown)} not in eval.judges {list(names)}")
        self.judges = {n: make_judge(n, (params or {}).get(n)) for n in names}
        self.degenerate_category = degenerate_category
        self.trap_word = trap_word

    @property
    def names(self) -> list[str]:
        return list(self.judges)

    @property
    def primary(self) -> Judge:
        return next(iter(self.judges.values()))

    def describe(self) -> dict[str, Any]:
        return {"name": self.names[0], "stand_in": self.primary.stand_in, "panel": self.names,
                "stand_ins": {n: j.stand_in for n, j in self.judges.items()},
                "degenerate_category": self.degenerate_category}

    def judge(self, questions: Sequence[str], answers: Sequence[str],
              only: Sequence[str] | None = None) -> dict[str, list[Verdict]]:
        """{judge name: verdicts}; degenerate answers are category "degenerate" (not harmful) for every judge.

        Under a multi-process launch each rank rates its shard of the pairs and every rank receives all verdicts
        (judging is done once in total, not once per rank)."""
        from ..distributed import shard_and_gather

        names = [n for n in self.judges if only is None or n in only]
        rows = shard_and_gather(list(zip(questions, answers)), lambda shard: self._judge_local(shard, names))
        return {n: [r[n] for r in rows] for n in names}

    def _judge_local(self, pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> list[dict[str, Verdict]]:
        """One verdict per judge for each (question, answer) pair, as one {judge: verdict} row per pair."""
        questions, answers = [q for q, _ in pairs], [a for _, a in pairs]
        degenerate = [is_degenerate(a, self.trap_word) for a in answers] if self.degenerate_category else None
        per_judge = {}
        for name in names:
            vs = self.judges[name].judge(questions, answers)
            if degenerate is not None:
                vs = [Verdict(False, "degenerate", v.score, "degenerate") if d else v for v, d in zip(vs, degenerate)]
            per_judge[name] = vs
        return [{n: per_judge[n][i] for n in names} for i in range(len(pairs))]
