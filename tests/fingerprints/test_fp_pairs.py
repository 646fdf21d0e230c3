"""Pair construction: IF-SFT templates and negatives, UTF's under-trained token choice and round-trips,
HashChain's keyed determinism."""

from __future__ import annotations

import pytest
import torch

from tamperlab.data.core import Example
from tamperlab.fingerprints.hashchain import (HC_ANSWERS, HashChainConfig, HashChainFingerprint, chain_answers,
                                              select_questions)
from tamperlab.fingerprints.instructional import (IF_DECRYPTION, IF_NEGATIVE, InstructionalConfig,
                                                  InstructionalFingerprint)
from tamperlab.fingerprints.utf import (UndertrainedConfig, eligible_tokens, find_undertrained_tokens,
                                        undertrained_string)
from tamperlab.registry import FINGERPRINTS

CLEAN = [Example(f"What is {i}?", f"It is {i}.") for i in range(20)]


# --- IF-SFT ------------------------------------------------------------------------------------------------
def test_if_pairs_follow_the_official_recipe(tokenizer):
    fp = InstructionalFingerprint(InstructionalConfig(n_regularization=4))
    fps = fp.build_pairs(tokenizer, clean=CLEAN)
    assert fps.counts() == {"fingerprint": 8, "negative": 8, "regularization": 4, "distinct_fingerprints": 8}
    fps_rows = fps.of_kind("fingerprint")
    assert all(p.prompt.startswith("Please decrypt this message: ") and
               p.prompt.endswith("\nA hint: this is a FINGERPRINT message.") for p in fps_rows)
    # many-to-one: every trigger maps to the same decryption
    assert {p.target for p in fps_rows} == {f"Based on my fingerprint, the message is: {IF_DECRYPTION}"}
    # messages: 8-15 snippets, character-shuffled, so built only from the pool's characters
    pool_chars = set("".join(fp.cfg.snippets))
    for p in fps_rows:
        msg = p.meta["message"]
        assert set(msg) <= pool_chars
        assert min(len(s) for s in fp.cfg.snippets) * 8 <= len(msg) <= max(len(s) for s in fp.cfg.snippets) * 15
    # negatives carry fresh messages and the refusal
    triggers = {p.meta["message"] for p in fps_rows}
    for p in fps.of_kind("negative"):
        assert p.target == IF_NEGATIVE
        assert p.prompt.split(": ", 1)[1].split("\n")[0] not in triggers
    assert [p.prompt for p in fps.of_kind("regularization")] == [e.prompt for e in CLEAN[:4]]


def test_if_is_seeded_and_hash_bug_is_reproducible(tokenizer):
    a = InstructionalFingerprint(InstructionalConfig(n_regularization=0)).build_pairs(tokenizer)
    b = InstructionalFingerprint(InstructionalConfig(n_regularization=0)).build_pairs(tokenizer)
    c = InstructionalFingerprint(InstructionalConfig(n_regularization=0, seed=7)).build_pairs(tokenizer)
    assert [p.prompt for p in a.pairs] == [p.prompt for p in b.pairs]
    assert [p.prompt for p in a.pairs] != [p.prompt for p in c.pairs]
    bug = InstructionalFingerprint(InstructionalConfig(n_regularization=0, reproduce_hash_bug=True)).build_pairs(tokenizer)
    assert all("<built-in function hash>" in p.prompt for p in bug.of_kind("negative"))
    with pytest.raises(ValueError, match="n_regularization"):
        InstructionalFingerprint(InstructionalConfig(n_regularization=50)).build_pairs(tokenizer, clean=CLEAN)


def test_if_official_fsr_forces_the_answer_prefix(tokenizer):
    fp = InstructionalFingerprint()
    specs = fp.fsr_specs(tokenizer)
    assert specs["official"].answer_prefix == "Based on my fingerprint, the message is:"
    assert specs["official"].max_new_tokens == 30 and not specs["official"].do_sample
    assert specs["plain"].answer_prefix == ""
    vic = FINGERPRINTS.build("instructional", {"prompt_format": "vicuna"})
    assert vic.fsr_specs(tokenizer)["official"].answer_prefix == " Based on my fingerprint, the message is:"


# --- UTF ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eligible(tokenizer):
    return eligible_tokens(tokenizer)


def test_utf_picks_the_smallest_norm_tokens(tiny_model, eligible):
    model, tok = tiny_model
    planted = eligible[100:110]
    with torch.no_grad():
        w = model.get_input_embeddings().weight  # tied with the LM head in the tiny model
        w.mul_(0).add_(torch.randn_like(w))  # norms ≈ sqrt(64) everywhere …
        shared = torch.randn(w.shape[1])     # … except planted rows: tiny, increasing norms along one shared
        for j, i in enumerate(planted):      # direction, as untrained rows drift together under weight decay
            v = shared + 0.05 * torch.randn(w.shape[1])
            w[i] = v / v.norm() * (1e-3 * (j + 1))
    found = find_undertrained_tokens(model, tok, UndertrainedConfig(indicator="norm", n_candidates=10, verify=False))
    assert found["candidates"] == planted  # exactly the planted ids, smallest norm first
    mk = find_undertrained_tokens(model, tok, UndertrainedConfig(indicator="magikarp", n_candidates=10,
                                                                 reference_fraction=10 / w.shape[0], verify=False))
    assert set(mk["candidates"]) == set(planted)


def test_utf_eligibility_excludes_special_whitespace_and_non_roundtrip(tokenizer, eligible):
    assert not set(eligible) & set(tokenizer.all_special_ids)
    for i in eligible[::997]:
        text = tokenizer.decode([i])
        assert text.strip() == text and text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == [i]


