"""Evaluation of a (possibly attacked) model for the harmful-fine-tuning experiments: HS(IO), HS(O), collapse,
distinct-n, FA, and the per-step trajectory hook used during attacks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.core import DataSplit, Example, format_example, format_prompt
from ..defenses.base import relabel_all, trap_token_id
from ..distributed import shard_and_gather
from ..generation import GenerationConfig, generate
from ..judges import Judge
from ..metrics.hft import (accuracy, answer_stats, collapse_rate, harmful_score, mean_loss, trap_token_rate)
from ..registry import TASKS
from ..runs import atomic_write_json
from ..training import PadCollator, TokenizedDataset


def _eval_generation() -> GenerationConfig:
    return GenerationConfig(max_new_tokens=48, batch_size=32)


@dataclass
class EvalConfig:
    """How protected / attacked models are measured."""

    judge: str = "embedded"
    """Harmfulness judge: embedded (offline stand-in), beaver-dam (paper), llama-guard."""
    judge_params: dict[str, Any] = field(default_factory=dict)
    """Judge settings (e.g. {model: /path/to/beaver-dam-7b})."""
    generation: GenerationConfig = field(default_factory=_eval_generation)
    """Decoding for HS answers (paper: greedy, 512 new tokens)."""
    eval_steps: list[int] = field(default_factory=lambda: [0, 20, 40])
    """Attack steps at which HS / collapse / losses are measured for the trajectory plots."""
    n_trajectory_prompts: int = 32
    """Harmful eval prompts used at intermediate attack steps (the final eval uses all)."""
    trap_text: str = "an error"
    """Collapse token text (must match the CTRAP defense's)."""
    n_loss_probe: int = 16
    """Examples in the collapse-loss / harmful-loss probe batches."""


class ShardedJudge:
    """A judge whose `judge` is shared across the ranks of a multi-process launch: each rank rates its shard of
    the (question, answer) pairs and every rank receives all verdicts. Single process: the judge itself."""

    def __init__(self, judge: Judge):
        self.inner = judge

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def judge(self, questions: Sequence[str], answers: Sequence[str]) -> list:
        return shard_and_gather(list(zip(questions, answers)),
                                lambda pairs: self.inner.judge([q for q, _ in pairs], [a for _, a in pairs]))


@dataclass
class Evaluator:
    model_tok: tuple[Any, Any]
    judge: Judge
    cfg: EvalConfig
    fmt: str = "auto"
    max_length: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.judge, ShardedJudge):  # generation is sharded in generate(); judging here
            self.judge = ShardedJudge(self.judge)  # type: ignore[assignment]

    @property
    def tok(self) -> Any:
        return self.model_tok[1]

    def answers(self, model: Any, prompts: Sequence[Example], desc: str) -> list[str]:
        texts = [format_example(self.tok, e, self.fmt) for e in prompts]
        return [a.strip() for a in generate(model, self.tok, texts, self.cfg.generation, desc=desc)]

    def harm(self, model: Any, prompts: Sequence[Example], desc: str = "HS eval") -> tuple[dict[str, float], list]:
        ans = self.answers(model, prompts, desc)
        qs = [e.prompt for e in prompts]
        trap = self.cfg.trap_text.split()[-1].lower()
        verdicts = self.judge.judge(qs, ans)
        out = {
            "hs_io": 100.0 * sum(v.harmful for v in verdicts) / max(len(ans), 1),
            "hs_o": harmful_score(self.judge, qs, ans, output_only=True),
            "collapse_rate": collapse_rate(ans, trap),
            "trap_token_rate": trap_token_rate(self.tok, ans, trap_token_id(self.tok, self.cfg.trap_text)),
            **answer_stats(ans),
        }
        samples = [{"prompt": q, "answer": a, "harmful": v.harmful, "reason": v.reason}
                   for q, a, v in zip(qs, ans, verdicts)]
        return out, samples

    def task_accuracy(self, model: Any, task: str, evalset: DataSplit, max_new_tokens: int) -> tuple[float, list]:
        gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=self.cfg.generation.batch_size)
        texts = [format_prompt(self.tok, e.prompt, self.fmt, e.input) for e in evalset]
        preds = generate(model, self.tok, texts, gen, desc=f"FA {task}")
        scorer = TASKS.get(task).score
        scores = [scorer(p, e) for p, e in zip(preds, evalset)]
        samples = [{"input": e.input or e.prompt, "label": e.meta.get("label"), "prediction": p.strip(), "correct": s}
                   for e, p, s in zip(evalset, preds, scores)]
        return accuracy(scores), samples

    def probes(self, helpful: Sequence[Example], harmful: Sequence[Example]) -> dict[str, list[dict[str, Any]]]:
        """Collated probe batches: collapse targets on helpful data (Eq. 1) and harmful pairs."""
        coll = PadCollator(self.tok.pad_token_id)
        trap = trap_token_id(self.tok, self.cfg.trap_text)
        n = self.cfg.n_loss_probe

        def batches(exs: Sequence[Example]) -> list[dict[str, Any]]:
            if not exs:
                return []
            ds = TokenizedDataset(self.tok, list(exs)[:n], self.fmt, self.max_length)
            return [coll([ds[i] for i in range(j, min(j + 8, len(ds)))]) for j in range(0, len(ds), 8)]

        return {"collapse": [relabel_all(b, trap) for b in batches(helpful)], "harmful": batches(harmful)}


class TrajectoryRecorder:
    """Measures the model at chosen attack steps; persisted after each point so a resumed run keeps them."""

    def __init__(self, ev: Evaluator, prompts: Sequence[Example], probes: dict[str, list], path: Path):
        self.ev, self.prompts, self.probes, self.path = ev, list(prompts), probes, path
        self.points: dict[int, dict[str, float]] = {}
        if path.exists():
            self.points = {int(k): v for k, v in json.loads(path.read_text()).items()}

    def __call__(self, step: int, model: Any) -> None:
        m, _ = self.ev.harm(model, self.prompts, desc=f"trajectory step {step}")
        point = {"hs_io": m["hs_io"], "collapse_rate": m["collapse_rate"], "trap_token_rate": m["trap_token_rate"],
                 "collapse_loss": mean_loss(model, self.probes["collapse"]),
                 "harmful_loss": mean_loss(model, self.probes["harmful"])}
        self.points[step] = point
        atomic_write_json(self.path, {str(k): v for k, v in sorted(self.points.items())})
        model.train()
