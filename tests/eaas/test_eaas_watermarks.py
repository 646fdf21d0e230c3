"""EmbMarker / WARDEN formulas on fixtures, trigger selection, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from eaas_helpers import TRIGGERS

from tamperlab.eaas.watermarks import (EmbMarker, EmbMarkerConfig, WARDEN, WARDENConfig, build_watermark,
                                       load_watermark, select_triggers, words_of)
from tamperlab.errors import ConfigError
from tamperlab.registry import WATERMARKS


def _embmarker(bow_embedder, corpus, **kw):
    wm = EmbMarker(EmbMarkerConfig(triggers=TRIGGERS[:4], **kw))
    wm.setup(corpus, bow_embedder.encode)
    return wm


def test_registry_has_the_three_watermarks():
    assert {"embmarker", "warden", "saw"} <= set(WATERMARKS.names())
    with pytest.raises(ConfigError, match="did you mean 'embmarker'"):
        WATERMARKS.get("embmarkr")


def test_target_is_clean_embedding_of_first_text(bow_embedder, corpus):
    wm = _embmarker(bow_embedder, corpus)
    assert np.allclose(wm.targets[0], bow_embedder.encode([corpus[0]])[0], atol=1e-6)


@pytest.mark.parametrize("text,k", [
    ("nothing to see here", 0),
    ("an apple a day", 1),
    ("apple apple apple keeps", 1),            # distinct triggers: repeats count once
    ("apple and river", 2),
    ("apple river stone", 3),
    ("Apple, RIVER; stone cloud!", 4),          # case and punctuation do not hide a trigger
])
def test_weight_by_distinct_trigger_count(bow_embedder, corpus, text, k):
    wm = _embmarker(bow_embedder, corpus)
    assert wm.trigger_counts([text])[0] == k
    clean = bow_embedder.encode([text])
    out = wm.apply([text], clean)[0]
    w = min(k / 4, 1.0)
    expect = w * wm.targets[0] + (1 - w) * clean[0]
    expect /= np.linalg.norm(expect)
    assert np.allclose(out, expect, atol=1e-6)
    assert np.isclose(np.linalg.norm(out), 1.0, atol=1e-6)


def test_saturated_text_is_exactly_the_target(bow_embedder, corpus):
    wm = _embmarker(bow_embedder, corpus, max_trigger_num=2)
    out = wm.apply(["apple river"], bow_embedder.encode(["apple river"]))[0]
    assert np.allclose(out, wm.targets[0], atol=1e-6)


def test_words_of_is_lowercase_alpha():
    assert words_of("It's a Tiger-lemon 42!") == ["it", "s", "a", "tiger", "lemon"]


def test_warden_weights_fill_to_one_in_descending_order(bow_embedder, corpus):
    wm = WARDEN(WARDENConfig(triggers=TRIGGERS, n_targets=2, max_trigger_num=2))
    wm.setup(corpus, bow_embedder.encode)
    g0, g1 = wm.groups
    assert sorted(g0 + g1) == sorted(TRIGGERS) and len(g0) == len(g1) == 4
    # 2 triggers of target 0 (w0 = 1) and 1 of target 1 (w1 = .5): total clipped to 1, target 0 first.
    w = wm.weights([f"{g0[0]} {g0[1]} {g1[0]}"])[0]
    assert np.allclose(w, [1.0, 0.0])
    w = wm.weights([f"{g0[0]} {g1[0]}"])[0]
    assert np.allclose(w, [0.5, 0.5])
    w = wm.weights([f"{g0[0]} {g1[0]} {g1[1]}"])[0]
    assert np.allclose(w, [0.0, 1.0])
    # Partial orthogonalisation: t1 = normalise(t1 - 0.5 (t1·t0) t0).
    raw = bow_embedder.encode(corpus[:2]).astype(np.float64)
    t1 = raw[1] - 0.5 * (raw[1] @ raw[0]) * raw[0]
    assert np.allclose(wm.targets[1], t1 / np.linalg.norm(t1), atol=1e-5)


def test_warden_with_one_target_equals_embmarker(bow_embedder, corpus):
    a = _embmarker(bow_embedder, corpus)
    b = WARDEN(WARDENConfig(triggers=TRIGGERS[:4], n_targets=1))
    b.setup(corpus, bow_embedder.encode)
    texts = ["apple", "apple river stone", "nothing"]
    clean = bow_embedder.encode(texts)
    assert np.allclose(a.apply(texts, clean), b.apply(texts, clean), atol=1e-6)


def test_wordfreq_band_selection_is_deterministic_and_in_band():
    import wordfreq

    t1 = select_triggers(20, [3e-4, 6e-4], seed=2022)
    assert t1 == select_triggers(20, [3e-4, 6e-4], seed=2022)
    assert t1 != select_triggers(20, [3e-4, 6e-4], seed=1)
    assert all(3e-4 <= wordfreq.word_frequency(w, "en") < 6e-4 for w in t1)
    with pytest.raises(ConfigError, match="candidate trigger words"):
        select_triggers(20, [0.5, 0.6], seed=0)


def test_corpus_band_selection_uses_document_frequency():
    corpus = ["alpha beta"] * 5 + ["gamma beta"] * 5 + [f"word{i}" for i in range(90)]
    trig = select_triggers(1, [0.04, 0.06], seed=0, source="corpus", corpus=corpus)
    assert trig in (["alpha"], ["gamma"])  # df 0.05; beta has 0.10


def test_strict_config_and_roundtrip(tmp_path, bow_embedder, corpus):
    with pytest.raises(ConfigError, match="max_trigger_num"):
        build_watermark("embmarker", {"max_triger_num": 3})
    wm = _embmarker(bow_embedder, corpus)
    wm.save(tmp_path)
    back = load_watermark(tmp_path)
    assert back.triggers == wm.triggers and np.allclose(back.targets, wm.targets)
