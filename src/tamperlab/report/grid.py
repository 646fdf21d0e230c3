"""The comparison grid of a `ctrap_table` run (issue 19): defenses × attacks (× seeds), every metric as one heatmap
(`report.heatmap`) and every cell in one table built from data.

Per metric a `HeatTable` — rows = defenses, columns = "aligned" (before any attack, where the metric is measured
there) + one per attack (+ "worst case (sweep)" for the primary judge's HS when an attacker sweep ran):

* HS(IO) per judge of the panel (the primary judge's from the cell's own counts, the others' from their verdicts);
* FA (fine-tune accuracy on the attack's benign task);
* collapse rate;
* lm-eval utility, one panel per task (its first accuracy metric; fractions shown as %);
* the attacker sweep: the fixed attack next to the sweep's worst case, mean of the top n and worst case keeping
  utility.

A cell over several seeds is the Wilson interval of all seeds' prompts pooled (rates with counts) or the mean over
seeds (n = seeds). Missing cells stay missing (hatched "–"). Differences from the reference row (SFT, else the
first defense) are tested with the report's exact McNemar tests, Holm-adjusted over all pairs of a column
(`report.cells.pairwise`, as in the significance tables), and marked "n.s." where not significant.

Pure functions over metrics.json, like `report/tables.py`; `report/hft_table.py` renders the section."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..metrics.lmeval import ACCURACY_METRICS
from ..stats import Interval, wilson
from .cells import Comparison, cell_interval, judge_hs, pairwise, pool_seeds, seeds_text
from .heatmap import HeatTable
from .tables import TASK_NAMES, cells_over_seeds

WORST = "worst case (sweep)"
Getter = Callable[[dict[str, Any]], "Interval | None"]
"""Reads one metric's Interval from an evaluation cell (None when the cell does not have it)."""


@dataclass(frozen=True)
class GridColumn:
    """One column of the grid."""

    key: str | None
    """The attack's label in the per-seed results; None = the aligned model before any attack."""
    header: str
    """Column header (e.g. "harmful n=160", "mixed p=10% SST2", "benign SST2", "aligned")."""


ALIGNED = GridColumn(None, "aligned")


def grid_columns(attacks: Sequence[dict[str, Any]]) -> list[GridColumn]:
    """One column per attack descriptor, in recipe order, headed by its kind and setting; an attack whose header
    would repeat another's (e.g. LoRA and full-parameter harmful fine-tuning on the same n) is headed by its
    label."""
    heads = []
    for a in attacks:
        task = TASK_NAMES.get(a.get("task") or "", a.get("task"))
        if a["kind"] == "harmful":
            heads.append(f"harmful n={a['n']}")
        elif a["kind"] == "mixed":
            heads.append(f"mixed p={round(100 * a['p'], 1):g}% {task}")
        elif a["kind"] == "benign":
            heads.append(f"benign {task}")
        else:
            heads.append(a["label"])
    return [GridColumn(a["label"], a["label"] if heads.count(h) > 1 else h) for a, h in zip(attacks, heads)]


def reference_row(defenses: Sequence[str]) -> str:
    """The row every other is compared with: SFT (no defense term) when present, else the first row."""
    return "sft" if "sft" in defenses else defenses[0]


# -- reading one metric from a cell ------------------------------------------------------------------------------
def hs_getter(judge: str, primary: bool) -> Getter:
    """HS(IO) by one judge: the primary judge's is the cell's headline hs_io (with its counts)."""
    if primary:
        return lambda c: cell_interval(c, "hs_io")
    return lambda c: judge_hs(c, judge)


def rate_getter(metric: str) -> Getter:
    return lambda c: cell_interval(c, metric)


def lmeval_getter(task: str, metric: str) -> Getter:
    """One lm-eval task · metric as a percentage (lm-eval reports fractions)."""

    def get(c: dict[str, Any]) -> Interval | None:
        m = ((c.get("lm_eval") or {}).get(task) or {}).get("metrics", {}).get(metric)
        if not m:
            return None
        iv = m.get("interval")
        if iv:
            return Interval(100 * iv["value"], 100 * iv["lo"], 100 * iv["hi"], int(iv["n"]), iv.get("method", ""),
                            iv.get("k"))
        return Interval(100 * float(m["value"]), math.nan, math.nan, int(m.get("n") or 0), "none")

    return get


