"""The report of a run repeated over seeds (experiments/repeat.py): every metric of `results` as mean ± sd over
seeds with its per-seed values (and, for rates that carry k of n, the Wilson interval of all seeds' prompts
pooled), numbers that came out the same in every seed apart, and links to each seed's own full report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

from ..runs import RunDir
from ..stats import Interval, is_seed_summary
from .render import Report, provenance_block

DIGITS = 4
"""Significant digits of the summary cells (metrics range from losses near 0.01 to percentages near 100)."""
MAX_ROWS = 400
"""Rows shown per section and table (per-word / per-trigger breakdowns can hold thousands of numbers; all of them
stay in metrics.json)."""


def summaries(tree: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(JSON Pointer, seed summary) of every summarised number of an aggregate tree, in tree order."""
    if is_seed_summary(tree):
        yield path, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from summaries(v, f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from summaries(v, f"{path}/{i}")


def _num(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.{DIGITS}g}"


def _metric(pointer: str) -> str:
    """`/sft/attacks/harmful-n8/hs_io` → `sft › attacks › harmful-n8 › hs_io` as inline code (one cell)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    return "`" + " › ".join(parts).replace("`", "'") + "`"


def _constant(s: dict[str, Any]) -> bool:
    return len(set(map(repr, s["values"]))) == 1


def rows(results: Any) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per section (top-level key of `results`): (metrics that differ between seeds or are rates, numbers equal in
    every seed) as table rows."""
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for pointer, s in summaries(results):
        section = pointer.lstrip("/").split("/")[0].replace("~1", "/").replace("~0", "~")
        varying, constant = out.setdefault(section, ([], []))
        if _constant(s) and "pooled" not in s:
            constant.append({"metric": _metric(pointer), "value (every seed)": _num(s["values"][0])})
            continue
        pooled = Interval.from_dict(s["pooled"]) if "pooled" in s else None
        varying.append({"metric": _metric(pointer), "mean ± sd": f"{_num(s['mean'])} ± {_num(s['sd'])}",
                        "pooled 95 % (Wilson)": pooled,
                        "per-seed values": " · ".join(_num(v) for v in s["values"])})
    return out


def _table(rep: Report, rows_: list[dict[str, Any]], columns: list[str]) -> None:
    rep.table(rows_[:MAX_ROWS], columns, digits=1)
    if len(rows_) > MAX_ROWS:
        rep.text(f"… and {len(rows_) - MAX_ROWS} more rows (metrics.json has all of them).")


def write_seeds_report(run: RunDir) -> list[Path]:
    """report.md / report.html of a repeated run, from its metrics.json."""
    m = run.load_metrics()
    rep_info = m["repeat"]
    seeds = rep_info["seeds"]
    kind = m["config"].get("experiment", "experiment")
    rep = Report(f"{m['name']}: {kind} over seeds {', '.join(map(str, seeds))}")
    if m["config"].get("description"):
        rep.text(str(m["config"]["description"]))
    links = [f"[seed {s}]({r['dir']}/report.md) ([html]({r['dir']}/report.html), "
             f"{_num(r.get('wall_seconds'))} s)" for s, r in rep_info["runs"].items()]
    rep.text(f"The experiment ran once per seed; each seed is an ordinary run with its own full report (tables, "
             f"plots, samples): {'; '.join(links)}.")
    rep.heading("Metrics over seeds")
    rep.text(f"mean ± sample sd (ddof 1) over {len(seeds)} seeds; per-seed values in seed order "
             f"({', '.join(map(str, seeds))}). Rates that carry their counts also show the Wilson 95 % interval of "
             "all seeds' prompts pooled (Σk of Σn), which treats the seeds' prompts as independent draws. "
             "Paths are those of each seed's metrics.json `results`; numbers that came out the same in every seed "
             "follow each section's table.")
    for section, (varying, constant) in rows(m["results"]).items():
        rep.heading(section, 3)
        if varying:
            _table(rep, varying, ["metric", "mean ± sd", "pooled 95 % (Wilson)", "per-seed values"])
        if constant:
            rep.text("Same in every seed:")
            _table(rep, constant, ["metric", "value (every seed)"])
    if rep_info.get("varying"):
        rep.heading("Non-numeric values that differ between seeds")
        rep.text("Left out of the aggregate (see each seed's metrics.json): "
                 + ", ".join(f"`{p}`" for p in rep_info["varying"][:200])
                 + (f" and {len(rep_info['varying']) - 200} more" if len(rep_info["varying"]) > 200 else "") + ".")
    rep.heading("Definition")
    rep.text(rep_info["definition"])
    rep.heading("Provenance")
    rep.code(provenance_block(m))
    return rep.write(run.path)
