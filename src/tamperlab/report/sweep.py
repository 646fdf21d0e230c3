"""The one rendering of every experiment's attacker sweep (harmful fine-tuning, SPA, fingerprint removal): the
table of the fixed attack next to the worst case, the mean of the top n and the worst case keeping utility (each
with its interval), and the best-attack-so-far plot — plus each experiment's `SweepView` (how a stored trial
summary becomes a `TrialScore`, and the names its report uses) and its section around the shared table.

The experiments (experiments/hft_sweep.py, eaas_sweep.py, fingerprint_sweep.py, on the shared trial / aggregation
mechanism of experiments/sweep_stages.py) compute the sweep blocks stored in metrics.json and score their trials
with the same views; this module only reads those blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..stats import Interval
from ..sweep import TrialScore
from .render import Report, plot_lines


@dataclass(frozen=True)
class SweepView:
    """How one experiment's sweep is scored and named in its report."""

    score: Callable[[dict[str, Any]], TrialScore]
    """A stored trial summary (or the fixed attack's) → its score and utility."""
    target: str = "defense"
    """Column naming what is attacked (defense, fingerprint, scenario)."""
    metric: str = "HS(IO)"
    """The attacker's objective as the report names it."""
    utility: str = "FA"
    """The utility measure as column names use it."""
    utility_text: str = "fine-tune accuracy ≥ t %"
    """What "keeping utility" means, in the report's text."""
    maximize: bool = True
    """The attacker maximises the metric (harmful score) or minimises it (FSR, watermark Δ)."""
    pooled_text: str = "Wilson over their pooled prompts"
    """How the mean of the top n gets its interval."""
    values_text: str = "Values [Wilson 95 %] over each trial's prompts."
    """How a single trial's interval is computed."""
    ylabel: str = "max HS(IO) so far %"
    """y axis of the best-so-far plot."""
    percent: bool = True
    """Plot on a fixed 0–100 axis (rates in %)."""
    ylim: tuple[float, float] | None = None
    """Fixed y range otherwise (e.g. 0–1 for a rate as a fraction)."""
    digits: int = 1
    """Decimals in the table."""
    objective: Callable[[dict[str, Any]], float | None] | None = None
    """The value TPE optimises and the plot starts from, when a summary stores it apart from its counts (HFT:
    `hs_io`); default: the score's value."""

    def value(self, summary: dict[str, Any]) -> float | None:
        return self.objective(summary) if self.objective else self.score(summary).value

    def better(self, a: float, b: float) -> float:
        """The attacker's preferred of two scores."""
        return max(a, b) if self.maximize else min(a, b)


# -- the shared table and plot -------------------------------------------------------------------------------------
def _iv(d: dict[str, Any] | None) -> Interval | None:
    return Interval.from_dict(d) if d else None


def params_text(trials: Sequence[dict[str, Any]], key: str | None) -> str:
    for t in trials:
        if t["key"] == key:
            return ", ".join(f"{k}={v}" for k, v in t["params"].items())
    return "–"


def sweep_rows(sweeps: dict[str, dict[str, Any]], view: SweepView, utility_key: str = "fa") -> list[dict[str, Any]]:
    """One row per target: the fixed attack's metric next to the sweep's worst case, mean of the top n and worst
    case keeping utility (each value [95 % interval])."""
    rows = []
    for label, s in sweeps.items():
        row: dict[str, Any] = {view.target: label, "fixed attack": s["attack"]}
        f = s.get("fixed")
        row[f"fixed {view.metric}"] = view.score(f).interval() if f else None
        if s.get("aligned_utility"):  # the unattacked model's utility (skip rule, drop rule)
            row[f"aligned {view.utility}"] = _iv(s["aligned_utility"])
        if s.get("skipped"):
            row["trials"] = f"skipped: {s['skipped']}"
            rows.append(row)
            continue
        a = s["aggregate"]
        row["trials"] = f"{a['n_distinct']}" + (f" ({a['n_trials']} proposed)" if a["n_trials"] != a["n_distinct"]
                                                else "")
        row["sweep worst case"] = _iv(a["worst_case"])
        row["worst-case attack"] = params_text(s["trials"], (a["worst_case"] or {}).get("key"))
        if a["utility_measured"]:
            wc = a["worst_case"] or {}
            row[f"its {view.utility}"] = _iv(wc.get("utility_interval")) or wc.get(utility_key)
        row[f"mean top {a['top_n']}"] = _iv(a.get("top_n_mean"))
        gate = f"worst case, {view.utility} ≥ {a['utility_threshold']:g}" + (
            f", drop ≤ {a['max_utility_drop']:g}" if a.get("max_utility_drop") is not None else "")
        row[gate] = _iv(a["worst_case_utility"]) if a["utility_measured"] else f"{view.utility} not measured"
        rows.append(row)
    return rows