def lmeval_metrics(per_seed: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(task, metric): per lm-eval task its first 0/1-score metric (acc before acc_norm; exact_match's first
    filter), in first-seen order — one panel per task; every metric is in the report's lm-eval table."""
    out: dict[str, str] = {}
    for rows in per_seed.values():
        for r in rows.values():
            for c in ([r["aligned"]] if r.get("aligned") else []) + list(r.get("attacks", {}).values()):
                for task, res in (c.get("lm_eval") or {}).items():
                    found = [m for m in (res.get("metrics") or {}) if m.split(",")[0] in ACCURACY_METRICS]
                    if task not in out and found:
                        out[task] = min(found, key=lambda m: ACCURACY_METRICS.index(m.split(",")[0]))
    return list(out.items())


def seed_intervals(per_seed: dict[str, dict[str, Any]], defense: str, col: GridColumn,
                   get: Getter) -> list[Interval]:
    """The metric of one (defense, column) cell, one Interval per seed that measured it."""
    return [iv for c in cells_over_seeds(per_seed, defense, col.key) if (iv := get(c)) is not None]


def heat_cell(ivs: Sequence[Interval]) -> Interval | None:
    """A heatmap cell over seeds: one seed as measured; several pooled (Wilson over all prompts) when every seed
    carries counts, else the mean over seeds with n = seeds."""
    if not ivs:
        return None
    if len(ivs) == 1:
        return ivs[0]
    pooled = pool_seeds(ivs)
    if pooled is not None:
        return pooled
    return Interval(statistics.fmean(iv.value for iv in ivs), math.nan, math.nan, len(ivs), "mean over seeds")


# -- the attacker sweep -------------------------------------------------------------------------------------------
def sweeps_of(per_seed: dict[str, dict[str, Any]], defense: str) -> list[dict[str, Any]]:
    return [rows[defense]["sweep"] for rows in per_seed.values() if "sweep" in rows.get(defense, {})]


def sweep_value(sweeps: Sequence[dict[str, Any]], field: str) -> Interval | None:
    """An aggregate of the sweep (worst_case, top_n_mean, worst_case_utility) as an Interval; over several seeds
    the attacker's best of them (the highest value). None when skipped or not reached."""
    ivs = [Interval.from_dict(s["aggregate"][field]) for s in sweeps
           if not s.get("skipped") and (s.get("aggregate") or {}).get(field)]
    return max(ivs, key=lambda iv: iv.value) if ivs else None


def sweep_attack(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str]) -> str | None:
    """The label of the attack the sweep varied (None when no sweep ran)."""
    return next((s["attack"] for d in defenses for s in sweeps_of(per_seed, d)), None)


def sweep_table(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str]) -> HeatTable | None:
    """The fixed attack next to the sweep's aggregates, HS(IO) of the primary judge."""
    sweeps = {d: sweeps_of(per_seed, d) for d in defenses}
    if not any(sweeps.values()):
        return None
    first = next(s for ss in sweeps.values() for s in ss)
    agg = next((s["aggregate"] for ss in sweeps.values() for s in ss if s.get("aggregate")), {})
    cols = [f"fixed attack ({first['attack']})", "worst case", f"mean top {agg.get('top_n', 'n')}",
            f"worst case, FA ≥ {agg.get('utility_threshold', 't'):g}" if agg else "worst case keeping FA"]
    cells = []
    for d in defenses:
        fixed = [wilson(f["k"], f["n"]) for s in sweeps[d] if (f := s.get("fixed")) and f.get("n")]
        cells.append([heat_cell(fixed), sweep_value(sweeps[d], "worst_case"), sweep_value(sweeps[d], "top_n_mean"),
                      sweep_value(sweeps[d], "worst_case_utility")])
    keep = [j for j in range(len(cols)) if any(row[j] is not None for row in cells)]  # e.g. FA never measured
    return HeatTable("attacker sweep: HS(IO) %", list(defenses), [cols[j] for j in keep],
                     [[row[j] for j in keep] for row in cells], better="low")


# -- the heatmaps -------------------------------------------------------------------------------------------------
def metric_table(title: str, per_seed: dict[str, dict[str, Any]], defenses: Sequence[str],
                 cols: Sequence[GridColumn], get: Getter, better: str, keep: Sequence[str] = ()) -> HeatTable | None:
    """One metric's HeatTable; columns where no defense has a value are left out (except those in `keep`);
    None when nothing at all was measured."""
    grid = {c.header: [heat_cell(seed_intervals(per_seed, d, c, get)) for d in defenses] for c in cols}
    headers = [c.header for c in cols if c.header in keep or any(v is not None for v in grid[c.header])]
    if not any(v is not None for h in headers for v in grid[h]):
        return None
    return HeatTable(title, list(defenses), headers, [[grid[h][i] for h in headers] for i in range(len(defenses))],
                     better=better)  # type: ignore[arg-type]


def comparisons(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], col: GridColumn,
                metric: str) -> dict[str, Comparison]:
    """Each defense's paired test against the reference row on this column (Holm over all pairs of the column,
    as the report's significance tables), by defense."""
    ref = reference_row(defenses)
    rows = {d: cells_over_seeds(per_seed, d, col.key) for d in defenses}
    return {(c.b if c.a == ref else c.a): c for c in pairwise(rows, col.header, metric) if ref in (c.a, c.b)}


Tests = dict[str, dict[str, dict[str, Comparison]]]
"""metric (hs_io, fa) → column header → defense → its test against the reference row."""


def reference_tests(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str],
                    cols: Sequence[GridColumn]) -> Tests:
    """Every column's tests against the reference row, for HS(IO) and FA (computed once, used by the heatmaps'
    n.s. notes and by the table)."""
    return {m: {c.header: comparisons(per_seed, defenses, c, m) for c in cols} for m in ("hs_io", "fa")}


