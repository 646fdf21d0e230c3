"""What every experiment's attacker sweep shares (harmful fine-tuning, fingerprint removal, SPA): trials run as
cached stages keyed by their parameters, and the per-target block of trials + aggregate stored in metrics.json.

Each experiment supplies how one trial is computed (its own stage function) and a `SweepView` (report/sweep.py):
how a stored trial summary becomes a `TrialScore`, the direction of the attack, and the names its report uses.
The same view renders the block (report/sweep.py's table and best-so-far plot).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from ..report.sweep import SweepView
from ..sweep import Params, SweepSettings, aggregate, run_trials, trial_key
from .base import seed_everything


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
