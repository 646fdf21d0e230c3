"""The paper's metrics (official evaluation code's definitions) against hand-computed values on small fixtures
(word-level tokens for readability), including the edge cases where tamperlab's earlier conventions differed:
short queries (nltk BLEU), cross-opener matches (one trie), queries without an opener (denominators), raw vs
stripped samples (identification)."""

from __future__ import annotations

import pytest

from tamperlab.extraction.metrics import (
    bleu_scores, evaluate_words, identification_metrics, opener_score, query_recall, sacrebleu_scores,
    sample_match_ratios, sample_match_ratios_per_opener, summary_row)
from tamperlab.extraction.samples import extract_word, refusal
from tamperlab.extraction.trie import QueryIndex, dice, lcp, lcp_matrix


class WordCodec:
    """Whitespace tokens + an end marker: the metrics only need a text → sequence function."""

    def __call__(self, text: str) -> tuple[str, ...]:
        return tuple(text.split()) + ("<eos>",)


D2 = ["What is a bond ?", "What is a stock ?", "How do I save money ?", "Explain inflation simply .",
      "In 2020 what was inflation ?", "I need a budget plan .", "401k or IRA ?"]
# Openers: What ×2, How, Explain, In, I, and none for "401k ..." (extract_word keeps leading letters only).


def test_fixture_openers():
    assert [extract_word(q) for q in D2] == ["What", "What", "How", "Explain", "In", "I", ""]


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


def test_opener_score_compares_raw_strings_as_the_official_code():
    # Official: `response.startswith("Sorry, but")` on the raw string, so " Sorry, but ..." is an answer.
    s = [" " + refusal("What")] * 5 + ["What is a bond ?"] * 5
    raw = opener_score("What", s)
    # raw: 0 refusals, max identical answer 5/10 → 0.6 + 0.2 = 0.8, kept
    assert (raw.refusals, raw.max_repeat, raw.score, raw.kept) == (0, 5, pytest.approx(0.8), True)
    stripped = opener_score("What", s, strip=True)  # tamperlab's own variant: 0.6·0.5 + 0.4·0.5 = 0.5
    assert (stripped.refusals, stripped.score, stripped.kept) == (5, pytest.approx(0.5), False)
    # identical = identical raw strings: "a" and "a " are two different answers officially
    assert opener_score("a", ["a"] * 5 + ["a "] * 5).max_repeat == 5
    assert opener_score("a", ["a"] * 5 + ["a "] * 5, strip=True).max_repeat == 10


def test_identification_metrics_hand_computed():
    m = identification_metrics(["What", "How", "Why", "Who", "Explain"], predicted=["What", "Why", "Who"],
                               truth=["What", "How", "Explain", "NotInS"])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 2, 2, 0)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(1 / 5)
    assert m["n_real_in_candidates"] == 3
    # nothing predicted: precision undefined → 0 (sklearn zero_division=0), recall 0
    z = identification_metrics(["A", "B"], [], ["A"])
    assert (z["precision"], z["recall"], z["tn"], z["fn"]) == (0.0, 0.0, 1, 1)


def test_match_ratio_one_trie_over_all_queries_cross_opener():
    idx = QueryIndex(D2, WordCodec())
    assert idx.words == {"What", "How", "Explain", "In", "I"}
    # w = "I": a sample that reproduces the real query "In 2020 ..." starts with "I" (raw startswith), so the
    # official scoring matches it against every query: 1.0. Per opener it only sees "I need ...": lcp 0 → 0.
    s = ["In 2020 what was inflation ?"]
    assert sample_match_ratios("I", s, idx) == [1.0]
    assert sample_match_ratios_per_opener("I", s, idx) == [0.0]
    # partial: "What is a car ?" (6 with EOS): p = 3, shortest completion from "What is a" = 3 more → |x| = 6
    assert sample_match_ratios("What", ["What is a car ?"], idx) == [pytest.approx(6 / 12)]
    # not starting with w (raw) → 0, even if it is a real query
    assert sample_match_ratios("What", [" What is a bond ?", "How do I save money ?"], idx) == [0.0, 0.0]
    # a query without an opening word is in the trie too
    assert idx.match("401k or IRA ?") == 1.0


def test_lcp_and_dice_via_rapidfuzz():
    assert lcp((1, 2, 3, 4), (1, 2, 5)) == 2 and lcp((), (1,)) == 0
    assert dice((1, 2, 3), (1, 2, 3)) == 1.0 and dice((1, 2, 9), (1, 2, 3, 4)) == pytest.approx(4 / 7)
    assert lcp_matrix([(1, 2, 3), (1, 5)], [(1, 2, 9), (1, 5, 6), (7,)]).tolist() == [[2, 1, 0], [1, 2, 0]]
    assert lcp_matrix([(1,)], []).shape == (1, 0)


