"""SPA on a constructed case: tightness scores, KDE threshold, detection metrics; SAW's construction."""

from __future__ import annotations

import numpy as np
import pytest
from eaas_helpers import TRIGGERS

from tamperlab.eaas import spa as S
from tamperlab.eaas.defense import SAW, SAWConfig
from tamperlab.eaas.watermarks import EmbMarker, EmbMarkerConfig
from tamperlab.errors import ConfigError


def test_auroc_and_auprc_known_values():
    label = np.array([1, 1, 0, 0, 0], bool)
    assert S.auroc(np.array([5, 4, 3, 2, 1.0]), label) == 1.0
    assert S.auroc(np.array([1, 2, 3, 4, 5.0]), label) == 0.0
    assert S.auroc(np.array([5, 3, 4, 2, 1.0]), label) == pytest.approx(5 / 6)
    # ranking pos, neg, pos. Paper's AUPRC (trapezoid over the PR points (R, P) = (0, 1), (.5, 1), (.5, .5),
    # (1, 2/3)): 0.5·1 + 0.5·(0.5 + 2/3)/2 = 0.791667. Average precision: (1/1 + 2/3)/2 = 0.8333.
    sc, lab = np.array([3, 2, 1.0]), np.array([1, 0, 1], bool)
    assert S.auprc(sc, lab) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    assert S.average_precision(sc, lab) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(S.auroc(sc, np.ones(3, bool))) and np.isnan(S.auprc(sc, np.zeros(3, bool)))


def test_metrics_with_tied_scores_equal_sklearn_and_ignore_input_order():
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    # Ties across classes: AUROC counts a tied pair as half; AP and the PR curve treat a tie as one threshold.
    score = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.1])
    label = np.array([1, 0, 0, 1, 0, 1, 0, 0], bool)
    # hand: pairs (pos, neg) = 3·5 = 15; pos 0.9 beats 3 negs (0.5, 0.1, 0.1) ties 2 → 4; pos 0.5 beats 2, ties 1
    # → 2.5; pos 0.1 ties 2 → 1. AUROC = 7.5/15 = 0.5
    assert S.auroc(score, label) == pytest.approx(0.5) == roc_auc_score(label, score)
    p, r, _ = precision_recall_curve(label, score)
    assert S.auprc(score, label) == pytest.approx(auc(r, p))
    assert S.average_precision(score, label) == pytest.approx(average_precision_score(label, score))
    # hand AP: thresholds 0.9 (P 1/3, R 1/3), 0.5 (P 2/5, R 2/3), 0.1 (P 3/8, R 1) → (1/3)(1/3 + 2/5 + 3/8)
    assert S.average_precision(score, label) == pytest.approx((1 / 3 + 2 / 5 + 3 / 8) / 3)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(score))
        assert S.auprc(score[perm], label[perm]) == pytest.approx(S.auprc(score, label))
        assert S.average_precision(score[perm], label[perm]) == pytest.approx(S.average_precision(score, label))


def test_detection_report_rates_hand_computed():
    scores = {"cos": np.array([0.9, 0.8, 0.2, 0.1]), "l2": np.array([0.1, 0.2, 0.8, 0.9]),
              "pca": np.array([0.1, 0.2, 0.8, 0.9])}
    counts = np.array([2, 1, 0, 0])
    deleted = np.array([True, False, True, False])
    rep = S.detection_report(scores, counts, deleted)
    assert (rep["tpr"], rep["fpr"], rep["precision"]) == (0.5, 0.5, 0.5)
    assert (rep["tpr_k1"], rep["tpr_k2plus"], rep["n_deleted"], rep["n_triggered"]) == (0.0, 1.0, 2, 2)
    assert rep["auroc_cos"] == rep["auroc_pca"] == rep["auprc_l2"] == 1.0
    none = S.detection_report(scores, counts, np.zeros(4, bool))
    assert none["tpr"] == 0.0 and np.isnan(none["precision"])


def test_pca_score_matches_sklearn_definition():
    rng = np.random.default_rng(0)
    o, p = rng.standard_normal((1, 16)), rng.standard_normal((1, 10, 16))
    sc = S.tightness_scores(o, p, n_components=5)
    x = np.vstack([o[0] / np.linalg.norm(o[0]), p[0] / np.linalg.norm(p[0], axis=1, keepdims=True)])
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]  # covariance eigenvalues, ddof=1
    assert sc["pca"][0] == pytest.approx(ev[:5].sum())
    # identical perturbations: nothing moves
    same = S.tightness_scores(o, np.repeat(o[:, None, :], 10, axis=1))
    assert same["cos"][0] == pytest.approx(1) and same["l2"][0] == pytest.approx(0, abs=1e-9)
    assert same["pca"][0] == pytest.approx(0, abs=1e-12)


def test_kde_threshold_splits_a_bimodal_score_distribution():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.1, 0.02, 50), rng.normal(0.6, 0.05, 450)
    thr = S.kde_threshold(np.concatenate([low, high]))
    assert low.max() < thr < high.min()


