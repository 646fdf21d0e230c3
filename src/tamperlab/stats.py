"""Uncertainty for every number tamperlab prints: intervals for rates and means, paired tests between two rows
that share prompts. Thin wrappers over statsmodels / scipy (no hand-written statistics), returning JSON-ready
`Interval` / `PairedTest` records that metrics.json stores and the reports render.

* proportions (HS, FA, collapse, FSR, detection rates): Wilson score interval (statsmodels `proportion_confint`,
  method="wilson"), which stays inside [0, 1] and keeps its coverage at small n and at 0 % / 100 %;
* means over prompts (match ratio, BLEU, per-prompt scores): bootstrap over prompts (`scipy.stats.bootstrap`,
  BCa, fixed seed so a re-rendered report prints the same interval);
* two rows judged on the same prompts: exact McNemar test on the discordant pairs (binary verdicts,
  statsmodels `mcnemar`) or a paired bootstrap of the mean difference (continuous scores); Holm's correction
  (statsmodels `multipletests`) within a family of comparisons.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

ALPHA = 0.05
"""Two-sided level of every interval (95 %) and test in the reports."""
N_RESAMPLES = 2000
"""Bootstrap resamples: enough for stable 95 % endpoints at the precision the reports print (1 decimal)."""
SEED = 0
"""Bootstrap seed: fixed so an interval is reproducible from metrics.json alone."""


@dataclass
class Interval:
    """A point estimate with its 95 % interval, on the scale the metric is reported in (% for rates)."""

    value: float
    """Point estimate (the observed rate or mean)."""
    lo: float
    """Lower end of the 95 % interval (nan when n is too small to have one)."""
    hi: float
    """Upper end of the 95 % interval."""
    n: int
    """Number of prompts / trials behind the estimate."""
    method: str
    """wilson | bootstrap-bca | none."""
    k: int | None = None
    """Successes (proportions only)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interval":
        return cls(**{k: d.get(k) for k in ("value", "lo", "hi", "n", "method", "k")})

    def fmt(self, digits: int = 1, with_n: bool = False) -> str:
        """`81.2 [64.7, 91.1]` (+ ` n=32`); a bare value when there is no interval."""
        if self.value is None or math.isnan(self.value):
            return "–"
        s = f"{self.value:.{digits}f}"
        if not (math.isnan(self.lo) or math.isnan(self.hi)):
            s += f" [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        return s + (f" n={self.n}" if with_n and self.n else "")


def wilson(k: int, n: int, scale: float = 100.0) -> Interval:
    """Wilson 95 % interval of k successes in n trials, reported ×scale (100 → percent, 1 → fraction)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "wilson", 0)
    lo, hi = proportion_confint(int(k), int(n), alpha=ALPHA, method="wilson")
    return Interval(scale * k / n, scale * float(lo), scale * float(hi), int(n), "wilson", int(k))


def proportion(flags: Sequence[bool | int], scale: float = 100.0) -> Interval:
    """Wilson interval of the share of true flags (one per prompt)."""
    return wilson(int(sum(bool(f) for f in flags)), len(flags), scale)


def rate_from_value(value: float, n: int, scale: float = 100.0) -> Interval:
    """Wilson interval for a stored rate whose per-prompt flags were not kept (k recovered as round(value·n))."""
    return wilson(int(round(value * n / scale)), n, scale)


def rate_record(k: int, n: int, scale: float = 1.0) -> dict[str, Any]:
    """A rate as metrics.json stores it: {value, lo, hi, n, k, method: "wilson"} (Wilson 95 %, ×scale). The one
    record every system writes for its proportions, so every report reads them the same way (`stored_interval`)."""
    return wilson(k, n, scale).to_dict()


def mean_record(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """A mean over items (prompts, words, queries) as metrics.json stores it: BCa bootstrap 95 % interval."""
    return bootstrap_mean(values, scale).to_dict()


def diff_record(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """mean(a) − mean(b) of two independent samples (e.g. Δcos of backdoor vs benign sentences) with its
    two-sample percentile bootstrap 95 % interval, as a record like `mean_record`'s."""
    t = bootstrap_diff(a, b, scale)
    return Interval(t.diff, t.lo, t.hi, t.n, t.method).to_dict()