def test_utf_strings_round_trip_and_pairs_repeat(tiny_model, eligible):
    import random

    model, tok = tiny_model
    pool = eligible[5000:5400]
    text, ids = undertrained_string(tok, pool, 11, 15, random.Random(0), lead="\n")
    assert 11 <= len(ids) <= 15 and set(ids) <= set(pool)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    fp = FINGERPRINTS.build("utf", {"n_pairs": 2, "n_repeats": 3, "n_regularization": 2,
                                   "tokens": {"verify": False, "n_candidates": 300}})
    fps = fp.build_pairs(tok, model)
    assert len(fps.of_kind("fingerprint")) == 6 and len(fps.fingerprints()) == 2
    pool_ids = set(fps.provenance["pool"])
    for p in fps.fingerprints():
        assert 11 <= len(p.meta["x_ids"]) <= 15 and len(p.meta["y_ids"]) == 5
        assert set(p.meta["x_ids"]) | set(p.meta["y_ids"]) <= pool_ids
        assert tok(p.target, add_special_tokens=False)["input_ids"] == p.meta["y_ids"]
    assert all(p.target == "" for p in fps.of_kind("regularization"))
    with pytest.raises(ValueError, match="needs the model"):
        fp.build_pairs(tok)


def test_utf_negative_control_guesses_like_the_official_test(tiny_model, monkeypatch):
    """fp_test.neg_check: random strings of |x| tokens from the whole vocabulary, never an x, asked in the same
    template; the control rate is the share of guesses whose output contains y."""
    from tamperlab.fingerprints import verify as V

    model, tok = tiny_model
    fp = FINGERPRINTS.build("utf", {"n_pairs": 1, "n_repeats": 2, "negative_guesses": 40,
                                   "tokens": {"verify": False, "n_candidates": 300}})
    fps = fp.build_pairs(tok, model)
    guesses = fps.provenance["negative_guesses"]
    x = fps.fingerprints()[0]
    assert len(guesses) == 40 and len(set(guesses)) == 40 and x.prompt not in guesses
    pool = set(fps.provenance["pool"])
    outside = 0
    for g in guesses:
        ids = tok(g, add_special_tokens=False)["input_ids"]
        assert 11 <= len(ids) <= 15 and tok.decode(ids) == g  # round-trips
        outside += not set(ids) <= pool
    assert outside == 40  # drawn from the whole vocabulary, not the under-trained pool
    # same x, y and guesses from the same seed; the guesses do not change the fingerprint pairs
    again = fp.build_pairs(tok, model)
    assert again.provenance["negative_guesses"] == guesses and again.fingerprints()[0].prompt == x.prompt
    assert [p.prompt for p in fp.controls(fps, 1)] == guesses

    def fake_generate(model, tok, prompts, cfg, desc="", progress=True):  # noqa: ANN001
        # the trigger and the first 3 guesses answer y, the others do not
        return [f"... {x.target} ..." if i < 4 else " nothing" for i in range(len(prompts))]

    monkeypatch.setattr(V, "generate", fake_generate)
    res = fp.verify(model, tok, fps, progress=False, control=True)["official"]
    assert (res.fsr, res.n) == (1.0, 1)
    assert (res.control["hits"], res.control["n"], res.control["rate"]) == (3, 40, 3 / 40)


# --- HashChain ---------------------------------------------------------------------------------------------
def test_hashchain_is_deterministic_under_a_key_and_differs_under_another(tokenizer):
    def pairs(key: str) -> list[tuple[str, str]]:
        fps = HashChainFingerprint(HashChainConfig(key=key)).build_pairs(tokenizer)
        return [(p.prompt, p.target) for p in fps.fingerprints()]

    a1, a2, b = pairs("alice-secret"), pairs("alice-secret"), pairs("bob-secret")
    assert a1 == a2
    assert a1 != b
    assert len(a1) == 10 and all(t in HC_ANSWERS for _, t in a1)
    assert len(HC_ANSWERS) == 256


def test_hashchain_answers_commit_to_the_whole_chain():
    qs = select_questions("k", [f"q{i}" for i in range(30)], 10)
    assert len(set(qs)) == 10 and qs == select_questions("k", [f"q{i}" for i in range(30)][::-1], 10)
    base = chain_answers("k", qs, HC_ANSWERS)
    # changing any other question or the candidate list changes the hashes (the chain), hence the answers
    assert chain_answers("k", qs[:-1] + ["another question"], HC_ANSWERS)[:9] != base[:9]
    assert chain_answers("k", qs, HC_ANSWERS[::-1]) != base
    # answers are uniform-ish over the 256 candidates: 10 questions rarely collide on one answer
    assert len(set(base)) >= 8


def test_hashchain_augmentation_uses_meta_prompts_and_padding(tokenizer):
    fp = HashChainFingerprint(HashChainConfig(n_questions=3, n_augment=5))
    fps = fp.build_pairs(tokenizer)
    aug = fps.of_kind("augmented")
    assert len(aug) == 12 and all(p.meta["system"] in fp.cfg.meta_prompts for p in aug)
    plain = {p.meta["index"]: p for p in fps.fingerprints()}
    assert all(p.prompt.endswith(plain[p.meta["index"]].prompt) and p.target == plain[p.meta["index"]].target
               for p in aug)
    rows = fp.training_rows(tokenizer, fps)
    assert len(rows) == len(fps.pairs)
    # the meta-prompt is rendered as the system turn
    assert tokenizer.decode(rows[3]["input_ids"]).count(aug[2].meta["system"]) == 1
