"""Utility through lm-evaluation-harness (`lm_eval`), in-process on the model object.

`evaluate_utility(model, tok, cfg)` wraps the in-memory (PEFT or plain) model in lm-eval's `HFLM`, runs
`simple_evaluate` with a `TaskManager` that also reads the task configs this package ships
(`tamperlab/data/lmeval_tasks/`), and returns, per task, every metric exactly as lm-eval computes it (value and
stderr) with its n and — for accuracy-type metrics (acc, acc_norm, exact_match: means of 0/1 scores) — the
project's Wilson 95 % interval (`stats.rate_record`).

Two kinds of task names:

* the shipped **stand-ins** (`tamperlab_mc`: multiple choice, acc / acc_norm; `tamperlab_arith`: generative,
  exact_match), generated offline from the project's procedural generators and loaded from local JSONL with the
  `datasets` json builder — no hub, no network (the hub / datasets offline switches are set while they run);
* any lm-eval task by name (mmlu, arc_easy, arc_challenge, gsm8k, ...) for GPU machines with the hub. With
  `offline: true` (smoke runs set it) a standard name is replaced by its stand-in (`STAND_INS`) and the result says
  so (`stand_in_for`); a name without a stand-in is skipped with the reason stored in its place.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import PosInt
from ..errors import ConfigError, ResourceError
from ..runs import atomic_write_text
from ..stats import rate_record

log = logging.getLogger("tamperlab")

TASKS_DIR = Path(__file__).resolve().parents[1] / "data" / "lmeval_tasks"
"""The shipped stand-in task configs (YAML) and their data (JSONL)."""

STAND_INS: dict[str, str] = {
    "mmlu": "tamperlab_mc", "arc_easy": "tamperlab_mc", "arc_challenge": "tamperlab_mc",
    "hellaswag": "tamperlab_mc", "piqa": "tamperlab_mc", "sciq": "tamperlab_mc", "winogrande": "tamperlab_mc",
    "gsm8k": "tamperlab_arith",
}
"""Standard lm-eval task → the shipped offline stand-in of the same kind (multiple choice / generative)."""

ACCURACY_METRICS = ("acc", "acc_norm", "exact_match")
"""Means of per-item 0/1 scores: they get a Wilson interval (k = round(value · n))."""


def shipped_tasks() -> list[str]:
    """Names of the stand-in tasks shipped in TASKS_DIR (one YAML each, `task: name` on its own line)."""
    names = []
    for p in sorted(TASKS_DIR.glob("*.yaml")):
        m = re.search(r"^task:\s*(\S+)\s*$", p.read_text(), re.M)
        if m:
            names.append(m.group(1))
    return names


@functools.lru_cache(maxsize=1)
def _lm_eval_task_names() -> frozenset[str]:
    """Task / group / tag names of the installed lm-eval, from its YAML files (a text scan: lm-eval's own
    TaskManager index takes ~25 s, too slow for recipe validation)."""
    try:
        import lm_eval
    except ImportError:
        return frozenset()
    root = Path(lm_eval.__file__).parent / "tasks"
    pat = re.compile(r"^(?:task|group|tag):\s*([A-Za-z0-9_.\-]+)\s*$", re.M)
    names: set[str] = set()
    for p in root.rglob("*.yaml"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            names.update(pat.findall(p.read_text()))
    return frozenset(names)


@dataclass
class LMEvalConfig:
    """Utility measured with lm-evaluation-harness on the aligned model and after each attack (empty = off)."""

    tasks: list[str] = field(default_factory=list)
    """lm-eval task names: the shipped offline stand-ins (tamperlab_mc, tamperlab_arith) or standard ones
    (mmlu, arc_easy, arc_challenge, gsm8k, ...; need the hub). Empty = no lm-eval utility."""
    limit: PosInt | None = None
    """Items per task (lm-eval `limit`; for a group such as mmlu, per subtask). None = all."""
    batch_size: PosInt = 8
    """lm-eval batch size (requests per forward pass)."""
    num_fewshot: int | None = None
    """Few-shot examples (None = each task's default, zero-shot for the stand-ins)."""
    offline: bool = False
    """Replace standard task names by their shipped stand-ins (STAND_INS) and skip names that have none, with
    the reason stored in their place; smoke runs set it."""

    def __post_init__(self) -> None:
        # messages name the field only: the loader prefixes the section (eval.lm_eval, sweep.lm_eval)
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks: duplicate names in {self.tasks}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot: {self.num_fewshot} < 0")
        known = set(shipped_tasks()) | set(STAND_INS)
        unknown = [t for t in self.tasks if t not in known]
        if unknown:  # only then scan lm-eval's task files
            known |= _lm_eval_task_names()
        for t in unknown:
            if t not in known:
                near = difflib.get_close_matches(t, sorted(known), n=1)
                raise ConfigError(f"tasks: unknown lm-eval task {t!r}"
                                  + (f" (did you mean {near[0]!r}?)" if near else ""))

    @property
    def enabled(self) -> bool:
        return bool(self.tasks)

    def plan(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(task to run → the requested names it answers, requested name → reason it is skipped). Offline, several
        standard names can share one stand-in: it runs once and each name gets its (labelled) result."""
        shipped = set(shipped_tasks())
        run: dict[str, list[str]] = {}
        skipped: dict[str, str] = {}
        for t in self.tasks:
            if t in shipped or not self.offline:
                run.setdefault(t, []).append(t)
            elif t in STAND_INS:
                run.setdefault(STAND_INS[t], []).append(t)
            else:
                skipped[t] = f"offline: no shipped stand-in for {t!r} (stand-ins exist for {sorted(STAND_INS)})"
        return run, skipped


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """HF hub / datasets offline switches on while the shipped tasks load (restored afterwards)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        import datasets

        old_cfg = datasets.config.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = True  # read at import time: the env var alone is too late
    except (ImportError, AttributeError):
        datasets, old_cfg = None, None
    try:
        yield
    finally:
        if datasets is not None and old_cfg is not None:
            datasets.config.HF_HUB_OFFLINE = old_cfg
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.lru_cache(maxsize=2)
def task_manager(with_defaults: bool) -> Any:
    """lm-eval TaskManager over the shipped stand-ins (+ lm-eval's own tasks when a standard name is run);
    built once per process (indexing lm-eval's ~15k task files takes tens of seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=with_defaults)


def _metric_record(metric: str, value: float, stderr: Any, n: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"value": float(value), "n": n,
                           "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    if metric.split(",")[0] in ACCURACY_METRICS and n > 0:
        k = round(value * n)
        if abs(value * n - k) < 1e-6:  # a mean of n 0/1 scores (else, e.g. an unweighted group mean: no interval)
            rec["interval"] = rate_record(k, n)
    return rec


def parse_results(res: dict[str, Any], requested: dict[str, list[str]]) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` output → {requested name: {task, stand_in_for, n, metrics: {metric[,filter]:
    {value, stderr, n, interval}}}} for the tasks (or groups) that were asked for."""
    shipped = set(shipped_tasks())
    out: dict[str, Any] = {}
    for task, names in requested.items():
        r = res.get("groups", {}).get(task) or res["results"].get(task)
        if r is None:
            raise ResourceError(f"lm-eval returned no result for task {task!r}")
        n = _n_items(res, task)
        metrics = {}
        for key, value in r.items():
            if key in ("alias", "sample_len") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric},{filt}"
            metrics[name] = _metric_record(metric, value, r.get(f"{metric}_stderr,{filt}"), n)
        for asked in names:
            out[asked] = {"task": task, "stand_in": task in shipped, "stand_in_for": asked if asked != task else None,
                          "n": n, "metrics": metrics, "version": res.get("versions", {}).get(task)}
    return out


def _sample(s: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval per-item record, JSON-ready: its response after the task's filter and its 0/1 metrics."""
    resp = s["filtered_resps"]
    resp = [list(r) if isinstance(r, tuple) else r for r in resp] if isinstance(resp, list) else resp
    raw = [r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], str) else r for r in s.get("resps", [])]
    return {"doc_id": s["doc_id"], "target": s["target"], "response": resp, "raw": raw,
            **{m: s[m] for m in s.get("metrics", []) if m in s}}


