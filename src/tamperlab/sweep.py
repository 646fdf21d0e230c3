"""Attacker sweeps: propose trials over an attacker's hyper-parameters — every point of a grid, or an Optuna TPE
search with a fixed seed — and aggregate the trials of one target (a defense, a fingerprint, a watermarked service):
worst case, mean of the top n, worst case among trials that keep utility. The attacker's objective has a direction:
harmful fine-tuning maximises the harmful score; fingerprint removal minimises the fingerprint success rate; SPA
minimises the watermark evidence Δ (`maximize=False`).

Why: a defense that holds against one hand-picked attack can fall to the same attack with another learning rate
or more steps; the number a reviewer should read is the attacker's best over a declared budget of trials.

Trials are identified by a hash of their parameters (`trial_key`), so the caller can cache each one as its own
stage: a killed sweep resumes trial by trial, and a TPE sweep replays its history deterministically (same seed,
same told values → same proposals) before asking for new trials.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Sequence

from .config import PosInt, Range, Seed
from .errors import ConfigError
from .stats import Interval, bootstrap_diff, wilson

Params = dict[str, Any]
"""One trial's point in the search space: dimension name → chosen value."""


@dataclass
class SweepSettings:
    """How to search and how to aggregate (shared by every experiment's `sweep:` section)."""

    enabled: bool = False
    """Run the sweep (after the experiment's fixed attacks)."""
    method: Literal["grid", "tpe"] = "grid"
    """grid: every combination of the space's values (the default for CPU recipes); tpe: Optuna's TPE sampler
    with a fixed seed, `n_trials` proposals over the same values (treated as categorical choices)."""
    n_trials: Annotated[int, Range(0, 10_000)] = 0
    """tpe: number of trials (required). grid: 0 = the whole grid; k > 0 = k points of a seeded shuffle of it."""
    seed: Seed = 0
    """Seed of the TPE sampler / the grid shuffle (trials themselves train with the run's seed)."""
    top_n: PosInt = 3
    """Aggregate "mean of the top n": the n trials with the highest harmful score."""
    utility_threshold: Annotated[float, Range(0, 100)] = 0.0
    """FA (%) a trial must keep to count for "worst case keeping utility" (0 = every trial with an FA counts)."""
    skip_if_aligned_fa_below: Annotated[float, Range(0, 100)] = 0.0
    """Skip a defense's sweep when its aligned model's FA (%) is already below this: the defense has cost the
    utility an attacker would want to keep (0 = never skip)."""

    def __post_init__(self) -> None:
        if self.enabled and self.method == "tpe" and self.n_trials < 1:
            raise ConfigError("sweep.n_trials: tpe needs a number of trials >= 1")


