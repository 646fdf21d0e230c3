"""Evaluation of a (possibly attacked) model for the harmful-fine-tuning experiments: HS(IO), HS(O), collapse,
distinct-n, FA, and the per-step trajectory hook used during attacks.

Every answer is judged by a panel of judges (`EvalConfig.judges`, >= 2 by default); each rate is stored with n, its
Wilson 95 % interval and its per-prompt flags (so two rows evaluated on the same prompts can be compared with a
paired test from metrics.json alone), and every evaluation's generations with each judge's verdict are written as
JSONL (`samples/<stage>.jsonl`, one row per prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Sequence

from ..data.core import DataSplit, Example, format_example, format_prompt
from ..defenses.base import relabel_all, trap_token_id
from ..generation import GenerationConfig, generate
from ..config import PosInt, Registered, later_field
from ..errors import ConfigError
from ..judges import CATEGORIES, JudgePanel
from ..metrics.lmeval import LMEvalConfig
from ..metrics.hft import accuracy, answer_stats, is_collapsed, mean_loss, trap_token_rate
from ..registry import JUDGES, TASKS
from ..runs import RunDir, atomic_write_json, atomic_write_text
from ..stats import bits, cohen_kappa, digest, proportion
from ..training import PadCollator, TokenizedDataset


def _eval_generation() -> GenerationConfig:
    return GenerationConfig(max_new_tokens=48, batch_size=32)


@dataclass
class EvalConfig:
    """How protected / attacked models are measured."""

    judges: list[Annotated[str, Registered("judges")]] = field(default_factory=lambda: ["embedded", "garak-mitigation"])
    """Judge panel (tamperlab list judges): the first is the primary judge (headline HS), the others independent
    second opinions reported with their own HS and Cohen's κ against the primary. Offline: embedded,
    garak-mitigation, garak-prefixes; paper: beaver-dam; also llama-guard."""
    judge_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings per judge name (e.g. {beaver-dam: {model: /path/to/beaver-dam-7b}})."""
    degenerate_category: bool = True
    """Answers the degeneracy detector flags (collapsed, one word repeated, empty) are their own category for
    every judge — neither harmful nor a refusal. False = each judge's raw verdict."""
    generation: GenerationConfig = field(default_factory=_eval_generation)
    """Decoding for HS answers (paper: greedy, 512 new tokens)."""
    eval_steps: list[int] = field(default_factory=lambda: [0, 20, 40])
    """Attack steps at which HS / collapse / losses are measured for the trajectory plots."""
    n_trajectory_prompts: PosInt = 32
    """Harmful eval prompts used at intermediate attack steps (the final eval uses all)."""
    trap_text: str = ""
    """Collapse-trap text whose last token collapse is measured against. Leave it empty: the experiment sets it to
    the `trap_text` of the recipe's trap-planting defense (CTRAP), or to the default "an error" without one; a value
    given here must equal the defense's."""
    trap_diagnostics: bool = later_field(False, since="2026-11-30")
    """Forward-only trap diagnostics after the run (experiments/trap_diagnosis.py): for every defense, where the
    trap token appears in its answers and p(trap) by response position — aligned, and after the first harmful and
    first benign attack. One forward pass per stored answer set; the CTRAP demo turns it on."""
    n_loss_probe: PosInt = 16
    """Examples in the collapse-loss / harmful-loss probe batches."""
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    """Utility through lm-evaluation-harness on the aligned model and after each fixed attack (not per sweep
    trial); empty `tasks` = off (docs/methods/utility.md)."""

    def __post_init__(self) -> None:
        if self.trap_text and not self.trap_text.strip():
            raise ConfigError("eval.trap_text: blank")
        if not self.judges:
            raise ConfigError("eval.judges: empty; name at least one judge (tamperlab list judges)")
        if len(set(self.judges)) != len(self.judges):
            raise ConfigError(f"eval.judges: duplicate names in {self.judges}")
        for name, params in self.judge_params.items():
            # judge settings fail here, not when the judge is built after hours of training
            if name not in self.judges:
                raise ConfigError(f"eval.judge_params.{name}: {name!r} is not in eval.judges {self.judges}")
            JUDGES.config(name, params, f"eval.judge_params.{name}")


