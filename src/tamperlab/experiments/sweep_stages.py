"""What every experiment's attacker sweep shares (harmful fine-tuning, fingerprint removal, SPA): trials run as
cached stages keyed by their parameters, the per-target block of trials + aggregate stored in metrics.json, and its
rendering — the table (fixed attack next to the worst case, the mean of the top n and the worst case keeping
utility, each with its interval) and the best-attack-so-far plot.

Each experiment supplies how one trial is computed (its own stage function) and a `SweepView`: how a stored trial
summary becomes a `TrialScore`, and the names its report uses (metric, utility, target, direction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..report.render import Report, plot_lines
from ..stats import Interval
from ..sweep import Params, SweepSettings, TrialScore, aggregate, run_trials, trial_key
from .base import seed_everything


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


def run_staged_trials(space: dict[str, Sequence[Any]], settings: SweepSettings, seed: int, prefix: str,
                      trial: Callable[[Params, str], dict[str, Any]], view: SweepView) -> list[dict[str, Any]]:
    """Propose the sweep's trials and compute each with `trial(params, stage_key)` — which caches its result as
    the stage `<prefix>-<trial hash>`, so a killed sweep resumes trial by trial. Every trial starts from the
    run's seed, so its result does not depend on which trials ran before it. Returns one flat record per trial:
    {"trial", "key", "params", **summary}."""

    def evaluate(params: Params) -> dict[str, Any]:
        seed_everything(seed)
        return trial(params, f"{prefix}-{trial_key(params)}")

    records = run_trials(space, settings, evaluate, score=view.value, maximize=view.maximize)
    return [{"trial": r["trial"], "key": r["key"], "params": r["params"], **r["result"]} for r in records]


def aggregate_trials(trials: Sequence[dict[str, Any]], settings: SweepSettings, view: SweepView,
                     utility_key: str = "fa", reference_utility: float | None = None,
                     max_utility_drop: float | None = None) -> dict[str, Any]:
    """tamperlab.sweep.aggregate over flat trial records, in the view's direction (with the utility-drop rule
    when the experiment measured the unattacked model's utility)."""
    scores = [dataclasses.replace(view.score(t), key=t["key"]) for t in trials]
    return aggregate(scores, settings.top_n, settings.utility_threshold, maximize=view.maximize,
                     utility_key=utility_key, reference_utility=reference_utility, max_utility_drop=max_utility_drop)


# -- report ------------------------------------------------------------------------------------------------------
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