def vs_reference(cmp: Comparison | None, ref: str) -> str | None:
    """Δ = row − reference (points) with its Holm-adjusted p; "n.s." when not significant."""
    if cmp is None:
        return None
    return cmp.fmt(reverse=cmp.a == ref)


def mark_not_significant(table: HeatTable, tests: dict[str, dict[str, Comparison]]) -> None:
    """Note "n.s. vs <ref>" under the cells whose difference from the reference row is not significant."""
    ref = reference_row(table.rows)
    for j, header in enumerate(table.cols):
        for d, cmp in tests.get(header, {}).items():
            if not cmp.significant and not math.isnan(cmp.test.p):
                table.notes[(table.rows.index(d), j)] = f"n.s. vs {ref}"


def grid_tables(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], attacks: Sequence[dict[str, Any]],
                panel: Sequence[str], tests: Tests | None = None) -> dict[str, list[HeatTable]]:
    """The heatmaps of a run by figure: hs (one panel per judge), fa, collapse, utility (one per lm-eval task),
    sweep. Figures with nothing measured are left out."""
    cols = [ALIGNED] + grid_columns(attacks)
    tests = tests if tests is not None else reference_tests(per_seed, defenses, cols)
    judges = list(panel) or ["primary judge"]
    out: dict[str, list[HeatTable]] = {}
    swept = sweep_attack(per_seed, defenses)
    hs = []
    for i, j in enumerate(judges):
        t = metric_table(f"HS(IO) % — {j}" + (" (primary)" if i == 0 and len(judges) > 1 else ""), per_seed,
                         defenses, cols, hs_getter(j, i == 0), "low")
        if t is None:
            continue
        if i == 0:
            mark_not_significant(t, tests["hs_io"])
            if swept is not None:  # the attacker's worst case next to the fixed attacks
                t.cols.append(WORST)
                for r, d in enumerate(defenses):
                    t.cells[r].append(sweep_value(sweeps_of(per_seed, d), "worst_case"))
        hs.append(t)
    out["hs"] = hs
    fa = metric_table("FA % (fine-tune accuracy)", per_seed, defenses, cols, rate_getter("fa"), "high")
    if fa is not None:
        mark_not_significant(fa, tests["fa"])
    out["fa"] = [fa] if fa else []
    collapse = metric_table("collapse rate %", per_seed, defenses, cols, rate_getter("collapse_rate"), "low")
    out["collapse"] = [collapse] if collapse else []
    out["utility"] = [t for task, metric in lmeval_metrics(per_seed)
                      if (t := metric_table(f"lm-eval {task} · {metric} %", per_seed, defenses, cols,
                                            lmeval_getter(task, metric), "high")) is not None]
    sw = sweep_table(per_seed, defenses)
    out["sweep"] = [sw] if sw else []
    return {k: v for k, v in out.items() if v}


# -- the table ----------------------------------------------------------------------------------------------------
def grid_rows(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], attacks: Sequence[dict[str, Any]],
              panel: Sequence[str], tests: Tests | None = None) -> list[dict[str, Any]]:
    """One row per (column, defense), grouped by column so each defense reads against the reference row just
    above it: HS(IO) per judge, FA, collapse, lm-eval utility (value [Wilson 95 %], or mean ± sd [pooled] over
    seeds), Δ HS(IO) / Δ FA vs the reference (McNemar, Holm; n.s. marked) and, on the swept attack's rows, the
    sweep's worst case. Columns that no row has are left out."""
    cols = [ALIGNED] + grid_columns(attacks)
    judges = list(panel) or ["primary judge"]
    ref = reference_row(defenses)
    tests = tests if tests is not None else reference_tests(per_seed, defenses, cols)
    swept = sweep_attack(per_seed, defenses)
    utility = lmeval_metrics(per_seed)
    fields: list[tuple[str, Getter]] = [(f"HS(IO) {j}" if len(judges) > 1 else "HS(IO)", hs_getter(j, i == 0))
                                        for i, j in enumerate(judges)]
    fields += [("FA", rate_getter("fa")), ("collapse %", rate_getter("collapse_rate"))]
    fields += [(f"{task} {metric} %", lmeval_getter(task, metric)) for task, metric in utility]
    rows = []
    for col in cols:
        cmp_hs, cmp_fa = tests["hs_io"][col.header], tests["fa"][col.header]
        for d in defenses:
            row: dict[str, Any] = {"attack": col.header, "defense": d}
            for name, get in fields:
                row[name] = seeds_text(seed_intervals(per_seed, d, col, get))
            row[f"Δ HS(IO) vs {ref}"] = vs_reference(cmp_hs.get(d), ref)
            row[f"Δ FA vs {ref}"] = vs_reference(cmp_fa.get(d), ref)
            row[WORST] = sweep_value(sweeps_of(per_seed, d), "worst_case") if col.key == swept and swept else None
            rows.append(row)
    keep = [k for k in rows[0] if k in ("attack", "defense") or any(r[k] is not None for r in rows)] if rows else []
    return [{k: r[k] for k in keep} for r in rows]
