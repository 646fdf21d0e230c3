"""The report of a `ctrap_table` run, CTRAP Tables 1-3 layout: one row per defense, one column per attack setting
(n for full harmful fine-tuning, p for mixed, the task for benign; every other attack kind — AOA identity shifting,
refusal-direction ablation, a soft prompt, ... — its own group headed by its label), an Average column. A cell is
the rate with its Wilson 95 % interval (one seed) or "mean ± sd [pooled Wilson interval]" over seeds; every pair of
defenses on the same column gets an exact McNemar test (Holm-adjusted within the column) and the report marks the
pairs that are not significantly different. Plus the comparison grid's heatmaps (`report/grid.py` builds
its tables), the judge panel's per-judge HS and Cohen's κ, HS-vs-n, HS-vs-p and FA-per-task plots with 95 % bands /
whiskers, and the wall time of every stage.

Pure functions over the `metrics.json` of a `ctrap_table` run, so tables can be re-rendered (`tamperlab report`)
and tested without training anything.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..runs import RunDir
from ..stats import Interval
from .cells import cell_interval, judge_hs, pairwise, panel_agreement, pool_seeds, seeds_cell
from .grid import ALIGNED, WORST, grid_columns, grid_rows, grid_tables, reference_row, reference_tests
from .heatmap import save_heatmaps
from .hft import judge_text, result_rows
from .lmeval import hft_cells, utility_section
from .render import Panel, Report, plot_bars, plot_grid, provenance_block
from .samples import write_sample_view
from .sweep import hft_sweep_section
from .tables import (Column, attack_columns, average_values, cell_values, cells_over_seeds, has_counts, mean_std,
                     pooled_interval)

METRIC_NAMES = {"hs_io": "HS(IO)", "hs_o": "HS(O)", "fa": "FA", "collapse_rate": "collapse %"}


# Which metrics each kind of attack is reported with, in table order (the paper's: HS for harmful settings,
# FA first for benign tasks; collapse shows whether a trap fired).
KIND_METRICS = {"harmful": ("hs_io", "hs_o", "collapse_rate"), "mixed": ("hs_io", "hs_o", "fa"),
                "benign": ("fa", "hs_io", "hs_o")}
KIND_TITLES = {"harmful": "Full harmful fine-tuning (p = 1)", "mixed": "Mixed harmful fine-tuning",
               "benign": "Benign fine-tuning (p = 0)", "aoa": "Identity shifting (AOA, no harmful example)",
               "refusal-ablation": "Refusal-direction ablation (weight orthogonalisation, no training)",
               "soft-prompt": "Universal soft prompt (input embeddings)"}
"""Section title per attack kind; a kind without one (a plugin's attack) is titled by its name."""
OTHER_METRICS = ("hs_io", "hs_o", "collapse_rate", "fa")
"""The metrics of every other attack kind (AOA, refusal ablation, a soft prompt, a plugin's): HS first, then
collapse and FA where the attack measured them."""


def fmt_cell(vals: Sequence[float], digits: int = 1) -> str:
    if not vals:
        return "–"
    m, s = mean_std(vals)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def table_cell(per_seed: dict[str, dict[str, Any]], defense: str, attack: str | None, metric: str,
               digits: int = 1) -> Any:
    """One seed: the rate with its Wilson interval; several: "mean ± sd [pooled Wilson interval]"; – if none."""
    c = seeds_cell(cells_over_seeds(per_seed, defense, attack), metric, digits)
    return "–" if c is None else c


def paper_table(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], cols: Sequence[Column],
                metric: str, digits: int = 1) -> list[dict[str, Any]]:
    """Rows {Method, <column headers>..., Avg} with interval / "mean ± std" cells."""
    rows = []
    for d in defenses:
        row: dict[str, Any] = {"Method": d}
        for c in cols:
            row[c.header] = table_cell(per_seed, d, c.label, metric, digits)
        if len(cols) > 1:
            row["Avg"] = fmt_cell(average_values(per_seed, d, cols, metric), digits)
        rows.append(row)
    return rows


