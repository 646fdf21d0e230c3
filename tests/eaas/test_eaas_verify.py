"""Verification statistics on synthetic embeddings with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tamperlab.eaas.verify import score_stats, verification_stats
from tamperlab.eaas.watermarks import EmbMarker, EmbMarkerConfig


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_exact_values_on_constructed_embeddings():
    d = 8
    t = np.eye(d)[0]
    # D_b: cos to t exactly 0.8; D_n: cos exactly 0.0.
    eb = np.array([[0.8, 0.6] + [0] * (d - 2)] * 20)
    en = np.array([[0.0, 1.0] + [0] * (d - 2)] * 20)
    st = verification_stats(eb, en, t)
    assert st["delta_cos"] == pytest.approx(0.8)
    # squared L2 of unit vectors: ‖e − t‖² = 2 − 2cos  ⇒ Δl2 = −2Δcos
    assert st["delta_l2"] == pytest.approx(-1.6)
    # fully separated 20 vs 20: the exact two-sample KS p is 2 / C(40, 20)
    assert st["p_value"] == pytest.approx(2 / math.comb(40, 20), rel=1e-6)


def test_same_distribution_gives_large_p_and_tiny_delta():
    rng = np.random.default_rng(0)
    t = _unit(rng.standard_normal(64))
    st = verification_stats(_unit(rng.standard_normal((200, 64))), _unit(rng.standard_normal((200, 64))), t)
    assert st["p_value"] > 0.05
    assert abs(st["delta_cos"]) < 0.05


def test_partial_shift_is_detected_with_right_signs():
    rng = np.random.default_rng(1)
    t = _unit(rng.standard_normal(64))
    en = _unit(rng.standard_normal((20, 64)))
    eb = _unit(0.3 * t + _unit(rng.standard_normal((20, 64))))
    st = verification_stats(eb, en, t)
    assert st["delta_cos"] > 0.2 and st["delta_l2"] < 0 and st["p_value"] < 1e-6


def test_inputs_are_renormalised_and_shapes_checked():
    t = np.array([1.0, 0.0])
    a = verification_stats(np.array([[3.0, 0.0]] * 3), np.array([[0.0, 5.0]] * 3), t)
    assert a["delta_cos"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        verification_stats(np.zeros((3, 2)), np.zeros((3, 3)), t)


def test_score_stats_on_bit_accuracies():
    st = score_stats(np.full(20, 0.95) + np.linspace(0, 0.04, 20), np.full(20, 0.5) + np.linspace(0, 0.1, 20))
    assert st["delta"] > 0.4 and st["p_value"] < 1e-9


def test_embmarker_verify_detects_a_perfect_copy_not_the_clean_model(bow_embedder, corpus):
    from tamperlab.eaas.watermarks import select_triggers

    triggers = select_triggers(20, [3e-4, 6e-4], seed=5)  # realistic: 20 words, so D_b is not 8 words reshuffled
    wm = EmbMarker(EmbMarkerConfig(triggers=triggers))
    wm.setup(corpus, bow_embedder.encode)
    service = lambda texts: wm.apply(texts, bow_embedder.encode(texts))  # noqa: E731
    hit = wm.verify(service, size=20)
    assert hit["detected"] and hit["delta_cos"] > 0.5 and hit["p_value"] < 1e-10
    miss = wm.verify(bow_embedder.encode, size=20)
    assert not miss["detected"] and miss["p_value"] > 0.01
    backdoor, benign = wm.verification_sets(20, seed=0)
    assert all(len(s.split()) == 4 and set(s.split()) <= set(triggers) for s in backdoor[0])
    assert all(not (set(s.split()) & set(triggers)) for s in benign)
    assert len(set(backdoor[0])) == 20 and len(set(benign)) == 20