def test_query_recall_and_coverage_hand_computed():
    codec = WordCodec()
    preds = {"What": ["What is a bond ?", "What is a car ?", refusal("What")],
             "How": ["How do I spend money ?"], "I": ["In 2020 what was inflation ?"], "Explain": ["Why ?"],
             "Who": ["What is a stock ?"]}  # "Who" opens no real query: its samples are never scored
    r = query_recall(preds, D2, codec, thresholds=(1.0, 0.75, 0.5))
    # Scored samples: What's two (the refusal does not start with "What"), How's, I's ("In 2020 ..." starts
    # with "I"). 7 distinct queries, "401k or IRA ?" included.
    # bond: exact. stock: vs "What is a car ?" lcp 3 of 6+6 → Dice 0.5, coverage 3/6.
    # save money: vs "How do I spend money ?" lcp 3 of 7+7 → 6/14, coverage 3/7.
    # In 2020: exact (via w = "I"). Explain, I need, 401k: nothing.
    assert r["n_queries"] == 7 and r["n_scored_samples"] == 4
    assert r["n_exact"] == 2 and r["exact_queries"] == ["In 2020 what was inflation ?", "What is a bond ?"]
    assert r["recall@1"] == pytest.approx(2 / 7) == r["fully_recovered_ratio"]
    assert r["recall@0.75"] == pytest.approx(2 / 7)
    assert r["recall@0.5"] == pytest.approx(3 / 7)
    assert r["coverage"] == pytest.approx((1 + 3 / 6 + 3 / 7 + 0 + 1 + 0 + 0) / 7)


def test_nltk_bleu_paper_definition_hand_computed():
    ref = "What is the difference between a bond and a stock ?"
    exact, partial, unrelated = bleu_scores(
        [ref, "What is the difference between a car and a bike ?", "Purple monkeys dance quietly"], [ref])
    assert exact == pytest.approx(1.0) and unrelated == pytest.approx(0.0, abs=1e-70)
    # 11 tokens each (BP = 1); clipped n-gram precisions 9/11, 6/10, 4/9, 3/8 → geometric mean
    assert partial == pytest.approx((9 / 11 * 6 / 10 * 4 / 9 * 3 / 8) ** 0.25)
    # The paper's BLEU gives ~0 to an exact copy under 4 words (no 4-grams, no smoothing); sacrebleu gives 1.
    short = "Define inflation ."
    assert bleu_scores([short], [short])[0] == pytest.approx(0.0, abs=1e-70)
    assert sacrebleu_scores([short], [short])[0] == pytest.approx(1.0)
    # 4 words: one 4-gram, exact → 1.0
    assert bleu_scores(["Is it a bond"], ["Is it a bond"])[0] == pytest.approx(1.0)
    assert bleu_scores(["x"], []) == [0.0] and bleu_scores([""], ["a b c d"]) == [0.0]


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
        # real opener in S whose samples reproduce a query opening with another word ("In ...")
        "I": ["In 2020 what was inflation ?"] * 4,
    }
    m = evaluate_words(samples, ["What", "How", "Who", "Write", "I"], D2, codec, thresholds=(1.0, 0.5))
    ident = m["identification"]
    assert [w for w, s in m["opener_scores"].items() if s["kept"]] == ["What", "Who", "I"]
    # real in S: What, How, I → tp 2 (What, I), fp 1 (Who), fn 1 (How)
    assert ident["precision"] == pytest.approx(2 / 3) and ident["recall"] == pytest.approx(2 / 3)
    # Pipeline: kept What (max 1, mean 0.75), Who (fake → 0), I (1, 1) → max 2/3, mean 1.75/3.
    assert m["pipeline"]["max_match"] == pytest.approx(2 / 3)
    assert m["pipeline"]["mean_match"] == pytest.approx(1.75 / 3)
    # per-opener variant: I's samples share nothing with "I need ..." → 0: max 1/3, mean 0.75/3
    assert m["pipeline"]["max_match_per_opener"] == pytest.approx(1 / 3)
    assert m["pipeline"]["mean_match_per_opener"] == pytest.approx(0.75 / 3)
    # fully recovered: bond and "In 2020 ..." of 7 distinct queries
    assert m["pipeline"]["recall@1"] == pytest.approx(2 / 7)
    # Known openers (What, How, Explain, I): max (1 + 0 + 1 + 1)/4, mean (0.75 + 0 + 1 + 1)/4.
    assert m["known_openers"]["max_match"] == pytest.approx(3 / 4)
    assert m["known_openers"]["mean_match"] == pytest.approx(2.75 / 4)
    assert m["known_openers"]["recall@1"] == pytest.approx(3 / 7)
    # BLEU (paper's): What 3×1.0 + refusal 0 → max 1, mean .75; Explain's 4-word copy 1.0; I's sample vs
    # "I need a budget plan ." → 0; How (refusals) 0.
    assert m["known_openers"]["max_bleu"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert m["known_openers"]["mean_bleu"] == pytest.approx((0.75 + 0 + 1 + 0) / 4, abs=1e-9)
    # Recall ceiling: queries whose opener is in S (What ×2, How, I) out of all 7 distinct.
    assert m["recall_ceiling"] == pytest.approx(4 / 7)
    row = summary_row(m)
    assert row["opener_precision"] == pytest.approx(2 / 3) and row["pipeline_recall@1"] == pytest.approx(2 / 7)
    assert row["pipeline_fully_recovered_ratio"] == pytest.approx(2 / 7) and "mean_sacrebleu" in row


def test_query_index_own_per_opener_variant():
    idx = QueryIndex(D2, WordCodec())
    assert idx.match_within_opener("What", "What is a stock ?") == 1.0
    assert idx.match_within_opener("Who", "Who is it ?") == 0.0