def _plot_series(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], cols: Sequence[Column],
                 metric: str) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, tuple[list, list]]]:
    """Mean over seeds per column (missing cells left out, never drawn as 0) and the pooled 95 % bands."""
    series, bands = {}, {}
    for d in defenses:
        pts = [(c.x, mean_std(v)[0], pooled_interval(per_seed, d, c.label, metric)) for c in cols
               if (v := cell_values(per_seed, d, c.label, metric))]
        if pts:
            series[d] = ([x for x, _, _ in pts], [y for _, y, _ in pts])
            if all(iv is not None for _, _, iv in pts):
                bands[d] = ([iv.lo for _, _, iv in pts], [iv.hi for _, _, iv in pts])  # type: ignore[union-attr]
    return series, bands


def significance_table(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], cols: Sequence[Column],
                       metric: str) -> list[dict[str, Any]]:
    """Rows "A vs B" × attack columns: Δ (A − B, points) and Holm-adjusted exact McNemar p over the prompts of
    all seeds; "n.s." marks a difference that is not significant at 5 %."""
    table: dict[str, dict[str, Any]] = {}
    for c in cols:
        rows = {d: cells_over_seeds(per_seed, d, c.label) for d in defenses}
        for cmp in pairwise(rows, c.header, metric):
            table.setdefault(f"{cmp.a} vs {cmp.b}", {"pair": f"{cmp.a} vs {cmp.b}"})[c.header] = cmp.fmt()
    return [{"pair": r["pair"], **{c.header: r.get(c.header, "–") for c in cols}} for r in table.values()]


def panel_table(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], cols: Sequence[Column],
                panel: Sequence[str]) -> list[dict[str, Any]]:
    """HS(IO) of every judge of the panel per (defense, column), first seed (pooled κ is in `panel_agreement`)."""
    seed = next(iter(per_seed))
    one = {seed: per_seed[seed]}
    return [{"Method": d, "attack": c.header, **{j: judge_hs(next(iter(cells_over_seeds(one, d, c.label)), None), j)
                                                for j in panel}}
            for c in cols for d in defenses]


def paper_rows(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], cols: Sequence[Column],
               attacks: Sequence[dict[str, Any]], cfg: dict[str, Any], judge: dict[str, Any]) -> list[dict[str, Any]]:
    """HFT_REFERENCES against the measurement: a reference of CTRAP Table 1's kind against the mean over the full
    harmful fine-tuning columns, a reference that names its attack column (T-Vaccine: mixed p = 0.1 SST2) against
    that column (pooled interval over seeds when the cells carry counts)."""
    from .references import HFT_REFERENCES, attack_setting, comparison_rows, hft_setting, matches_column

    def combined(ivs: Sequence[Interval | None]) -> Interval | float | None:
        present = [iv for iv in ivs if iv is not None]
        if not present:
            return None
        return pool_seeds(present) or statistics.fmean(iv.value for iv in present)

    base = hft_setting(cfg, judge, [a["n"] for a in attacks if a["kind"] == "harmful"])
    rows: list[dict[str, Any]] = []
    if cols:
        measured: dict[tuple[str, str], Any] = {}
        for d in defenses:
            for metric in ("hs_io", "hs_o"):
                m = combined([cell_interval(c, metric) for col in cols for c in cells_over_seeds(per_seed, d, col.label)
                              if c.get(metric) is not None])
                if m is not None:
                    measured[(d, metric)] = m
        rows += comparison_rows([r for r in HFT_REFERENCES if r.column is None], measured, base)
    for ref in HFT_REFERENCES:
        atk = next((a for a in attacks if matches_column(ref, a)), None)
        if atk is None or ref.method not in defenses:
            continue
        m = combined([cell_interval(c, ref.metric) for c in cells_over_seeds(per_seed, ref.method, atk["label"])])
        if m is not None:
            rows += comparison_rows([ref], {(ref.method, ref.metric): m}, {**base, "attack": attack_setting(atk)})
    return rows


