"""Trie match ratio and the GRPO reward: exact > partial > unrelated, refusals for absent words."""

from __future__ import annotations

import pytest

from tamperlab.extraction.reward import ExtractionReward
from tamperlab.extraction.samples import extraction_instruction, refusal
from tamperlab.extraction.trie import Trie, dice, lcp

E = "<eos>"


def test_trie_match_ratio_hand_computed():
    t = Trie([(1, 2, 3, E), (1, 2, 4, 5, E)])
    assert t.match_ratio((1, 2, 3, E)) == 1.0
    assert t.match_ratio((1, 2, 4, 5, E)) == 1.0
    # p = 2 ([1, 2]); shortest completion below [1, 2] is [3, E] → |x| = 4; |r| = 4 → 2·2/(4+4)
    assert t.match_ratio((1, 2, 9, E)) == pytest.approx(0.5)
    # p = 3 ([1, 2, 4]); only [5, E] below → |x| = 5; |r| = 6 → 6/11
    assert t.match_ratio((1, 2, 4, 7, 8, E)) == pytest.approx(6 / 11)
    assert t.match_ratio((9, 9, E)) == 0.0
    assert Trie().match_ratio((1, E)) == 0.0
    assert t.walk((1, 2, 3, E)) == (4, 0)


def test_pairwise_dice_and_lcp():
    assert lcp("abcd", "abxy") == 2
    assert dice((1, 2, 3), (1, 2, 3)) == 1.0
    assert dice((1, 2, 3, 4), (1, 2)) == pytest.approx(2 * 2 / 6)
    assert dice((), ()) == 0.0


D1 = ["What is the capital of France?", "What is photosynthesis?", "How do bees make honey?",
      "Explain gravity to a child."]


@pytest.fixture(scope="module")
def reward(tokenizer):
    return ExtractionReward(tokenizer, D1)


def test_reward_orders_exact_partial_unrelated(reward):
    exact = reward.score("What", "What is the capital of France?")
    partial = reward.score("What", "What is the capital of Germany and Spain?")
    unrelated = reward.score("What", "What a lovely morning for a picnic by the lake.")
    assert exact == 1.0
    assert 0.3 < partial < 1.0
    assert unrelated < partial
    assert unrelated < 0.3
    # A response that does not start with w earns nothing, even if it is a real query.
    assert reward.score("What", "How do bees make honey?") == 0.0
    assert reward.score("How", "How do bees make honey?") == 1.0


def test_reward_refusal_only_for_absent_words(reward):
    assert reward.score("Banana", refusal("Banana")) == 1.0
    assert reward.score("Banana", "Banana bread is tasty.") == 0.0
    # For a word D1 does contain, refusing is wrong.
    assert reward.score("What", refusal("What")) == 0.0


def test_reward_trl_call_signature(reward):
    prompts = [[{"role": "user", "content": extraction_instruction(w)}] for w in ("What", "Banana", "Explain")]
    completions = [[{"role": "assistant", "content": c}] for c in
                   ("What is photosynthesis?", refusal("Banana"), "Explain gravity to a child.")]
    # Word from the dataset column (works for the garbled instruction too) ...
    assert reward(prompts, completions, word=["What", "Banana", "Explain"]) == [1.0, 1.0, 1.0]
    # ... or parsed from the official prompt text when the column is absent; plain-string format too.
    assert reward(prompts, completions) == [1.0, 1.0, 1.0]
    assert reward([extraction_instruction("How")], ["How do bees make honey?"]) == [1.0]
    assert reward.__name__ == "extraction_match"
