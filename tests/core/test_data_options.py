"""The offline data options of the CTRAP study (refusal_variants, helpful, eos_after_truncated): each against an
independent construction, and the defaults unchanged."""

from __future__ import annotations

import re

import pytest

from tamperlab.config import from_dict
from tamperlab.data.core import Example, stable_hash, tokenize_example
from tamperlab.data.packs import (REFUSAL_REASONS, REFUSAL_TEMPLATES, HarmfulDataConfig, build_offline,
                                  refusal_combination, short_qa, templated_refusal)
from tamperlab.errors import ConfigError

PROMPTS = [f"harmful question number {i}" for i in range(60)]


def _original(prompt: str) -> str:
    """The refusal the packs gave before the option existed (written out again here)."""
    h = stable_hash(prompt, "refusal")
    return REFUSAL_TEMPLATES[h % 6].format(reason=REFUSAL_REASONS[(h // 7) % 5])


def test_refusal_variants():
    assert [templated_refusal(p) for p in PROMPTS] == [_original(p) for p in PROMPTS]  # 0 = as before
    one = {templated_refusal(p, 1) for p in PROMPTS}
    assert one == {"I'm sorry, but I can't help with that. It could cause real harm to people."}
    six = {templated_refusal(p, 6) for p in PROMPTS}
    pairs = {(i % 6, i % 5) for i in range(6)}
    assert six <= {REFUSAL_TEMPLATES[t].format(reason=REFUSAL_REASONS[r]) for t, r in pairs} and len(six) >= 4
    assert len({refusal_combination(i) for i in range(30)}) == 30  # every template × reason exactly once
    with pytest.raises(ConfigError, match="refusal_variants"):
        from_dict(HarmfulDataConfig, {"refusal_variants": 31})


def test_complete_short_answers_are_exact():
    exs = short_qa(80, seed=3)
    assert exs == short_qa(80, seed=3) and len({e.prompt for e in exs}) > 40
    for e in exs:
        assert e.response.endswith(".")
        if m := re.fullmatch(r"What is (\d+) plus (\d+)\?", e.prompt):
            assert e.response == f"{m[1]} plus {m[2]} is {int(m[1]) + int(m[2])}."
        elif m := re.fullmatch(r"What is (\d+) times (\d+)\?", e.prompt):
            assert e.response == f"{m[1]} times {m[2]} is {int(m[1]) * int(m[2])}."
        elif m := re.fullmatch(r'Spell the word "(\w+)" backwards\.', e.prompt):
            assert e.response == f'"{m[1]}" backwards is "{"".join(reversed(m[1]))}".'
        else:
            m = re.fullmatch(r"How many (\w+) are in (\d) (\w+)\?", e.prompt)
            per = {("minutes", "hours"): 60, ("seconds", "minutes"): 60, ("centimetres", "metres"): 100,
                   ("grams", "kilograms"): 1000, ("days", "weeks"): 7, ("months", "years"): 12}[(m[1], m[3])]
            assert e.response == f"There are {int(m[2]) * per} {m[1]} in {m[2]} {m[3]}."


def test_no_eos_marker_drops_only_the_eos(tokenizer):
    ex = Example("Say hi.", "Hi there")
    with_eos = tokenize_example(tokenizer, ex)
    without = tokenize_example(tokenizer, Example("Say hi.", "Hi there", meta={"no_eos": True}))
    assert with_eos["input_ids"][-1] == tokenizer.eos_token_id
    assert without["input_ids"] == with_eos["input_ids"][:-1] and without["labels"] == with_eos["labels"][:-1]


LONG = "one two three four five six seven eight"   # ≥ 8 tokens: cut off by a 6-token budget
SHORT = "Fine."


def test_build_offline_options(tokenizer, monkeypatch):
    from tamperlab.data import packs

    def fake_generate(model, tok, model_id, prompts, max_new_tokens, batch_size, tag):
        return [LONG if i % 2 else SHORT for i in range(len(prompts))]

    monkeypatch.setattr(packs, "_cached_generate", fake_generate)
    small = {"n_eval": 2, "n_align": 6, "n_attack": 4, "n_helpful": 6, "response_tokens": 6}
    default = build_offline(from_dict(HarmfulDataConfig, small), None, tokenizer, "tiny:llama")
    assert all(not e.meta for split in ("align_harmful", "attack_harmful", "helpful")
               for e in getattr(default, split).examples)  # defaults: no marker, EOS everywhere as before
    assert [e.response for e in default.align_refusal] == [_original(e.prompt) for e in default.align_refusal]
    assert default.helpful.examples[0].response == SHORT
    opts = build_offline(from_dict(HarmfulDataConfig, {**small, "eos_after_truncated": False, "refusal_variants": 1,
                                                       "helpful": "complete_short"}), None, tokenizer, "tiny:llama")
    assert {e.response for e in opts.align_refusal} == {refusal_combination(0)}
    assert [e.to_dict() for e in opts.helpful] == [e.to_dict() for e in short_qa(6)]
    for e in opts.align_harmful.examples + opts.attack_harmful.examples:
        assert e.meta.get("no_eos") is (True if e.response == LONG else None)
        ids = tokenize_example(tokenizer, e)["input_ids"]
        assert (ids[-1] == tokenizer.eos_token_id) is (e.response == SHORT)
    gen = build_offline(from_dict(HarmfulDataConfig, {**small, "eos_after_truncated": False}), None, tokenizer,
                        "tiny:llama")
    assert [bool(e.meta.get("no_eos")) for e in gen.helpful] == [e.response == LONG for e in gen.helpful]
    with pytest.raises(ConfigError, match="offline packs only"):
        from_dict(HarmfulDataConfig, {"source": "hub", "helpful": "complete_short"})
    # the attacker's pairs alone keep their end-of-turn token: alignment data as above, attack data as by default
    split = build_offline(from_dict(HarmfulDataConfig, {**small, "eos_after_truncated": False,
                                                        "attack_eos_after_truncated": True}), None, tokenizer,
                          "tiny:llama")
    assert [bool(e.meta.get("no_eos")) for e in split.align_harmful] == [e.response == LONG
                                                                         for e in split.align_harmful]
    assert any(e.response == LONG for e in split.attack_harmful)
    for e in split.attack_harmful:
        assert not e.meta and tokenize_example(tokenizer, e)["input_ids"][-1] == tokenizer.eos_token_id
    assert "eos" not in split.attack_harmful.provenance and "eos" in split.align_harmful.provenance
    with pytest.raises(ConfigError, match="offline packs only"):
        from_dict(HarmfulDataConfig, {"source": "hub", "attack_eos_after_truncated": True})