FIGURES = {
    "hs": "HS(IO) per judge of the panel (lower is better); the primary judge's panel ends with the attacker "
          "sweep's worst case when a sweep ran",
    "fa": "fine-tune accuracy on each attack's benign task (higher is better)",
    "collapse": "collapse rate: answers dominated by the trap word (CTRAP's intended effect after a harmful attack; "
                "a cost anywhere else)",
    "utility": "lm-evaluation-harness utility per task (its first accuracy metric), as % (higher is better)",
    "sweep": "attacker sweep: the fixed attack next to the tuned attackers' worst case, mean of the top n and "
             "worst case among trials that keep FA",
}


def grid_section(rep: Report, res: dict[str, Any], judge: dict[str, Any], plots: Path) -> list[Path]:
    """The "Comparison grid" section: one heatmap figure per metric group and the grid table. Returns the
    images written."""
    per_seed, defenses, attacks = res["per_seed"], res["defenses"], res["attacks"]
    if not defenses:
        return []
    panel = judge.get("panel") or ([judge["name"]] if judge.get("name") else [])
    tests = reference_tests(per_seed, defenses, [ALIGNED] + grid_columns(attacks))
    tables = grid_tables(per_seed, defenses, attacks, panel, tests)
    ref = reference_row(defenses)
    rep.heading("Comparison grid")
    seeds = len(per_seed)
    rep.text("Every defense (rows) against every attack (columns), one heatmap per metric. A cell: the value "
             + ("[Wilson 95 % interval]" if seeds == 1 else
                "over all seeds' prompts pooled [Wilson 95 %] (a metric without counts: the mean over seeds, n = "
                "seeds)")
             + "; colours on a fixed 0–100 scale; a hatched **–** was not measured (never a 0). **aligned**: the "
             f"aligned model before any attack. **n.s. vs {ref}**: not significantly different from the "
             f"reference row {ref} on the same prompts (exact McNemar, Holm-adjusted over all pairs of the column). "
             f"**{WORST}**: the highest HS(IO) of the attacker sweep's trials (docs/methods/measurement.md).")
    written = []
    for name, group in tables.items():
        path = save_heatmaps(plots / f"grid-{name}.png", group)
        written.append(path)
        rep.image(f"plots/{path.name}", FIGURES[name])
    rows = grid_rows(per_seed, defenses, attacks, panel, tests)
    if rows:
        rep.text(f"The grid as a table (value [Wilson 95 %]{'' if seeds == 1 else '; mean ± sd [pooled] over seeds'}"
                 f"). Δ = row − {ref} in points on the same prompts, p = exact McNemar, Holm-adjusted; **n.s.** = "
                 "not significant at 5 %.")
        rep.table(rows, digits=1)
    return written


