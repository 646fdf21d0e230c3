"""Watermark verification statistics (EmbMarker's `eval_copier`), exactly as the brief defines them.

Given the suspect's L2-normalised embeddings of the backdoor set D_b and the benign set D_n and the target e_t:

    cos_i = e_i · e_t              l2_i = Σ_j (e_ij − e_tj)²   (squared L2, as in the official code)
    Δcos  = mean_{D_b} cos − mean_{D_n} cos
    Δl2   = mean_{D_b} l2  − mean_{D_n} l2
    p     = scipy.stats.kstest(cos_{D_b}, cos_{D_n}).pvalue      (two-sample, two-sided)

A watermarked copy gives Δcos > 0, Δl2 < 0 and a tiny p. With 20 vs 20 samples the smallest possible exact
two-sample KS p-value is 2/C(40, 20) ≈ 1.45e-11.

Next to each Δ the result keeps its 95 % interval (two-sample bootstrap over the D_b and D_n sentences,
`stats.diff_record`) and the per-sentence values it is the difference of (`*_backdoor`, `*_benign`, in sentence
order), so a report can compare two suspects verified on the same sentences (e.g. a copy before vs after SPA).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from ..stats import diff_record


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def verification_stats(e_backdoor: np.ndarray, e_benign: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Δcos, squared Δl2 and the KS p-value of backdoor vs benign embeddings w.r.t. one target."""
    eb, en, t = _unit(e_backdoor), _unit(e_benign), _unit(np.asarray(target).reshape(-1))
    if eb.ndim != 2 or en.ndim != 2 or eb.shape[1] != t.shape[0] or en.shape[1] != t.shape[0]:
        raise ValueError(f"shape mismatch: D_b {eb.shape}, D_n {en.shape}, target {t.shape}")
    if len(eb) == 0 or len(en) == 0:
        raise ValueError("verification needs non-empty backdoor and benign sets")
    cos_b, cos_n = eb @ t, en @ t
    l2_b, l2_n = ((eb - t) ** 2).sum(1), ((en - t) ** 2).sum(1)
    return {
        "delta_cos": float(cos_b.mean() - cos_n.mean()),
        "delta_l2": float(l2_b.mean() - l2_n.mean()),
        "p_value": float(stats.kstest(cos_b, cos_n).pvalue),
        "cos_backdoor_mean": float(cos_b.mean()),
        "cos_benign_mean": float(cos_n.mean()),
        "delta_cos_interval": diff_record(cos_b, cos_n),
        "delta_l2_interval": diff_record(l2_b, l2_n),
        **per_sentence("cos", cos_b, cos_n),
    }


def score_stats(scores_backdoor: np.ndarray, scores_benign: np.ndarray) -> dict[str, Any]:
    """The same test on any per-sample score (SAW: bit accuracy of the decoded message)."""
    b, n = np.asarray(scores_backdoor, float), np.asarray(scores_benign, float)
    return {"delta": float(b.mean() - n.mean()), "p_value": float(stats.kstest(b, n).pvalue),
            "backdoor_mean": float(b.mean()), "benign_mean": float(n.mean()), "delta_interval": diff_record(b, n),
            **per_sentence("scores", b, n)}


def per_sentence(name: str, backdoor: np.ndarray, benign: np.ndarray) -> dict[str, list[float]]:
    """The per-sentence statistic of D_b and D_n (rounded for JSON): `{name}_backdoor`, `{name}_benign`."""
    return {f"{name}_backdoor": [round(float(v), 6) for v in backdoor],
            f"{name}_benign": [round(float(v), 6) for v in benign]}
