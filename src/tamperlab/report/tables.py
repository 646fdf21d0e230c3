"""The numbers behind the paper-style tables of a defense × attack comparison (CTRAP Tables 1-3): attack
descriptors grouped into table columns, a cell's per-seed values and metric dicts, mean ± sd, the per-seed averages
and the pooled Wilson interval of a cell.

Pure functions over the `per_seed` results of a `ctrap_table` run, read by its report (`report/hft_table.py`, the
grid in `report/grid.py`) and by the metrics.json `summary` the experiment writes (`experiments/ctrap_table.py`).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from ..stats import Interval, wilson
from .cells import cell_interval

TASK_NAMES = {"sst2": "SST2", "agnews": "AG News", "gsm8k": "GSM8K"}


@dataclass(frozen=True)
class Column:
    """One attack setting of a table."""

    label: str
    """The attack's label (key in the per-seed results)."""
    kind: str
    header: str
    """Column header: n=100, p=10%, SST2."""
    x: float
    """Position on the plot's x axis (n, p in %, or the task index)."""


def attack_columns(attacks: Sequence[dict[str, Any]]) -> dict[str, list[Column]]:
    """Group attack descriptors ({label, kind, n, p, task, weights}) into table columns by kind, in sweep order.
    Headers: n for harmful, p for mixed, the task for benign, the label for every other kind and for an attack
    that trains other weights than the released LoRA (full-parameter, an attacker LoRA of rank r) or shares its
    setting with another attack."""
    out: dict[str, list[Column]] = {}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for a in attacks:
        by_kind.setdefault(a["kind"], []).append(a)
    for kind, items in by_kind.items():
        tasks = {a.get("task") for a in items}
        ns = {a["n"] for a in items}
        cols = []
        for i, a in enumerate(items):
            task = TASK_NAMES.get(a.get("task"), a.get("task")) or a["label"]  # an attack without a task: its label
            if kind == "harmful":
                header, x = f"n={a['n']}", float(a["n"])
            elif kind == "mixed":
                p = round(100 * a["p"], 1)
                header = f"p={p:g}%" + (f" {task}" if len(tasks) > 1 else "") + (f" n={a['n']}" if len(ns) > 1 else "")
                x = p
            else:
                header = task + (f" n={a['n']}" if len(ns) > 1 else "")
                x = float(i)
            if a.get("weights") not in (None, "released-lora"):  # full-parameter / attacker-LoRA: say which
                header = a["label"]
            cols.append(Column(a["label"], kind, header, x))
        if kind in ("harmful", "mixed"):
            cols.sort(key=lambda c: c.x)
        heads = [c.header for c in cols]  # two attacks of one setting (LoRA and full-parameter): their labels
        out[kind] = [dataclasses.replace(c, header=c.label) if heads.count(c.header) > 1 else c for c in cols]
    return out


def cell_values(per_seed: dict[str, dict[str, Any]], defense: str, attack: str | None, metric: str) -> list[float]:
    """Per-seed values of one metric in one cell (attack None = the aligned model before any attack)."""
    vals = []
    for rows in per_seed.values():
        row = rows.get(defense, {})
        m = row.get("aligned") if attack is None else row.get("attacks", {}).get(attack)
        if m is not None and m.get(metric) is not None:
            vals.append(float(m[metric]))
    return vals


def mean_std(vals: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def average_values(per_seed: dict[str, dict[str, Any]], defense: str, cols: Sequence[Column],
                   metric: str) -> list[float]:
    """Per seed, the mean over the columns (so the Average's ± is the spread of the seeds' averages)."""
    out = []
    for rows in per_seed.values():
        vals = [v for c in cols for v in cell_values({"_": rows}, defense, c.label, metric)]
        if len(vals) == len(cols) and vals:
            out.append(statistics.fmean(vals))
    return out


def cells_over_seeds(per_seed: dict[str, dict[str, Any]], defense: str, attack: str | None) -> list[dict[str, Any]]:
    """The metric dicts of one (defense, attack) cell, one per seed, in seed order (attack None = aligned)."""
    out = []
    for rows in per_seed.values():
        row = rows.get(defense, {})
        m = row.get("aligned") if attack is None else row.get("attacks", {}).get(attack)
        if m is not None:
            out.append(m)
    return out


def pooled_interval(per_seed: dict[str, dict[str, Any]], defense: str, attack: str | None,
                    metric: str) -> Interval | None:
    """All seeds' prompts of a cell together: the Wilson interval drawn as a band / whisker."""
    ivs = [cell_interval(c, metric) for c in cells_over_seeds(per_seed, defense, attack) if c.get(metric) is not None]
    if not ivs or any(iv is None or iv.k is None for iv in ivs):
        return None
    return wilson(sum(iv.k for iv in ivs), sum(iv.n for iv in ivs))  # type: ignore[misc,union-attr]


def has_counts(per_seed: dict[str, dict[str, Any]]) -> bool:
    """Whether the cells were recorded with n / intervals (results older than the intervals have none)."""
    return any(m.get("intervals") for rows in per_seed.values() for r in rows.values()
               for m in ([r.get("aligned")] if r.get("aligned") else []) + list(r.get("attacks", {}).values()))