def sweep_section(rep: Report, sweeps: dict[str, dict[str, Any]], plots: Path, view: SweepView,
                  utility_key: str = "fa", heading: str = "Attacker sweep") -> None:
    """The sweep's table and best-attack-so-far plot, appended to a report."""
    if not sweeps:
        return
    first = next(iter(sweeps.values()))
    most, bias = ("highest", "maximum of several noisy trials is biased upwards") if view.maximize else \
        ("lowest", "minimum of several noisy trials is biased downwards")
    rep.heading(heading)
    rep.text(f"The fixed attack `{first['attack']}` re-run with a {first['method']} search over "
             + ", ".join(f"{k} ∈ {v}" for k, v in first["space"].items())
             + f". **worst case**: the trial with the {most} {view.metric}; **mean top n**: mean {view.metric} of "
             f"the n {most} trials (interval: {view.pooled_text}); **worst case, {view.utility} ≥ t**: the worst "
             f"case among trials that keep {view.utility_text}"
             + (f", **drop ≤ d**: and lose at most d points of the unattacked model's {view.utility} (`aligned "
                f"{view.utility}`)" if any((s.get("aggregate") or {}).get("max_utility_drop") is not None
                                           for s in sweeps.values()) else "")
             + f". {view.values_text} The {bias}: read it as what a tuning attacker reports.")
    rep.table(sweep_rows(sweeps, view, utility_key), digits=view.digits)
    series = {}
    for d, s in sweeps.items():
        if s.get("skipped") or not s["aggregate"]["best_so_far"]:
            continue
        best = s["aggregate"]["best_so_far"]
        if s.get("fixed"):  # x = 0: the fixed attack, where a tuning attacker starts; then the best so far
            start = view.value(s["fixed"])
            series[d] = (list(range(len(best) + 1)), [start] + [view.better(start, b) for b in best])
        else:
            series[d] = (list(range(1, len(best) + 1)), best)
    if series:
        plot_lines(plots / "sweep_best_so_far.png", series, "Best attack so far", "trial (0: the fixed attack)",
                   view.ylabel, view.ylim, percent=view.percent, integer_x=True)
        rep.image("plots/sweep_best_so_far.png", f"best {view.metric} so far, per {view.target}: x = 0 is the "
                  "fixed attack, x = k the best of it and the first k trials")


# -- harmful fine-tuning (`sweep:` of hft / ctrap / ctrap_table) ---------------------------------------------------
def trial_score(t: dict[str, Any]) -> TrialScore:
    """A stored trial summary → its HS(IO) counts and utility (the `utility` record the sweep gated on; FA for
    summaries stored before there was one)."""
    util = t.get("utility")
    if util:
        return TrialScore("", t["k"], t["n"], util["value"], utility=Interval.from_dict(util))
    return TrialScore("", t["k"], t["n"], t.get("fa"))


HFT_VIEW = SweepView(score=trial_score, objective=lambda t: t["hs_io"])
"""Harmful fine-tuning: the attacker maximises HS(IO) (%), keeping FA (%) or an lm-eval accuracy (%)."""


def view_for(sweeps: dict[str, dict[str, Any]]) -> tuple[SweepView, str]:
    """The report's view and utility key of a run's sweep blocks (every defense of a run shares its sweep config):
    FA, or the lm-eval task · metric the sweep gated on."""
    m = next((s.get("utility_measure") for s in sweeps.values() if s.get("utility_measure")), None)
    if not m or m["measure"] == "fa":
        return HFT_VIEW, "fa"
    return dataclasses.replace(HFT_VIEW, utility=m["label"], utility_text=f"lm-eval {m['label']} ≥ t %"), m["key"]