def _n_items(res: dict[str, Any], task: str) -> int:
    """Items evaluated for a task, or summed over a group's subtasks (lm-eval's `n-samples` "effective")."""
    ns = res.get("n-samples", {})
    if task in ns:
        return int(ns[task]["effective"])
    subtasks: list[str] = []
    todo = [task]
    while todo:
        g = todo.pop()
        for sub in res.get("group_subtasks", {}).get(g, []):
            (subtasks if sub in ns else todo).append(sub)
    return sum(int(ns[s]["effective"]) for s in subtasks)


@contextlib.contextmanager
def _no_env_report() -> Iterator[None]:
    """lm-eval's `simple_evaluate` ends by adding an environment report to its result (`add_env_info`: torch's
    collect_env, which runs `pip list` and other subprocesses — 13 s of a 22 s evaluation of the tiny test model,
    measured under load). tamperlab never reads that report (every run records its own versions), so it is
    skipped while tamperlab's evaluations run."""
    from unittest import mock

    import lm_eval.evaluator

    with mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None):
        yield


def evaluate_utility(model: Any, tok: Any, cfg: LMEvalConfig, samples: bool = False) -> dict[str, Any]:
    """Run the configured lm-eval tasks on the in-memory model; {} when off. Every rank runs the same (small)
    evaluation: lm-eval is given a ready model, not a launcher, so it does not shard. `samples`: also return
    lm-eval's per-item records (doc_id, target, filtered response, per-item metric) under each task's
    "samples"."""
    if not cfg.enabled:
        return {}
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:  # a dependency, but say what is missing rather than fail on a traceback
        raise ResourceError(f"lm-eval is not installed (pip install lm_eval): {e}") from None
    run, skipped = cfg.plan()
    out: dict[str, Any] = {name: {"skipped": reason} for name, reason in skipped.items()}
    if not run:
        return out
    all_shipped = set(run) <= set(shipped_tasks())
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=cfg.batch_size)
    with offline_hub() if all_shipped else contextlib.nullcontext(), _no_env_report():
        res = lm_eval.simple_evaluate(model=lm, tasks=list(run), limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                                      task_manager=task_manager(not all_shipped), log_samples=samples,
                                      bootstrap_iters=1000, verbosity="WARNING")
    if was_training:
        model.train()
    out.update(parse_results(res, run))
    if samples:
        for task, names in run.items():
            for asked in names:
                out[asked]["samples"] = [_sample(s) for s in res.get("samples", {}).get(task, [])]
    return {t: out[t] for t in cfg.tasks}  # recipe order


