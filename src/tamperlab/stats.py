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

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

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


def paired_bootstrap(a: Sequence[float], b: Sequence[float], scale: float = 1.0, seed: int = SEED) -> PairedTest:
    """Paired bootstrap of mean(a) − mean(b) over prompts (resampling prompt pairs); p is the two-sided
    bootstrap p-value 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0)) of the percentile distribution."""
    from scipy.stats import bootstrap

    _check_paired(a, b)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(x)
    if n < 2:
        return PairedTest(scale * float(np.mean(x - y)) if n else math.nan, math.nan, n, "paired-bootstrap")
    d = x - y
    if np.ptp(d) == 0:
        return PairedTest(scale * float(d[0]), 1.0 if d[0] == 0 else 0.0, n, "paired-bootstrap",
                          scale * float(d[0]), scale * float(d[0]))

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                        confidence_level=1 - ALPHA, method="percentile", rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    p = float(min(1.0, 2 * min(np.mean(dist <= 0), np.mean(dist >= 0))))
    return PairedTest(scale * float(d.mean()), p, n, "paired-bootstrap", scale * float(res.confidence_interval.low),
                      scale * float(res.confidence_interval.high))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values for a family of comparisons (nan stays nan)."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        adj = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
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
