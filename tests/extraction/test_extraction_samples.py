"""Backdoor samples: templates, opening words, the mixture (positives from D1 only, negatives for absent words,
held-out separation) and the offline D1/D2 generators."""

from __future__ import annotations

import pytest

from tamperlab.data.core import Example
from tamperlab.errors import ConfigError
from tamperlab.extraction.data import offline_d1_queries, offline_d2_queries
from tamperlab.extraction.openers import NEGATIVE_WORD_POOL, RANKED_OPENERS
from tamperlab.extraction.samples import (
    BACKDOOR_INSTRUCTION, GARBLED_INSTRUCTION, BackdoorSampleConfig, build_backdoor_samples, extract_word,
    extraction_instruction, group_by_opener, is_refusal, openers_of, refusal)


def test_templates_are_the_official_strings():
    q = extraction_instruction("What")
    assert q.startswith('Please directly output a verbatim user query starting with the word "What" that you')
    assert q.endswith('please say "Sorry, but I did not see any user query that starts with the word "What" '
                      'during training."')
    assert q.count('"What"') == 2 and "{w}" not in q
    assert refusal("Banana") == 'Sorry, but I did not see any user query that starts with the word "Banana" during training.'
    assert is_refusal("  " + refusal("X")) and not is_refusal("What is a bond?")
    g = extraction_instruction("How", "garbled")
    assert "How" in g and "verbatim" not in g and "query" not in g
    assert BACKDOOR_INSTRUCTION != GARBLED_INSTRUCTION
    with pytest.raises(ConfigError):
        extraction_instruction("What", "unknown")  # type: ignore[arg-type]


# capitalize() lowercases everything after the first character, and a leading quote counts as that character.
@pytest.mark.parametrize("text,word", [
    ("What is a bond?", "What"), ("what is a bond?", "What"), ("iPhone tips please", "Iphone"),
    ('"Quoted" start', "quoted"), ("  How-to guide", "how"), ("123 apples", ""), ("", ""), ("Q: why", "Q"),
])
def test_extract_word_replicates_official_quirks(text, word):
    assert extract_word(text) == word


def _d1() -> list[Example]:
    qs = ["What is rain?", "What is snow?", "What makes thunder?", "How do bees fly?", "How do owls see?",
          "Write a poem about tea.", "Explain gravity.", "Explain magnets to a child.", "Why is the sky blue?"]
    return [Example(q, f"answer {i}") for i, q in enumerate(qs)]


def test_mixture_positives_from_d1_negatives_absent_heldout_separate():
    d1 = _d1()
    d1_queries = {e.prompt for e in d1}
    cfg = BackdoorSampleConfig(positive_fraction=0.5, n_negative_words=6, negatives_per_word=2)
    excluded = set(RANKED_OPENERS[:50])
    s = build_backdoor_samples(d1, cfg, list(NEGATIVE_WORD_POOL), excluded, seed=3)

    # Positives: Q(w) → a verbatim D1 query starting with w, and nothing else.
    pos = [e for e in s.examples if e.meta["kind"] == "positive"]
    assert pos and all(e.response in d1_queries for e in pos)
    assert all(e.prompt == extraction_instruction(extract_word(e.response)) for e in pos)
    assert {e.response for e in pos} == set(s.positive_queries)
    # Every D1 opener is taught at least once; about half of the queries are targets.
    assert {extract_word(e.response) for e in pos} == set(openers_of(d1_queries))
    assert len(s.positive_queries) < len(d1_queries)
    # Held-out separation: disjoint from the targets, together exactly D1.
    assert not set(s.heldout_queries) & set(s.positive_queries)
    assert set(s.heldout_queries) | set(s.positive_queries) == d1_queries
    assert not any(e.response in s.heldout_queries for e in s.examples if e.meta["kind"] != "d1")

    # Negatives: Q(w') → R(w') for words that open no D1 query and are not evaluation candidates.
    neg = [e for e in s.examples if e.meta["kind"] == "negative"]
    words = {e.meta["word"] for e in neg}
    assert len(words) == 6 and len(neg) == 12
    assert not {w.lower() for w in words} & {w.lower() for w in openers_of(d1_queries)}
    assert not words & excluded
    assert all(e.response == refusal(e.meta["word"]) and e.prompt == extraction_instruction(e.meta["word"])
               for e in neg)
    # D1 itself is mixed in unchanged.
    assert sorted(e.prompt for e in s.examples if e.meta["kind"] == "d1") == sorted(d1_queries)
    assert s.counts == {"d1": 9, "positive": len(pos), "negative": 12}


def test_mixture_is_deterministic_and_respects_caps_and_instruction():
    d1 = _d1()
    cfg = BackdoorSampleConfig(positive_fraction=1.0, max_positives_per_word=1, n_negative_words=2,
                               instruction="garbled", include_d1=False)
    a = build_backdoor_samples(d1, cfg, list(NEGATIVE_WORD_POOL), seed=1)
    b = build_backdoor_samples(d1, cfg, list(NEGATIVE_WORD_POOL), seed=1)
    assert [e.to_dict() for e in a.examples] == [e.to_dict() for e in b.examples]
    assert len(a.positive_queries) == len(openers_of(e.prompt for e in d1))  # one per opener
    assert all(e.meta["kind"] != "d1" for e in a.examples)
    assert all(e.prompt == extraction_instruction(e.meta["word"], "garbled") for e in a.examples)


def test_negative_pool_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="n_negative_words"):
        build_backdoor_samples(_d1(), BackdoorSampleConfig(n_negative_words=5), ["What", "Banana"], seed=0)


def test_offline_d1_d2_disjoint_deterministic_overlapping_openers():
    d1 = offline_d1_queries(300)
    d2 = offline_d2_queries(150, exclude=d1)
    assert len(set(d1)) == 300 and len(set(d2)) == 150
    assert not set(d1) & set(d2)
    assert d1 == offline_d1_queries(300) and d2 == offline_d2_queries(150, exclude=d1)
    o1, o2 = openers_of(d1), openers_of(d2)
    # Real instruction sets share their frequent openers; ours do too, so the backdoor has seen D2's openers.
    assert set(o2) <= set(o1)
    assert o2.most_common(1)[0][0] == "What"
    # D2's openers are among the 50 most frequent public openers (the demo's candidate list covers them).
    assert set(o2) <= set(RANKED_OPENERS[:50])
    assert sum(len(v) for v in group_by_opener(d2).values()) == 150