def stored_interval(record: dict[str, Any] | None, value: float | None = None, k: int | None = None,
                    n: int | None = None, scale: float = 1.0) -> Interval | float | None:
    """A rate for a report: the interval metrics.json stored, else (results written before intervals were
    stored) a Wilson interval from the stored count k — or from round(value·n) — and n; the bare value when
    neither is known (no invented interval)."""
    if record:
        return Interval.from_dict(record)
    if value is None or not n:
        return value
    return wilson(int(k) if k is not None else int(round(value * n / scale)), int(n), scale)


def digest(items: Sequence[str]) -> str:
    """Short hash of the items (prompts, triggers, queries) a row was measured on, in order: two rows are paired
    only when theirs are equal."""
    return hashlib.sha256("\x1f".join(items).encode()).hexdigest()[:12]


def bits(flags: Iterable[Any]) -> list[int]:
    """Per-item flags as 0/1 ints (compact in JSON, what the paired tests read)."""
    return [int(bool(f)) for f in flags]


def bootstrap_mean(values: Sequence[float], scale: float = 1.0, seed: int = SEED) -> Interval:
    """Mean over prompts with a BCa bootstrap 95 % interval (resampling prompts), ×scale."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "bootstrap-bca")
    mean = float(x.mean())
    if n < 2:
        return Interval(scale * mean, math.nan, math.nan, n, "none")
    if np.ptp(x) == 0:  # every prompt scored the same: the resampling distribution is a point
        return Interval(scale * mean, scale * mean, scale * mean, n, "bootstrap-bca")
    with warnings.catch_warnings():
        # BCa warns (and returns nan) on nearly degenerate resamples; those are reported as "no interval".
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, confidence_level=1 - ALPHA, method="BCa",
                        rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(scale * mean, scale * lo, scale * hi, n, "bootstrap-bca")


@dataclass
class PairedTest:
    """Two rows measured on the same prompts: their difference and whether it is significant."""

    diff: float
    """Row A minus row B, on the metric's reporting scale."""
    p: float
    """Two-sided p-value (exact McNemar, or paired bootstrap)."""
    n: int
    """Paired prompts."""
    method: str
    """mcnemar-exact | paired-bootstrap."""
    lo: float = math.nan
    """95 % interval of the difference (paired bootstrap only)."""
    hi: float = math.nan
    b: int | None = None
    """McNemar discordant pairs: A flagged, B not."""
    c: int | None = None
    """McNemar discordant pairs: B flagged, A not."""

    @property
    def significant(self) -> bool:
        return bool(self.p < ALPHA)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["significant"] = self.significant
        return d


def _check_paired(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same prompts in both rows ({len(a)} vs {len(b)} values)")


def mcnemar_test(a: Sequence[bool | int], b: Sequence[bool | int], scale: float = 100.0) -> PairedTest:
    """Exact McNemar test of two binary verdict vectors on the same prompts (binomial test on discordant pairs)."""
    from statsmodels.stats.contingency_tables import mcnemar

    _check_paired(a, b)
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(x)
    if n == 0:
        return PairedTest(math.nan, math.nan, 0, "mcnemar-exact")
    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
    p = float(mcnemar(table, exact=True).pvalue)
    return PairedTest(scale * (x.mean() - y.mean()), p, n, "mcnemar-exact", b=table[0][1], c=table[1][0])


def _bootstrap_diff(x: np.ndarray, y: np.ndarray, paired: bool, scale: float, seed: int, method: str) -> PairedTest:
    """mean(x) − mean(y) with a percentile bootstrap (pairs resampled together when `paired`); p is the two-sided
    bootstrap p-value 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0))."""
    from scipy.stats import bootstrap

    n = len(x) if paired else len(x) + len(y)
    diff = float(np.mean(x) - np.mean(y)) if len(x) and len(y) else math.nan
    if min(len(x), len(y)) < 2:
        return PairedTest(scale * diff, math.nan, n, method)
    if (np.ptp(x - y) == 0) if paired else (np.ptp(x) == 0 and np.ptp(y) == 0):
        # no spread to resample: the difference is exact
        return PairedTest(scale * diff, 1.0 if diff == 0 else 0.0, n, method, scale * diff, scale * diff)

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((x, y), stat, paired=paired, vectorized=True, n_resamples=N_RESAMPLES,
                        confidence_level=1 - ALPHA, method="percentile", rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    p = float(min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0))))
    return PairedTest(scale * diff, p, n, method, scale * float(res.confidence_interval.low),
                      scale * float(res.confidence_interval.high))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], scale: float = 1.0, seed: int = SEED) -> PairedTest:
    """Paired bootstrap of mean(a) − mean(b) over prompts (resampling prompt pairs); p is the two-sided
    bootstrap p-value 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0)) of the percentile distribution."""
    _check_paired(a, b)
    return _bootstrap_diff(np.asarray(a, dtype=float), np.asarray(b, dtype=float), True, scale, seed,
                           "paired-bootstrap")