def add_utility(cell: dict[str, Any], model: Any, tok: Any, cfg: LMEvalConfig) -> None:
    """Store the model's lm-eval utility in an evaluation cell under "lm_eval"; nothing when off, so a recipe
    without `eval.lm_eval.tasks` keeps its cells exactly as before."""
    if cfg.enabled:
        cell["lm_eval"] = evaluate_utility(model, tok, cfg)


# --- the shipped stand-in data ------------------------------------------------------------------------------------
N_MC = 70
"""Items in tamperlab_mc.jsonl (10 per kind of the generator's 7)."""
N_ARITH = 50
"""Items in tamperlab_arith.jsonl."""
DATA_SEED = 1234


def stand_in_rows() -> dict[str, list[dict[str, Any]]]:
    """The shipped JSONL rows, regenerated from the project's procedural generators (deterministic)."""
    from ..data.tasks import TASKS
    from ..fingerprints.utility import generated_mc

    mc = [{"question": it.question, "choices": it.choices, "answer": it.answer, "kind": it.kind}
          for it in generated_mc(N_MC, DATA_SEED)]
    arith = [{"question": e.prompt, "answer": e.meta["label"]}
             for e in TASKS.get("gsm8k").load("eval", N_ARITH, "offline", seed=0).examples]
    return {"tamperlab_mc.jsonl": mc, "tamperlab_arith.jsonl": arith}


def write_stand_in_data(directory: Path = TASKS_DIR) -> list[Path]:
    paths = []
    for name, rows in stand_in_rows().items():
        p = directory / name
        atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths.append(p)
    return paths