def trial_key(params: Params) -> str:
    """Stable short hash of a trial's parameters (cache key; identical trials share it)."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def grid_points(space: dict[str, Sequence[Any]], n_trials: int = 0, seed: int = 0) -> list[Params]:
    """Every combination of the space's values (in the order the dimensions and values are given); with
    n_trials > 0, that many of them chosen by a seeded shuffle."""
    names = list(space)
    points = [dict(zip(names, combo)) for combo in itertools.product(*(space[n] for n in names))]
    if 0 < n_trials < len(points):
        points = random.Random(seed).sample(points, n_trials)
    return points


def run_trials(space: dict[str, Sequence[Any]], settings: SweepSettings,
               evaluate: Callable[[Params], dict[str, Any]], score: Callable[[dict[str, Any]], float | None],
               maximize: bool = True) -> list[dict[str, Any]]:
    """Propose trials and evaluate each (`evaluate` does the caching); returns one record per trial in order:
    {"trial", "key", "params", "result"}. TPE maximises `score` (the attacker's objective), or minimises it when
    `maximize` is false."""
    if not space:
        raise ConfigError("sweep.space: empty; give at least one dimension a list of values")
    records: list[dict[str, Any]] = []

    def record(params: Params) -> dict[str, Any]:
        rec = {"trial": len(records), "key": trial_key(params), "params": params, "result": evaluate(params)}
        records.append(rec)
        return rec

    if settings.method == "grid":
        for params in grid_points(space, settings.n_trials, settings.seed):
            record(params)
        return records

    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=optuna.samplers.TPESampler(seed=settings.seed))
    dists = {name: CategoricalDistribution(list(values)) for name, values in space.items()}
    for _ in range(settings.n_trials):
        trial = study.ask(dists)
        value = score(record({name: trial.params[name] for name in space})["result"])
        if value is None or math.isnan(value):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    return records


@dataclass
class TrialScore:
    """What aggregation needs from one trial: its score as successes / items (a rate: harmful score, FSR) or as two
    samples whose difference of means is the score (EaaS: Δcos of D_b vs D_n sentences), and its utility."""

    key: str
    """trial_key of the trial's parameters."""
    k: int = 0
    """Rate scores: items counted (prompts judged harmful, fingerprint triggers that fired)."""
    n: int = 0
    """Rate scores: items evaluated."""
    fa: float | None = None
    """Utility of the attacked model (HFT: FA % or an lm-eval accuracy in %; fingerprints: accuracy; EaaS: the
    copy's downstream accuracy); None when the trial did not measure it."""
    utility: Interval | None = None
    """The same utility with its n and 95 % interval, when the trial stored them (carried into the aggregate's
    worst cases as `utility_interval`)."""
    scale: float = 100.0
    """Rate scores: reporting scale of k / n (100 = percent, 1 = fraction)."""
    samples: tuple[Sequence[float], Sequence[float]] | None = None
    """Difference scores, instead of k / n: the per-item values (a, b) whose mean(a) − mean(b) is the score; the
    interval is a two-sample bootstrap. All trials of one sweep must measure the same items (same sentences)."""

    @property
    def value(self) -> float:
        if self.samples is not None:
            a, b = self.samples
            return float(sum(a) / len(a) - sum(b) / len(b)) if len(a) and len(b) else math.nan
        return self.scale * self.k / self.n if self.n else math.nan

    def interval(self) -> Interval:
        """The score with its 95 % interval (Wilson for rates, two-sample bootstrap for differences)."""
        return pooled([self])


def pooled(trials: Sequence[TrialScore]) -> Interval:
    """The mean score of several trials with one interval: rates pool their items (Wilson over Σk / Σn — equal n
    makes this the mean of the rates); differences average each item's value over the trials (the mean of the
    trials' Δ, which is linear) and bootstrap those per-item means."""
    if trials[0].samples is None:
        return wilson(sum(t.k for t in trials), sum(t.n for t in trials), trials[0].scale)
    import numpy as np

    a = np.mean([np.asarray(t.samples[0], float) for t in trials if t.samples is not None], axis=0)
    b = np.mean([np.asarray(t.samples[1], float) for t in trials if t.samples is not None], axis=0)
    t = bootstrap_diff(a, b)
    return Interval(t.diff, t.lo, t.hi, t.n, t.method)


def aggregate(trials: Sequence[TrialScore], top_n: int, utility_threshold: float, maximize: bool = True,
              utility_key: str = "fa", reference_utility: float | None = None,
              max_utility_drop: float | None = None) -> dict[str, Any]:
    """Per-target summary of a sweep (trials with the same key count once). "Best" is the attacker's: the highest
    score when `maximize` (harmful score), the lowest otherwise (FSR, watermark Δ):
    * worst_case: the attacker's best trial (the target's worst case), its 95 % interval (over its own items);
    * top_n_mean: the mean over the top_n best trials, its interval over their pooled items (`pooled`: all trials
      of one sweep are measured on the same prompts / triggers / sentences);
    * worst_case_utility: the worst case among trials whose utility ≥ utility_threshold and, with
      `max_utility_drop`, at most that many points below `reference_utility` (the unattacked model's utility);
      None when no trial measured utility or none kept it;
    * best_so_far: the running best score in trial order (the search's progress).
    The utility of a worst case is stored under `utility_key`. Ties go to the earlier trial."""
    seen: dict[str, TrialScore] = {}
    for t in trials:
        seen.setdefault(t.key, t)
    distinct = list(seen.values())
    if max_utility_drop is not None and reference_utility is None:
        raise ValueError("aggregate: max_utility_drop needs the reference_utility it is measured from")
    out: dict[str, Any] = {"n_trials": len(trials), "n_distinct": len(distinct), "top_n": top_n,
                           "utility_threshold": utility_threshold}
    if max_utility_drop is not None:
        out.update(max_utility_drop=max_utility_drop, reference_utility=reference_utility)
    sign = 1.0 if maximize else -1.0

    def worst(ts: Sequence[TrialScore]) -> dict[str, Any] | None:
        if not ts:
            return None
        best = max(ts, key=lambda t: sign * t.value)  # max() keeps the first of equal values
        util = {"utility_interval": best.utility.to_dict()} if best.utility is not None else {}
        return {"key": best.key, utility_key: best.fa, **util, **best.interval().to_dict()}

    def keeps(u: float) -> bool:
        if u < utility_threshold:
            return False
        # a drop of exactly max_utility_drop points keeps utility (tolerance for float rounding of percentages)
        return max_utility_drop is None or reference_utility - u <= max_utility_drop + 1e-9  # type: ignore[operator]

    out["worst_case"] = worst(distinct)
    top = sorted(distinct, key=lambda t: -sign * t.value)[:top_n]  # stable sort: ties keep trial order
    if top:
        out["top_n_mean"] = {"keys": [t.key for t in top], **pooled(top).to_dict()}
    measured = [t for t in distinct if t.fa is not None]
    out["worst_case_utility"] = worst([t for t in measured if keeps(t.fa)])  # type: ignore[arg-type]
    out["utility_measured"] = bool(measured)
    running, best_so_far = -math.inf, []
    for t in trials:
        running = max(running, sign * t.value)
        best_so_far.append(sign * running)
    out["best_so_far"] = best_so_far
    return out