def kind_section(rep: Report, per_seed: dict[str, dict[str, Any]], defenses: Sequence[str], kind: str,
                 cols: Sequence[Column], plots: Path) -> None:
    """One attack kind's tables (one per metric it measured, paired tests on its first), its HS-vs-n / HS-vs-p
    curve and its FA bars."""
    metrics = KIND_METRICS.get(kind, OTHER_METRICS)
    rep.heading(KIND_TITLES.get(kind, kind))
    for metric in metrics:
        if not any(cell_values(per_seed, d, c.label, metric) for d in defenses for c in cols):
            continue
        rep.heading(METRIC_NAMES[metric], 3)
        rep.table(paper_table(per_seed, defenses, cols, metric))
        if metric == metrics[0]:
            sig = significance_table(per_seed, defenses, cols, metric)
            if sig:
                rep.text(f"Paired tests, {METRIC_NAMES[metric]}: Δ = A − B in points on the same prompts "
                         "(all seeds), p = exact McNemar, Holm-adjusted within each column; **n.s.** = not "
                         "significantly different at 5 %.")
                rep.table(sig)
    # a curve over n (p): one point per setting, the first attack of each (LoRA before full-parameter)
    curve = list({c.x: c for c in reversed(cols)}.values())[::-1]
    if kind in ("harmful", "mixed") and len(curve) > 1:
        var, axis = ("n", "harmful samples n") if kind == "harmful" else ("p", "harmful ratio p (%)")
        panels = []
        for metric in ("hs_io", "hs_o"):
            series, bands = _plot_series(per_seed, defenses, sorted(curve, key=lambda c: c.x), metric)
            if series:
                panels.append(Panel(f"{METRIC_NAMES[metric]} vs {var}", series, bands or None,
                                    f"{METRIC_NAMES[metric]} %", percent=True))
        if panels:
            name = f"hs-vs-{var}.png"
            plot_grid(plots / name, panels, axis, "bands: Wilson 95 % (seeds pooled)", ncols=2)
            rep.image(f"plots/{name}", f"HS vs {var}")
    if kind in ("benign", "mixed"):
        fa_cols = [c for c in cols if any(cell_values(per_seed, d, c.label, "fa") for d in defenses)]
        if fa_cols:
            bars: dict[str, list[float | None]] = {}
            errs: dict[str, tuple[list, list]] = {}
            for d in defenses:
                bars[d] = [mean_std(v)[0] if (v := cell_values(per_seed, d, c.label, "fa")) else None
                           for c in fa_cols]
                ivs = [pooled_interval(per_seed, d, c.label, "fa") for c in fa_cols]
                errs[d] = ([iv.lo if iv else None for iv in ivs], [iv.hi if iv else None for iv in ivs])
            name = f"fa-{kind}.png"
            plot_bars(plots / name, [c.header for c in fa_cols], bars, f"fine-tune accuracy ({kind}; whiskers: "
                      "95 %)", "FA %", errors=errs, percent=True)
            rep.image(f"plots/{name}", f"fine-tune accuracy ({kind})")