def bootstrap_diff(a: Sequence[float], b: Sequence[float], scale: float = 1.0, seed: int = SEED) -> PairedTest:
    """Two independent samples: mean(a) − mean(b) with a two-sample percentile bootstrap (each sample resampled
    on its own) and its two-sided bootstrap p-value."""
    return _bootstrap_diff(np.asarray(a, dtype=float), np.asarray(b, dtype=float), False, scale, seed,
                           "bootstrap-2sample")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values for a family of comparisons (nan stays nan)."""
    import gc
    from unittest import mock

    from statsmodels.stats import multitest

    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        # statsmodels' Holm branch (0.15, multitest.multipletests) ends with an explicit full gc.collect(): measured
        # 6.9-7.7 s per call (loaded 2-core machine) in a process holding torch, transformers, lm-eval and matplotlib
        # (~470k tracked objects), and a report runs one test family per table column. Only that one call is
        # skipped (Python's automatic collection keeps running); the adjusted p-values do not depend on it.
        with mock.patch.object(gc, "collect", lambda *a: 0):
            adj = multitest.multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adj):
            out[i] = float(p)
    return out


def cohen_kappa(a: Sequence[bool | int], b: Sequence[bool | int]) -> dict[str, float]:
    """Cohen's κ (sklearn) and raw agreement of two judges' binary verdicts on the same answers. κ is nan when it
    is undefined (both judges constant and equal: chance agreement is 1)."""
    from sklearn.metrics import cohen_kappa_score

    _check_paired(a, b)
    x, y = [int(bool(v)) for v in a], [int(bool(v)) for v in b]
    if not x:
        return {"kappa": math.nan, "agreement": math.nan, "n": 0}
    agree = sum(u == v for u, v in zip(x, y)) / len(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when κ is 0/0
        k = float(cohen_kappa_score(x, y)) if len(set(x) | set(y)) > 1 else math.nan
    return {"kappa": k, "agreement": agree, "n": len(x)}


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value) across seeds."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else None)


# -- several seeds of one run (experiments/repeat.py) --------------------------------------------------------------
def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """One number measured once per seed → {mean, sd (sample, ddof=1; None for one seed), n_seeds, values}: the
    record a repeated run's metrics.json stores in place of the number."""
    mean, sd = mean_sd(values)
    return {"mean": mean, "sd": sd, "n_seeds": len(values), "values": [float(v) for v in values]}


def is_seed_summary(obj: Any) -> bool:
    """True for a `seed_summary` record (what a report of a repeated run renders as mean ± sd)."""
    return (isinstance(obj, dict) and {"mean", "sd", "n_seeds", "values"} <= set(obj)
            and isinstance(obj["values"], list))


def is_interval_record(obj: Any) -> bool:
    """True for an `Interval.to_dict()` record (rate_record / mean_record / diff_record)."""
    return isinstance(obj, dict) and {"value", "lo", "hi", "n", "method"} <= set(obj)


def is_rate_record(obj: Any) -> bool:
    """True for a `rate_record`: a Wilson interval that carries its counts k of n."""
    return is_interval_record(obj) and obj["method"] == "wilson" and isinstance(obj.get("k"), int) \
        and isinstance(obj["n"], int)


def _rate_scale(record: dict[str, Any]) -> float | None:
    """The ×scale a rate record was written with (1 → fraction, 100 → percent), read back from its upper end: the
    Wilson upper end is > 0 for every k, n ≥ 1, so hi / hi(k, n) recovers the scale even at k = 0."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = record["k"], record["n"]
    if n <= 0:
        return None
    hi = float(proportion_confint(k, n, alpha=ALPHA, method="wilson")[1])
    return float(f"{float(record['hi']) / hi:.9g}") if hi > 0 else None


def pooled_rate(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The Wilson 95 % interval of several seeds' rate records pooled (Σk of Σn: every seed's prompts together),
    on their common scale; None when the records do not share one or have no prompts."""
    scales = {_rate_scale(r) for r in records}
    scale = scales.pop() if len(scales) == 1 else None
    if scale is None:
        return None
    return rate_record(sum(int(r["k"]) for r in records), sum(int(r["n"]) for r in records), scale)
