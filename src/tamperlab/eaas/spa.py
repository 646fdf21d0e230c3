"""SPA — the Semantic Perturbation Attack on trigger-based EaaS watermarks (brief §3).

Idea: a trigger watermark ignores meaning. Append a semantically unrelated suffix to a text: a clean embedding
moves with the new meaning, a watermarked one stays anchored to the target. So the attacker:

1. **Suffix search** (local surrogate, never the victim): for each text x, take the `candidates` pool sentences
   with the *lowest* cos(S(x), S(p)), then keep the `n_suffixes` with the lowest cos(S(x), S(x + " " + p)).
2. **Query** the service for x + " " + p_j (j = 1..K).
3. **Tightness scores** of the original embedding e and its K perturbed versions e_j:
       cos score = mean_j cos(e, e_j)                (high ⇒ watermarked)
       L2 score  = mean_j ‖e − e_j‖₂                  (low  ⇒ watermarked)
       PCA score = Σ explained_variance_ of PCA(5) fitted on the K+1 vectors   (low ⇒ watermarked)
4. **Threshold**: Gaussian KDE of the scores on a 10,000-point grid; the threshold is the argmax of the
   density's second derivative within the left half of the grid; samples below it are deleted (flagged as
   watermarked). Alternatives: delete a fixed count or fraction of the lowest scores (the official training code
   hard-codes a count).
5. The purified set (corpus minus deleted samples) trains a new copy model, whose watermark should no longer verify.

Metrics (official `visualization.py` / `subset_remove.py`, all from scikit-learn): AUROC = `roc_auc_score` and
AUPRC = `auc(recall, precision)` of `precision_recall_curve` (trapezoidal; `average_precision_score` is reported
separately as `ap_*`, labelled as not the paper's) of each score against the ground-truth trigger label (≥1
trigger word), with l2/pca negated (the official 1 − score: same ranking); TPR = deleted ∩ triggered / triggered
(`recall_score`), FPR = deleted ∩ clean / clean, precision of the deletion (`precision_score`).
Remaining deviations of the metrics from the official code: none (the official TPR is reported at its
hard-coded deletion count; here at the configured removal rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
from scipy import stats

from ..config import check_positive, check_range
from ..errors import ConfigError
from ..stats import bits, digest, rate_record

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass
class SPAConfig:
    """Semantic Perturbation Attack settings (defaults: the official code)."""

    surrogate: str = "embedded"
    """Attacker's local, unwatermarked sentence embedder (official: paraphrase-MiniLM-L6-v2)."""
    pool_size: int = 2000
    """Suffix pool size (official: all of WikiText-103; here generated encyclopedic sentences)."""
    candidates: int = 20
    """Pool items with the lowest surrogate similarity to x (official: 20)."""
    n_suffixes: int = 10
    """Perturbations per text kept, lowest cos(x, x+suffix) (official: 10)."""
    pca_components: int = 5
    """PCA components of the PCA score (official: 5)."""
    score: Literal["pca", "cos", "l2"] = "pca"
    """Score used to select samples for deletion (official: pca)."""
    removal: Literal["kde", "count", "fraction"] = "kde"
    """How many to delete: KDE second-derivative threshold, a fixed count, or a fixed fraction."""
    remove_count: int = 0
    """removal=count: delete this many lowest-score samples."""
    remove_fraction: float = 0.0
    """removal=fraction: delete this fraction of lowest-score samples."""
    kde_grid: int = 10000
    """Grid points of the KDE threshold search (official: 10k)."""
    query_batch: int = 64
    """Texts per HTTP request when querying perturbed texts."""

    def __post_init__(self) -> None:
        check_positive("spa", pool_size=self.pool_size, candidates=self.candidates, n_suffixes=self.n_suffixes,
                       pca_components=self.pca_components, kde_grid=self.kde_grid, query_batch=self.query_batch)
        if self.n_suffixes > self.candidates:
            raise ConfigError(f"spa.n_suffixes={self.n_suffixes} must be <= spa.candidates={self.candidates}")
        if self.candidates > self.pool_size:
            raise ConfigError(f"spa.candidates={self.candidates} must be <= spa.pool_size={self.pool_size}")
        check_range("spa", "remove_fraction", self.remove_fraction, 0.0, 1.0)
        if self.removal == "count" and self.remove_count <= 0:
            raise ConfigError("spa.removal=count needs spa.remove_count > 0")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def search_suffixes(texts: Sequence[str], pool: Sequence[str], surrogate: EmbedFn, candidates: int,
                    n_suffixes: int, progress: bool = True) -> np.ndarray:
    """(N, n_suffixes) pool indices per text: least similar pool items, then least similar concatenations."""
    from tqdm.auto import tqdm

    e_x = _unit(np.asarray(surrogate(list(texts)), dtype=np.float64))
    e_p = _unit(np.asarray(surrogate(list(pool)), dtype=np.float64))
    cand = np.argsort(e_x @ e_p.T, axis=1, kind="stable")[:, :candidates]  # lowest cos first
    out = np.zeros((len(texts), n_suffixes), dtype=np.int64)
    step = max(1, 256 // candidates)  # texts per surrogate call: keeps each encode a reasonable batch
    for s in tqdm(range(0, len(texts), step), desc="SPA suffix search", disable=not progress, leave=False):
        block = range(s, min(s + step, len(texts)))
        joined = [f"{texts[i]} {pool[j]}" for i in block for j in cand[i]]
        e_j = _unit(np.asarray(surrogate(joined), dtype=np.float64)).reshape(len(block), candidates, -1)
        for b, i in enumerate(block):
            sims = e_j[b] @ e_x[i]
            out[i] = cand[i][np.argsort(sims, kind="stable")[:n_suffixes]]
    return out


def perturbed_texts(texts: Sequence[str], pool: Sequence[str], suffix_idx: np.ndarray) -> list[str]:
    """Flat list, text-major: x_0+s_00, x_0+s_01, …, x_1+s_10, …"""
    return [f"{t} {pool[j]}" for t, row in zip(texts, suffix_idx) for j in row]


def tightness_scores(orig: np.ndarray, perturbed: np.ndarray, n_components: int = 5) -> dict[str, np.ndarray]:
    """orig (N, d), perturbed (N, K, d) → per-sample cos, l2 and PCA scores."""
    o = _unit(np.asarray(orig, dtype=np.float64))
    p = _unit(np.asarray(perturbed, dtype=np.float64))
    cos = np.einsum("nd,nkd->nk", o, p).mean(1)
    l2 = np.linalg.norm(p - o[:, None, :], axis=2).mean(1)
    pca = np.zeros(len(o))
    for i in range(len(o)):
        x = np.vstack([o[i][None], p[i]])
        x = x - x.mean(0)
        s = np.linalg.svd(x, compute_uv=False)
        var = s ** 2 / (len(x) - 1)  # = sklearn PCA explained_variance_
        pca[i] = var[:n_components].sum()
    return {"cos": cos, "l2": l2, "pca": pca}


def watermark_likeness(scores: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Higher = more likely watermarked (cos as is; l2 and pca negated)."""
    return scores[name] if name == "cos" else -scores[name]


def kde_threshold(scores: np.ndarray, grid: int = 10000) -> float:
    """Argmax of the KDE's second derivative within the left half of [min, max] (official remove_norm_test.py)."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0:
        return float(x.min()) if len(x) else 0.0
    xs = np.linspace(x.min(), x.max(), grid)
    dens = stats.gaussian_kde(x)(xs)
    d2 = np.gradient(np.gradient(dens, xs), xs)
    return float(xs[int(np.argmax(d2[: grid // 2]))])


def select_for_deletion(scores: dict[str, np.ndarray], cfg: SPAConfig) -> tuple[np.ndarray, float | None]:
    """Boolean mask of samples the attacker deletes, and the threshold (on the raw score) if one was used."""
    s = scores[cfg.score]
    # For cos, high means watermarked: threshold the negated score so 'below the threshold' = deleted for all.
    low_is_wm = -s if cfg.score == "cos" else s
    n = len(s)
    if cfg.removal == "kde":
        thr = kde_threshold(low_is_wm, cfg.kde_grid)
        mask = low_is_wm < thr
        return mask, (-thr if cfg.score == "cos" else thr)
    k = cfg.remove_count if cfg.removal == "count" else int(round(cfg.remove_fraction * n))
    order = np.argsort(low_is_wm, kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[: min(k, n)]] = True
    return mask, None


def _binary(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    label = np.asarray(label, bool)
    if label.all() or not label.any():
        return None  # one class only: the areas are undefined (sklearn raises); reported as NaN
    return np.asarray(score, dtype=np.float64), label


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve: sklearn `roc_auc_score` (official `visualization.py`); ties count half."""
    from sklearn.metrics import roc_auc_score

    xy = _binary(score, label)
    return float("nan") if xy is None else float(roc_auc_score(xy[1], xy[0]))


def auprc(score: np.ndarray, label: np.ndarray) -> float:
    """The paper's AUPRC: `auc(recall, precision)` on sklearn's `precision_recall_curve` (trapezoidal area,
    official `visualization.py`). Tied scores form one curve point, so the value does not depend on input order.
    Not sklearn's `average_precision_score` (step-wise, no interpolation): see `average_precision`."""
    from sklearn.metrics import auc, precision_recall_curve

    xy = _binary(score, label)
    if xy is None:
        return float("nan")
    precision, recall, _ = precision_recall_curve(xy[1], xy[0])
    return float(auc(recall, precision))


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    """sklearn `average_precision_score` — a common alternative summary of the PR curve, not the paper's."""
    from sklearn.metrics import average_precision_score

    xy = _binary(score, label)
    return float("nan") if xy is None else float(average_precision_score(xy[1], xy[0]))


def detection_report(scores: dict[str, np.ndarray], counts: np.ndarray, deleted: np.ndarray) -> dict[str, Any]:
    """AUROC/AUPRC per score, TPR/FPR of the deletion; `counts` = trigger words per text (label = counts > 0).

    TPR is also split by trigger count: with m = 4 a single trigger moves only w = 0.25 of the embedding to the
    target, so its tightness signal is much weaker than for k ≥ 2 (w ≥ 0.5)."""
    counts = np.asarray(counts)
    label = counts > 0
    out: dict[str, Any] = {}
    for name in ("cos", "l2", "pca"):
        wl = watermark_likeness(scores, name)
        out[f"auroc_{name}"] = auroc(wl, label)
        out[f"auprc_{name}"] = auprc(wl, label)
        out[f"ap_{name}"] = average_precision(wl, label)
    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    deleted = np.asarray(deleted, bool)
    tn, fp, _fn, _tp = (int(x) for x in confusion_matrix(label, deleted, labels=[False, True]).ravel())
    pos = int(label.sum())
    # TPR = recall of the deletion (official subset_remove.py: deleted ∩ triggered / triggered); NaN if undefined.
    out["tpr"] = float(recall_score(label, deleted, zero_division=np.nan)) if pos else float("nan")
    out["fpr"] = fp / (fp + tn) if fp + tn else float("nan")
    out["n_deleted"] = int(deleted.sum())
    out["n_triggered"] = pos
    out["n"] = int(len(label))
    out["precision"] = float(precision_score(label, deleted, zero_division=np.nan))
    k1, k2 = counts == 1, counts >= 2
    out["tpr_k1"] = float(deleted[k1].mean()) if k1.any() else float("nan")
    out["tpr_k2plus"] = float(deleted[k2].mean()) if k2.any() else float("nan")
    out["n_k1"], out["n_k2plus"] = int(k1.sum()), int(k2.sum())
    return out


def spa_records(counts: np.ndarray, deleted: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Rate records of one SPA deletion (TPR over triggered texts, FPR over clean ones, TPR by trigger count,
    precision over deleted ones) and its per-text 0/1 flags with the texts' digest, for paired tests between two
    deletions of the same texts."""
    counts, deleted = np.asarray(counts), np.asarray(deleted, bool)
    label = counts > 0

    def share(mask: np.ndarray, of: np.ndarray) -> dict[str, Any]:
        return rate_record(int((mask & of).sum()), int(of.sum()))

    return {"intervals": {"tpr": share(deleted, label), "fpr": share(deleted, ~label),
                          "tpr_k1": share(deleted, counts == 1), "tpr_k2plus": share(deleted, counts >= 2),
                          "precision": share(label, deleted)},
            "flags": {"trigger_counts": [int(c) for c in counts], "deleted": bits(deleted)},
            "texts_sha": digest(texts)}
