"""Intervals and paired tests against hand-checked numbers and direct library calls."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tamperlab import stats


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_matches_formula_and_issue_numbers():
    # the issue's example: SFT 26/32 = 81.2 [65, 91], CTRAP 21/32 = 65.6 [48, 80], Booster 23/32 = 71.9 [55, 84]
    for k, lo_hi in ((26, (65, 91)), (21, (48, 80)), (23, (55, 84))):
        iv = stats.wilson(k, 32)
        lo, hi = _wilson_by_hand(k, 32)
        assert iv.lo == pytest.approx(100 * lo, abs=1e-9) and iv.hi == pytest.approx(100 * hi, abs=1e-9)
        assert (round(iv.lo), round(iv.hi)) == lo_hi and iv.n == 32 and iv.k == k
    assert stats.wilson(26, 32).fmt() == "81.2 [64.7, 91.1]"
    # 0 % and 100 % keep a non-degenerate interval inside [0, 100]
    zero, full = stats.wilson(0, 10), stats.wilson(10, 10)
    assert zero.lo == 0 and zero.hi == pytest.approx(100 * _wilson_by_hand(0, 10)[1])
    assert full.hi == pytest.approx(100) and full.lo == pytest.approx(100 * _wilson_by_hand(10, 10)[0])
    assert stats.proportion([1, 0, 1, 1], scale=1).value == 0.75
    assert stats.rate_from_value(81.25, 32).k == 26
    assert stats.wilson(0, 0).fmt() == "–"


def test_bootstrap_mean_matches_direct_scipy_call_and_is_reproducible():
    from scipy.stats import bootstrap

    x = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    iv = stats.bootstrap_mean(x)
    ref = bootstrap((x,), np.mean, n_resamples=stats.N_RESAMPLES, method="BCa", rng=np.random.default_rng(0))
    assert iv.value == pytest.approx(0.4875)
    assert iv.lo == pytest.approx(ref.confidence_interval.low) and iv.hi == pytest.approx(ref.confidence_interval.high)
    assert iv.lo < iv.value < iv.hi and stats.bootstrap_mean(x) == iv
    const = stats.bootstrap_mean([2.0, 2.0, 2.0], scale=100)
    assert (const.value, const.lo, const.hi) == (200.0, 200.0, 200.0)
    assert math.isnan(stats.bootstrap_mean([1.0]).lo)


def test_mcnemar_exact_is_binomial_on_discordant_pairs():
    # 6 prompts flagged by A only, 1 by B only: p = P(Binom(7, .5) <= 1) * 2 = 2 * 8/128
    a = [1] * 6 + [0] + [1] * 10 + [0] * 15
    b = [0] * 6 + [1] + [1] * 10 + [0] * 15
    t = stats.mcnemar_test(a, b)
    assert (t.b, t.c, t.n) == (6, 1, 32) and t.p == pytest.approx(16 / 128)
    assert t.diff == pytest.approx(100 * 5 / 32) and not t.significant
    t2 = stats.mcnemar_test([1] * 6 + [0] * 26, [0] * 32)
    assert t2.p == pytest.approx(2 / 64) and t2.significant
    assert stats.mcnemar_test([1, 0], [1, 0]).p == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_test([1], [1, 0])


def test_paired_bootstrap_sees_a_consistent_shift_that_unpaired_intervals_miss():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 40)
    a, b = base + 0.05, base  # every prompt improves by exactly .05 ... plus noise below
    a = a + rng.normal(0, 0.01, 40)
    t = stats.paired_bootstrap(a, b)
    assert t.significant and t.lo > 0 and t.diff == pytest.approx(float(np.mean(a - b)))
    ia, ib = stats.bootstrap_mean(a), stats.bootstrap_mean(b)
    assert ia.lo < ib.hi  # the unpaired intervals overlap
    same = stats.paired_bootstrap(b, b)
    assert same.p == 1.0 and not same.significant


def test_holm_and_kappa_against_hand_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([math.nan, 0.01])[0])
    k = stats.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0])  # po = .75, pe = .5 -> kappa = .5
    assert k["kappa"] == pytest.approx(0.5) and k["agreement"] == 0.75
    assert math.isnan(stats.cohen_kappa([0, 0], [0, 0])["kappa"])
    assert stats.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
