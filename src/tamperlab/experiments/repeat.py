"""`seeds: [0, 1, 2]` in any recipe: the experiment runs once per seed and the run reports mean ± sd over seeds.

Layout: the run directory `<output_dir>/<name>/` holds one ordinary run directory per seed, `seed-<s>/` (its own
config.yaml with `seed: s` and `seeds: []`, log, stages, metrics.json and report), and the parent's own
config.yaml (the recipe as given), metrics.json (the aggregate below) and report.md / report.html (a table
"metric | mean ± sd | per-seed values" linking each seed's report).

Resume: a seed whose run finished (its log ends in `run_done`, logged after its report) is skipped; the
interrupted one continues through its own stage cache and Trainer checkpoints, like any `--resume`.

Aggregate (`aggregate`): the seeds' metrics.json trees are walked together, path by path.
* a number present at the same path in every seed → `stats.seed_summary` {mean, sd (ddof 1), n_seeds, values};
* an interval record (`stats.Interval.to_dict`: value, lo, hi, n, method) is one unit: its value is summarised
  as above, and a Wilson rate record (k of n) also gets `pooled`, the Wilson interval of all seeds' prompts
  together (`stats.pooled_rate`). Per-seed intervals are not averaged: an average of interval ends is no interval;
* any other leaf (text, bool, null) is kept when every seed has the same value, else its path is listed under
  `repeat.varying`; so is a key that some seeds lack;
* a list of numbers is a per-item vector (per-prompt verdicts, scores), not a metric: it is compared like text
  (kept when equal) rather than summarised index by index; lists of records (dicts) are walked item by item.

Experiments that interpret `seeds` themselves (`Experiment.handles_seeds`, e.g. `ctrap_table`, which repeats each
cell and shares the data stage across seeds) are run once, as given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import distributed
from ..runs import RunDir, read_json
from ..stats import is_interval_record, is_rate_record, pooled_rate, seed_summary

if TYPE_CHECKING:  # base.py imports this module
    from .base import Experiment

log = logging.getLogger("tamperlab")

DEFINITION = ("The experiment ran once per seed (seed-<s>/, each an ordinary run). Every number present at the "
              "same path in every seed's metrics.json is {mean, sd (sample, ddof 1), n_seeds, values}; an interval "
              "record contributes its value, and a Wilson rate (k of n) also gets `pooled` = the Wilson 95 % "
              "interval of all seeds' prompts together (Σk of Σn). Other leaves are kept when equal in every seed, "
              "else listed under repeat.varying (JSON Pointers).")
_UNCHANGED = ("name", "config", "provenance", "wall_seconds", "smoke", "smoke_substitutions")
"""metrics.json keys that describe a run rather than measure it: the parent writes its own."""


class _Absent:
    """Marker for a path the aggregate leaves out (listed in `varying` instead)."""


ABSENT = _Absent()


def repeats(exp: "Experiment") -> bool:
    """Whether `execute` runs this experiment once per seed (more than one seed, not handled by the experiment)."""
    return len(exp.cfg.seeds) > 1 and not type(exp).handles_seeds


def apply_single_seed(exp: "Experiment") -> None:
    """`seeds: [s]` (one entry) on an experiment without its own seed handling is a plain run with `seed: s`."""
    if len(exp.cfg.seeds) == 1 and not type(exp).handles_seeds and exp.cfg.seed != exp.cfg.seeds[0]:
        exp.cfg = dataclasses.replace(exp.cfg, seed=exp.cfg.seeds[0])


def seed_dir(seed: int) -> str:
    return f"seed-{seed}"


def seed_experiment(exp: "Experiment", seed: int, parent: Path) -> "Experiment":
    """The same experiment as an ordinary single-seed run inside the parent run directory."""
    cfg = dataclasses.replace(exp.cfg, seed=seed, seeds=[], name=seed_dir(seed), output_dir=str(parent))
    sub = type(exp)(cfg)
    sub.kind = exp.kind
    return sub


def finished(path: Path) -> bool:
    """A seed's run is finished when its last run_start / run_done event is run_done (logged after its report)."""
    ends = [r["event"] for r in RunDir(path).read_log() if r.get("event") in ("run_start", "run_done")]
    return bool(ends) and ends[-1] == "run_done" and (path / "metrics.json").is_file()