def hft_sweep_rows(sweeps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per defense: the fixed attack's HS(IO) next to the sweep's worst case, mean of the top n and
    worst case keeping utility (each value [Wilson 95 %])."""
    view, key = view_for(sweeps)
    return sweep_rows(sweeps, view, key)


def hft_sweep_section(rep: Report, sweeps: dict[str, dict[str, Any]], plots: Path) -> None:
    """The sweep's table and best-attack-so-far plot, appended to a harmful-fine-tuning report."""
    view, key = view_for(sweeps)
    sweep_section(rep, sweeps, plots, view, key)


# -- SPA (`sweep:` of eaas) ----------------------------------------------------------------------------------------
SPA_VIEW = SweepView(
    score=lambda t: TrialScore("", fa=t.get("acc"), samples=(t["scores_backdoor"], t["scores_benign"])),
    target="scenario", metric="Δ", utility="acc", utility_text="the copy's downstream accuracy ≥ t (fraction, "
    "main task)", maximize=False,
    pooled_text="two-sample bootstrap of the trials' per-sentence means — every copy is verified on the same "
                "D_b / D_n sentences",
    values_text="Δ = the copy's watermark evidence (Δcos; SAW: Δ proj_u) [two-sample bootstrap 95 %] over each "
                "trial's D_b / D_n sentences; each trial's KS p and `detected` are in the trials table.",
    ylabel="min Δ so far", percent=False, digits=4, objective=lambda t: t["delta"])
"""SPA: the attacker minimises the copy's watermark evidence Δ, keeping downstream accuracy."""


def spa_trial_rows(sweeps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial: its SPA settings, the deletion's TPR / FPR, the copy's Δ, KS p, detected, accuracy."""
    rows = []
    for name, s in sweeps.items():
        for t in s.get("trials", []):
            rows.append({"scenario": name, "trial": t["trial"], **{k: v for k, v in t["params"].items()},
                         "deleted": t.get("n_deleted"), "TPR": t.get("tpr"), "FPR": t.get("fpr"),
                         "Δ": Interval.from_dict(t["delta_interval"]) if t.get("delta_interval") else t["delta"],
                         "p": t["p_value"], "detected": t["detected"], "acc": t["acc"]})
    return rows


def spa_sweep_section(rep: Report, results: dict[str, Any], plots: Path) -> None:
    """The SPA sweep's table, per-trial table and best-so-far plot (nothing when the run has no sweep)."""
    sweeps = {n: s["sweep"] for n, s in results.get("scenarios", {}).items() if s.get("sweep")}
    if not sweeps:
        return
    sweep_section(rep, sweeps, plots, SPA_VIEW, utility_key="acc", heading="Attacker sweep (SPA)")
    rep.text("Every trial: SPA's deletion with the trial's settings on the run's cached API embeddings, a copy "
             "trained on the purified set, verified by the provider (**detected** = p < α and Δ > 0) and measured "
             "downstream (main task).")
    rep.table(spa_trial_rows(sweeps), digits=3)


# -- fingerprint removal (`sweep:` of fingerprints) ----------------------------------------------------------------
FSR_VIEW = SweepView(
    score=lambda t: TrialScore("", t["hits"], t["n"], t.get("acc"), scale=1.0), target="fingerprint",
    metric="FSR", utility="acc", utility_text="multiple-choice accuracy ≥ t (fraction)", maximize=False,
    pooled_text="Wilson over their pooled triggers",
    values_text="FSR as a fraction [Wilson 95 %] over each trial's triggers.", ylabel="min FSR so far",
    percent=False, ylim=(-0.05, 1.05), digits=2)
"""Fingerprint removal: the attacker minimises FSR, keeping accuracy."""


def fingerprint_sweep_section(rep: Report, results: dict[str, Any], plots: Path) -> None:
    """The fingerprint sweep's table and best-so-far plot (nothing when the run has no sweep)."""
    sweeps = {fp: r["sweep"] for fp, r in results.get("fingerprints", {}).items() if r.get("sweep")}
    if not sweeps:
        return
    first = next(iter(sweeps.values()))
    sweep_section(rep, sweeps, plots, FSR_VIEW, utility_key="acc", heading="Attacker sweep (fingerprint removal)")
    rep.text(f"Scored stage: `{first.get('stage')}`; FSR definition: `{first.get('variant')}`"
             + (f"; MEraser phases swept: {', '.join(first['phases'])}" if first.get("phases") else "") + ".")