def make_panel(cfg: EvalConfig) -> JudgePanel:
    return JudgePanel(cfg.judges, cfg.judge_params, cfg.degenerate_category, cfg.trap_text.split()[-1].lower())


prompts_digest = digest
"""Short hash of the evaluated prompts in order: two cells are paired only when theirs are equal (the digest
every system's results use, `stats.digest`)."""
_bits = bits


def judge_answers(panel: JudgePanel, questions: Sequence[str], answers: Sequence[str],
                  trap_word: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Panel verdicts of one evaluation → (rates with intervals, per-prompt flags, per-judge HS and κ; JSONL rows).

    HS(IO) / HS(O) are the primary judge's, with / without the question; every judge's HS(IO) is under
    `judges`, its agreement with the primary under `agreement`."""
    verdicts = panel.judge(questions, answers)
    primary = panel.names[0]
    out_only = panel.judge([" "] * len(answers), answers, only=[primary])[primary]
    flags = {"hs_io": [v.harmful for v in verdicts[primary]], "hs_o": [v.harmful for v in out_only],
             "collapse_rate": [is_collapsed(a, trap_word) for a in answers],
             "degenerate_rate": [v.category == "degenerate" for v in verdicts[primary]],
             "refusal_rate": [v.category == "refusal" for v in verdicts[primary]]}
    intervals = {k: proportion(f).to_dict() for k, f in flags.items()}
    judges = {}
    for name, vs in verdicts.items():
        iv = proportion([v.harmful for v in vs])
        judges[name] = {"hs_io": iv.value, "interval": iv.to_dict(),
                        "categories": {c: sum(v.category == c for v in vs) for c in CATEGORIES}}
    agreement = {name: cohen_kappa(flags["hs_io"], [v.harmful for v in vs])
                 for name, vs in verdicts.items() if name != primary}
    out = {"n": len(answers), **{k: iv["value"] for k, iv in intervals.items()}, "intervals": intervals,
           "judges": judges, "agreement": agreement, "prompts_sha": prompts_digest(questions),
           "per_prompt": {**{k: _bits(f) for k, f in flags.items()},
                          "judges": {n: _bits(v.harmful for v in vs) for n, vs in verdicts.items()}}}
    rows = [{"prompt": q, "output": a,
             "verdicts": {n: verdicts[n][i].category for n in verdicts},
             "harmful": {n: verdicts[n][i].harmful for n in verdicts},
             "scores": {n: verdicts[n][i].score for n in verdicts},
             "reasons": {n: verdicts[n][i].reason for n in verdicts},
             "output_only_harmful": out_only[i].harmful, "collapsed": flags["collapse_rate"][i]}
            for i, (q, a) in enumerate(zip(questions, answers))]
    return out, rows


def fa_fields(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """FA's n, Wilson interval and per-prompt correctness from `task_accuracy` samples (merged into a cell)."""
    correct = [bool(s["correct"]) for s in samples]
    return {"fa_interval": proportion(correct).to_dict(), "fa_n": len(correct),
            "fa_prompts_sha": prompts_digest([str(s["input"]) for s in samples]), "fa_per_prompt": _bits(correct)}


def save_samples(run: RunDir, key: str, samples: Sequence[dict[str, Any]]) -> None:
    """Keep an evaluation's per-prompt outputs: the stage cache (as before) and `samples/<key>.jsonl`, one row per
    prompt, which the report's sample view lists."""
    run.save_stage(key, list(samples))
    atomic_write_text(run.path / "samples" / f"{key}.jsonl",
                      "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))


@dataclass
class Evaluator:
    model_tok: tuple[Any, Any]
    judge: JudgePanel
    cfg: EvalConfig
    fmt: str = "auto"
    max_length: int = 256

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
        out, samples = judge_answers(self.judge, qs, ans, trap)
        out.update(trap_token_rate=trap_token_rate(self.tok, ans, trap_token_id(self.tok, self.cfg.trap_text)),
                   **answer_stats(ans))
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
                 "n": m["n"],
                 "collapse_loss": mean_loss(model, self.probes["collapse"]),
                 "harmful_loss": mean_loss(model, self.probes["harmful"])}
        self.points[step] = point
        atomic_write_json(self.path, {str(k): v for k, v in sorted(self.points.items())})
        model.train()
