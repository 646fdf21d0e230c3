"""The paper's metrics against hand-computed values on small fixtures (word-level tokens for readability)."""

from __future__ import annotations

import pytest

from tamperlab.extraction.metrics import (
    bleu_scores, evaluate_words, identification_metrics, opener_score, query_recall, summary_row)
from tamperlab.extraction.samples import refusal
from tamperlab.extraction.trie import QueryIndex


class WordCodec:
    """Whitespace tokens + an end marker: the metrics only need a text → sequence function."""

    def __call__(self, text: str) -> tuple[str, ...]:
        return tuple(text.strip().split()) + ("<eos>",)


D2 = ["What is a bond ?", "What is a stock ?", "How do I save money ?", "Explain inflation simply ."]


def test_opener_score_official_formula():
    s = [refusal("What")] * 3 + ["What is a bond ?"] * 4 + ["What is a stock ?"] * 3
    sc = opener_score("What", s)
    # 0.6·(1 − 3/10) + 0.4·(4/10) = 0.42 + 0.16
    assert sc.score == pytest.approx(0.58) and not sc.kept
    assert (sc.refusals, sc.answers, sc.max_repeat) == (3, 7, 4)
    sc2 = opener_score("What", ["What is a bond ?"] * 2 + ["What ?"] * 8)
    assert sc2.score == pytest.approx(0.6 + 0.4 * 0.8) and sc2.kept
    assert opener_score("X", [refusal("X")] * 5).score == 0.0
    # The strict rule treats off-target text as a non-answer; the official rule does not.
    off = ["Hello there"] * 10
    assert opener_score("What", off).kept
    assert not opener_score("What", off, answer_rule="starts_with_word").kept
    assert opener_score("What", []).n == 0


def test_identification_metrics_hand_computed():
    m = identification_metrics(["What", "How", "Why", "Who", "Explain"], predicted=["What", "Why", "Who"],
                               truth=["What", "How", "Explain", "NotInS"])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 2, 0)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(1 / 5) and m["n_real_in_candidates"] == 3


def test_query_recall_and_coverage_hand_computed():
    codec = WordCodec()
    preds = {"What": ["What is a bond ?", "What is a car ?", refusal("What")],
             "How": ["How do I spend money ?"], "Explain": ["Why ?"]}
    r = query_recall(preds, D2, codec, thresholds=(1.0, 0.75, 0.5))
    # bond: exact (1.0). stock: best "What is a car ?" → lcp 3 of 6 tokens each → 0.5, coverage 3/6.
    # save money: "How do I spend money ?" lcp 3 (How do I), |7|+|7| → 6/14; coverage 3/7. Explain: nothing.
    assert r["n_exact"] == 1 and r["exact_queries"] == ["What is a bond ?"]
    assert r["recall@1"] == pytest.approx(1 / 4)
    assert r["recall@0.75"] == pytest.approx(1 / 4)
    assert r["recall@0.5"] == pytest.approx(2 / 4)
    assert r["coverage"] == pytest.approx((1 + 3 / 6 + 3 / 7 + 0) / 4)


def test_bleu_exact_beats_partial_beats_unrelated():
    refs = ["What is the difference between a bond and a stock ?"]
    exact, partial, unrelated = bleu_scores(
        [refs[0], "What is the difference between a car and a bike ?", "Purple monkeys dance quietly"], refs)
    assert exact == pytest.approx(1.0)
    assert 0.1 < partial < 1.0 and unrelated < 0.05
    assert bleu_scores(["x"], []) == [0.0]


def test_evaluate_words_end_to_end_fixture():
    codec = WordCodec()
    samples = {
        # real opener, answers exactly one query in 3 of 4 samples
        "What": ["What is a bond ?"] * 3 + [refusal("What")],
        # real opener, refuses everything → dropped
        "How": [refusal("How")] * 4,
        # fake opener answered anyway → kept, a false positive that scores 0
        "Who": ["Who am I ?"] * 4,
        # fake opener refused → correctly dropped
        "Write": [refusal("Write")] * 4,
        # real opener outside S: sampled for the known-opener setting only
        "Explain": ["Explain inflation simply ."] * 4,
    }
    m = evaluate_words(samples, ["What", "How", "Who", "Write"], D2, codec, thresholds=(1.0, 0.5))
    ident = m["identification"]
    assert [w for w, s in m["opener_scores"].items() if s["kept"]] == ["What", "Who"]
    assert ident["precision"] == pytest.approx(0.5) and ident["recall"] == pytest.approx(0.5)
    # Pipeline: kept words What (max 1, mean 0.75) and Who (fake → 0) → averages 0.5 and 0.375.
    assert m["pipeline"]["max_match"] == pytest.approx(0.5)
    assert m["pipeline"]["mean_match"] == pytest.approx(0.375)
    assert m["pipeline"]["recall@1"] == pytest.approx(1 / 4)
    # Known openers (What, How, Explain): max (1 + 0 + 1)/3, mean (0.75 + 0 + 1)/3; two queries verbatim.
    assert m["known_openers"]["max_match"] == pytest.approx(2 / 3)
    assert m["known_openers"]["mean_match"] == pytest.approx(1.75 / 3)
    assert m["known_openers"]["recall@1"] == pytest.approx(2 / 4)
    # Recall ceiling: the D2 queries whose opener is in S (What ×2, How) out of 4.
    assert m["recall_ceiling"] == pytest.approx(3 / 4)
    row = summary_row(m)
    assert row["opener_precision"] == pytest.approx(0.5) and row["pipeline_recall@1"] == pytest.approx(0.25)


def test_query_index_groups_by_opener_and_scores_zero_for_unknown_words():
    idx = QueryIndex(D2, WordCodec())
    assert idx.words == {"What", "How", "Explain"}
    assert idx.match("What", "What is a stock ?") == 1.0
    assert idx.match("Who", "Who is it ?") == 0.0