def test_spa_identifies_watermarked_samples_in_a_constructed_case(bow_embedder, corpus):
    """Bag-of-words provider + EmbMarker (m=2). Appending unrelated words moves clean embeddings freely, while
    watermarked ones stay anchored to the target: SPA must separate them, TPR high and FPR low."""
    wm = EmbMarker(EmbMarkerConfig(triggers=TRIGGERS, n_triggers=8, max_trigger_num=2))
    wm.setup(corpus, bow_embedder.encode)
    rng = np.random.default_rng(1)
    words = [f"q{a}{b}" for a in "abcdefghij" for b in "klmnopqrst"]
    texts = []
    for i in range(200):
        ws = [str(w) for w in rng.choice(words, 6)]
        if i % 4 == 0:  # 25% watermarked with k = 2 → w = 1... use k=1 too for realism
            ws += list(rng.choice(TRIGGERS, 1 + (i % 8 == 0), replace=False))
        texts.append(" ".join(ws))
    pool = [" ".join(str(w) for w in rng.choice([f"z{a}{b}" for a in "abcdefgh" for b in "uvwxy"], 6))
            for _ in range(100)]
    service = lambda t: wm.apply(t, bow_embedder.encode(t))  # noqa: E731
    idx = S.search_suffixes(texts, pool, bow_embedder.encode, candidates=12, n_suffixes=8, progress=False)
    assert idx.shape == (200, 8) and len({tuple(r) for r in idx}) > 1
    e = service(texts)
    e_p = service(S.perturbed_texts(texts, pool, idx)).reshape(200, 8, -1)
    scores = S.tightness_scores(e, e_p)
    counts = wm.trigger_counts(texts)
    deleted, thr = S.select_for_deletion(scores, S.SPAConfig(pool_size=100, candidates=12, n_suffixes=8))
    rep = S.detection_report(scores, counts, deleted)
    assert rep["n_k2plus"] > 0 and rep["tpr_k2plus"] == 1.0
    assert rep["auroc_pca"] > 0.95 and rep["auroc_cos"] > 0.9
    assert rep["tpr"] > 0.9 and rep["fpr"] < 0.05
    # a fixed-fraction removal deletes exactly that many
    frac, _ = S.select_for_deletion(scores, S.SPAConfig(pool_size=100, candidates=12, n_suffixes=8,
                                                        removal="fraction", remove_fraction=0.1))
    assert frac.sum() == 20


def test_suffix_search_picks_least_similar_items(bow_embedder):
    texts = ["alpha beta gamma"]
    pool = ["alpha beta", "alpha", "delta epsilon", "zeta eta theta", "beta gamma"]
    idx = S.search_suffixes(texts, pool, bow_embedder.encode, candidates=3, n_suffixes=2, progress=False)
    assert not ({0, 1, 4} & set(idx[0].tolist()))  # overlapping items are never the least similar


def test_spa_config_is_validated():
    with pytest.raises(ConfigError, match="n_suffixes"):
        S.SPAConfig(candidates=5, n_suffixes=10)
    with pytest.raises(ConfigError, match="remove_count"):
        S.SPAConfig(removal="count")


def test_saw_is_semantic_aware_and_verifiable(bow_embedder, corpus):
    """SAW: exact cos(e_w, e) = strength on triggered texts only; directions differ between distant embeddings
    (no shared anchor) and agree for near-duplicates; the API verifies, the clean model does not; SPA's
    tightness signal is much weaker than against EmbMarker on the same texts."""
    saw = SAW(SAWConfig(triggers=TRIGGERS, n_triggers=8))
    saw.setup(corpus, bow_embedder.encode)
    texts = [f"word{chr(97 + i % 26)} plain text {chr(97 + i // 26)}" + (" apple" if i % 2 else "")
             for i in range(60)]
    clean = bow_embedder.encode(texts)
    out = saw.apply(texts, clean)
    cos = (out * clean).sum(1)
    trig = np.arange(60) % 2 == 1
    assert np.allclose(cos[~trig], 1.0, atol=1e-6)
    assert np.allclose(cos[trig], 0.96, atol=1e-5)
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 32))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    near = e + 0.01 * rng.standard_normal(e.shape)
    u, u_near = saw.direction(e), saw.direction(near)
    assert (u * u_near).sum(1).mean() > 0.9
    assert np.abs(u @ u.T)[np.triu_indices(50, 1)].mean() < 0.3
    api = lambda t: saw.apply(t, bow_embedder.encode(t))  # noqa: E731
    assert saw.verify(api)["detected"]
    assert not saw.verify(bow_embedder.encode)["detected"]


def test_spa_signal_is_weaker_against_saw_than_embmarker(bow_embedder, corpus):
    rng = np.random.default_rng(2)
    words = [f"q{a}{b}" for a in "abcdefghij" for b in "klmnopqrst"]
    texts = [" ".join([str(w) for w in rng.choice(words, 6)] + (["apple"] if i % 3 == 0 else []))
             for i in range(150)]
    pool = [" ".join(str(w) for w in rng.choice([f"z{a}{b}" for a in "abcdefgh" for b in "uvwxy"], 6))
            for _ in range(60)]
    idx = S.search_suffixes(texts, pool, bow_embedder.encode, candidates=10, n_suffixes=6, progress=False)
    label = np.arange(150) % 3 == 0
    aurocs = {}
    for name, wm in (("embmarker", EmbMarker(EmbMarkerConfig(triggers=TRIGGERS, n_triggers=8, max_trigger_num=1))),
                     ("saw", SAW(SAWConfig(triggers=TRIGGERS, n_triggers=8, strength_cos=0.7)))):
        wm.setup(corpus, bow_embedder.encode)
        service = lambda t, _w=wm: _w.apply(t, bow_embedder.encode(t))  # noqa: E731
        sc = S.tightness_scores(service(texts), service(S.perturbed_texts(texts, pool, idx)).reshape(150, 6, -1))
        aurocs[name] = S.auroc(-sc["pca"], label)
    assert aurocs["embmarker"] > 0.95
    assert aurocs["saw"] < aurocs["embmarker"] - 0.2