def run_subrun(parent: RunDir, event: str, key: Any, sub: "Experiment", run_one: Callable[["Experiment"], Any],
               progress: str = "") -> bool:
    """One sub-run of a base recipe with changes — a seed of `seeds:`, a variant of a study (experiments/study.py)
    — into `<parent>/<sub's name>/`: the one mechanism both use. Skipped when it finished under the same recorded
    config (every rank takes rank 0's decision: a rank that skipped a sub-run the others run would desynchronise
    them); else run through `run_one`, which resumes it from its own stage cache and Trainer checkpoints (an
    experiment with versioned stages whose recipe changed recomputes only the stages whose inputs changed).
    Logs `<event>_skipped`, or `<event>_start` and `<event>_done`, with `<event>=key`; returns whether it ran."""
    path = Path(sub.cfg.output_dir) / sub.cfg.name
    if distributed.broadcast(finished(path) and RunDir(path).config == sub.recorded_config()):
        log.info("%s %s%s: finished earlier, skipping", event, key, progress)
        parent.log(f"{event}_skipped", **{event: key})
        return False
    log.info("%s %s%s → %s", event, key, progress, path)
    parent.log(f"{event}_start", **{event: key})
    run_one(sub)
    parent.log(f"{event}_done", **{event: key})
    return True


def run_seeds(exp: "Experiment", parent: RunDir, run_one: Callable[["Experiment"], RunDir]) -> list[int]:
    """Run every seed not finished yet under the current recipe (`run_subrun`); returns the seeds."""
    seeds = list(exp.cfg.seeds)
    for i, seed in enumerate(seeds, 1):
        run_subrun(parent, "seed", seed, seed_experiment(exp, seed, parent.path), run_one, f" ({i}/{len(seeds)})")
    return seeds


# -- the aggregate ---------------------------------------------------------------------------------------------
def _pointer(path: str, key: Any) -> str:
    """JSON Pointer (RFC 6901) of a child: '~' and '/' in keys escaped."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(values: list[Any]) -> bool:
    first = values[0]
    # nan != nan, but a metric that is nan in every seed (an undefined κ) is the same everywhere
    return all(v == first or (_is_number(v) and _is_number(first) and math.isnan(v) and math.isnan(first))
               for v in values[1:])


def _walk(nodes: list[Any], path: str, varying: list[str]) -> Any:
    if all(_is_number(v) for v in nodes):
        return seed_summary(nodes)
    if all(is_interval_record(v) and _is_number(v["value"]) for v in nodes):
        out = seed_summary([v["value"] for v in nodes])
        if all(is_rate_record(v) for v in nodes):
            pooled = pooled_rate(nodes)
            if pooled is not None:
                out["pooled"] = pooled
        return out
    if all(isinstance(v, dict) for v in nodes):
        out_d: dict[str, Any] = {}
        for key in dict.fromkeys(k for v in nodes for k in v):
            child = _pointer(path, key)
            if not all(key in v for v in nodes):
                varying.append(child)
                continue
            value = _walk([v[key] for v in nodes], child, varying)
            if value is not ABSENT:
                out_d[key] = value
        return out_d
    if (all(isinstance(v, list) for v in nodes) and len({len(v) for v in nodes}) == 1
            and all(isinstance(x, (dict, list)) for v in nodes for x in v)):
        items = [_walk([v[i] for v in nodes], _pointer(path, i), varying) for i in range(len(nodes[0]))]
        return [x if x is not ABSENT else None for x in items]
    if _same(nodes):
        return nodes[0]
    varying.append(path or "/")
    return ABSENT


def aggregate(trees: list[Any], path: str = "") -> tuple[Any, list[str]]:
    """Several seeds' JSON trees (same experiment) → (aggregate tree, JSON Pointers of the leaves that differ)."""
    varying: list[str] = []
    out = _walk(trees, path, varying)
    return (None if out is ABSENT else out), varying


def write_aggregate(parent: RunDir, seeds: list[int]) -> dict[str, Any]:
    """Read every seed's metrics.json and write the parent's (main process only, as every metrics write)."""
    per_seed = [read_json(parent.path / seed_dir(s) / "metrics.json") for s in seeds]
    results, varying = aggregate([m["results"] for m in per_seed], "/results")
    extras: dict[str, Any] = {}
    for key in dict.fromkeys(k for m in per_seed for k in m if k not in _UNCHANGED and k != "results"):
        if all(key in m for m in per_seed):
            value, vary = aggregate([m[key] for m in per_seed], _pointer("", key))
            varying += vary
            if value is not None:
                extras[key] = value
        else:
            varying.append(_pointer("", key))
    runs = {str(s): {"dir": seed_dir(s), "report": f"{seed_dir(s)}/report.md",
                     "wall_seconds": m.get("wall_seconds")} for s, m in zip(seeds, per_seed)}
    return parent.save_metrics(results, **extras,
                               repeat={"seeds": seeds, "runs": runs, "varying": varying, "definition": DEFINITION})