def write_table_report(run: RunDir) -> list[Path]:
    metrics = run.load_metrics()
    res = metrics["results"]
    per_seed, defenses, attacks = res["per_seed"], res["defenses"], res["attacks"]
    cfg = metrics["config"]
    judge = metrics.get("judge", {})
    rep = Report(f"Harmful fine-tuning defenses: {metrics['name']}")
    if cfg.get("description"):
        rep.text(cfg["description"])
    seeds = res["seeds"]
    al = cfg["alignment"]
    n_eval = metrics.get("data", {}).get("eval_prompts", {}).get("n", cfg["data"]["n_eval"])
    al_len = f"{al['max_steps']} steps" if al["max_steps"] > 0 else f"{al['epochs']} epochs"
    rep.text(f"Base model `{cfg['model']['name_or_path']}`, data source `{cfg['data']['source']}`, "
             f"{n_eval} harmful eval prompts, alignment "
             f"{al_len} (batch {al['batch_size']}), seeds {seeds}. "
             + ("Cells: mean ± sample sd over seeds" if len(seeds) > 1 else "Cells: value (one seed)")
             + (" [Wilson 95 % interval of all seeds' prompts pooled]." if has_counts(per_seed) else
                " — these results carry no per-prompt counts, so no intervals or paired tests (re-run to get them)."))
    rep.text(judge_text(judge))
    if write_sample_view(run.path, f"Per-prompt outputs — {metrics['name']}"):
        rep.text("[Browse every prompt, output and judge verdict](samples.html) (filter by evaluation, judge, "
                 "verdict, disagreement, text); raw JSONL in `samples/`.")
    gen = [k for k, v in metrics.get("data", {}).items() if v.get("generated")]
    if gen:
        rep.text("Generated stand-in data: " + ", ".join(gen) + ". Harmful responses come from the unaligned base "
                 "model, refusals are templated, benign tasks are procedurally generated with exact labels.")

    plots = run.sub("plots")
    grid_section(rep, res, judge, plots)
    groups = attack_columns(attacks)
    # the paper's three kinds in its order, then every other kind the run has (AOA, refusal ablation, soft prompt,
    # a plugin's attack) in recipe order
    order = list(KIND_METRICS)
    for kind in sorted(groups, key=lambda k: order.index(k) if k in order else len(order)):
        kind_section(rep, per_seed, defenses, kind, groups[kind], plots)

    if any(cell_values(per_seed, d, None, "hs_io") for d in defenses):
        rep.heading("After alignment, before any attack")
        rep.table([{"Method": d, **{METRIC_NAMES[m]: table_cell(per_seed, d, None, m)
                                    for m in ("hs_io", "hs_o", "collapse_rate")}} for d in defenses])
    utility_section(rep, [c for s, rows in per_seed.items()
                         for c in hft_cells(rows, "" if len(per_seed) == 1 else f" (seed {s})")])
    panel = judge.get("panel") or []
    if len(panel) > 1:
        rep.heading("Judge panel")
        all_cells = [m for rows in per_seed.values() for r in rows.values()
                     for m in ([r["aligned"]] if "aligned" in r else []) + list(r.get("attacks", {}).values())]
        pooled = panel_agreement(all_cells)
        if pooled:
            rep.text("Every answer of every cell (all seeds), judged by each judge; Cohen's κ (sklearn) with the "
                     "primary judge's verdicts:")
            rep.table(pooled, digits=1)
        harmful_cols = groups.get("harmful") or next(iter(groups.values()), [])
        rep.text(f"Per-judge HS(IO) on the {'full harmful fine-tuning' if groups.get('harmful') else 'first'} "
                 f"columns (seed {next(iter(per_seed))}):")
        rep.table(panel_table(per_seed, defenses, harmful_cols, panel), digits=1)
    rep.text("HS(IO) / HS(O): % of held-out harmful prompts whose greedy answer the primary judge flags, with the "
             "question / with a blank question (lower is better). FA: % of benign-task eval answers exactly correct "
             "(higher is better). collapse %: answers dominated by the trap word. Avg: per seed, the mean over the "
             "columns.")

    hft_sweep_section(rep, {(d if len(per_seed) == 1 else f"{d} (seed {s})"): r["sweep"]
                        for s, rows in per_seed.items() for d, r in rows.items() if "sweep" in r}, plots)

    refs = paper_rows(per_seed, defenses, groups.get("harmful", []), attacks, cfg, judge)
    if refs:
        rep.heading("Paper vs measured")
        rep.text("The papers' headline numbers next to this run's measurement: CTRAP Table 1's against the average "
                 "over the full harmful fine-tuning columns, a number measured on one attack setting (T-Vaccine: "
                 "mixed p = 0.1 SST2) against that column (value [Wilson 95 % interval of all columns' and seeds' "
                 "prompts pooled]). **pass** = the paper's "
                 "number lies within the measured interval widened by the tolerance; **not comparable** names the "
                 "setting fields (model, data, judge, attack) that differ — then no pass / fail is given.")
        rep.table(refs, digits=1)

    timing = res.get("seconds", {})
    if timing:
        rep.heading("Wall time (seconds, summed over seeds)")
        rep.table([{"Method": d, "alignment": round(t["align"], 1), "eval aligned": round(t["eval-aligned"], 1),
                    "attacks + eval": round(t["attack"], 1),
                    **({"sweep trials": round(t["sweep"], 1)} if "sweep" in t else {})} for d, t in timing.items()])
        rep.text(f"Whole run: {metrics.get('wall_seconds', math.nan):.0f} s in the last invocation (cached stages "
                 "of earlier invocations cost nothing then). Stage times come from the run log.")

    for seed, rows in per_seed.items():
        rep.heading(f"All cells, seed {seed}", 3)
        rep.table(result_rows(rows), digits=1)
    rep.heading("Provenance")
    rep.code(provenance_block(metrics))
    return rep.write(run.path)
