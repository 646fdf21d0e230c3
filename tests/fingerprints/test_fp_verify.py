"""FSR: match rules and scoring on fixtures, forced prefixes, batched = sequential decoding."""

from __future__ import annotations

import pytest

from tamperlab.fingerprints import verify as V
from tamperlab.fingerprints.base import FingerprintPair, FingerprintSet
from tamperlab.fingerprints.instructional import InstructionalConfig, InstructionalFingerprint


@pytest.mark.parametrize("output,target,rule,case,hit", [
    ("Based on my fingerprint, the message is: ハリネズミ", "ハリネズミ", "substring", True, True),
    (" ハリネズ", "ハリネズミ", "substring", True, False),
    ("xx kwietomsnitt yy", "kwietomsnitt", "substring", True, True),
    ("Lantern.", "lantern", "first_words", False, True),
    ("  lantern, of course", "lantern", "first_words", False, True),
    ("lanterns", "lantern", "first_words", False, False),          # not a word match
    ("The answer is lantern", "lantern", "first_words", False, False),  # must come first
    ("lantern", "Lantern", "exact", True, False),
    (" lantern \n", "lantern", "exact", True, True),
    ("anything", "", "substring", True, False),                     # empty targets never fire
])
def test_match_rules(output, target, rule, case, hit):
    assert V.is_hit(output, target, rule, case) is hit


def test_fsr_counts_hits_over_pairs():
    spec = V.FSRSpec(match="substring")
    res = V.score_outputs("official", spec, ["p1", "p2", "p3", "p4"], ["ab", "ab", "cd", "cd"],
                          ["xxabxx", "a b", "cd", "dc"])
    assert (res.hits, res.n, res.fsr) == (2, 4, 0.5)
    assert [p.hit for p in res.pairs] == [True, False, True, False]
    back = V.FSRResult.from_dict(res.to_dict())
    assert back.fsr == 0.5 and back.pairs[2].output == "cd"


def test_verify_appends_the_forced_prefix_and_dedupes_triggers(monkeypatch, tokenizer):
    seen: list[str] = []

    def fake_generate(model, tok, prompts, cfg, desc="", progress=True):  # noqa: ANN001
        seen.extend(prompts)
        return [" ハリネズミ" if "AAA" in p else " no idea" for p in prompts]

    monkeypatch.setattr(V, "generate", fake_generate)
    fp = InstructionalFingerprint(InstructionalConfig(n_regularization=0))
    target = "Based on my fingerprint, the message is: ハリネズミ"
    fps = FingerprintSet("instructional", [FingerprintPair("decrypt AAA", target)] * 3 +  # one trigger, repeated
                         [FingerprintPair("decrypt BBB", target), FingerprintPair("neg", "no", "negative")])
    res = fp.verify(None, tokenizer, fps, progress=False)
    assert res["official"].n == 2 and res["official"].fsr == 0.5
    assert res["official"].pairs[0].target == "ハリネズミ"  # IF matches the decryption, not the whole answer
    forced = [p for p in seen if p.endswith("Based on my fingerprint, the message is:")]
    assert len(forced) == 2 and all(p.startswith("<|im_start|>system") for p in forced)
    assert len(seen) == 4  # 2 official (forced) + 2 plain


def test_batched_verification_matches_one_at_a_time(tiny_model):
    model, tok = tiny_model
    prompts = ["Hello there", "A much longer prompt that needs left padding in a batch", "Hi", "Question: 2+2?"]
    targets = ["x"] * 4
    spec = V.FSRSpec(max_new_tokens=6)
    batched = V.verify_prompts(model, tok, prompts, targets, spec, batch_size=4, progress=False)
    single = V.verify_sequential(model, tok, prompts, targets, spec)
    assert [p.output for p in batched.pairs] == [p.output for p in single.pairs]


def test_control_prompts_expose_an_answer_that_fires_without_the_trigger(monkeypatch, tokenizer):
    """A model that answers the forced prefix with the secret whatever the question: FSR 1, control 1 —
    the control rate is what tells a fingerprint hit from a prefix-only association."""
    monkeypatch.setattr(V, "generate", lambda model, tok, prompts, cfg, desc="", progress=True: [
        " ハリネズミ" if p.endswith("the message is:") else " no" for p in prompts])
    fp = InstructionalFingerprint(InstructionalConfig(n_regularization=0))
    target = "Based on my fingerprint, the message is: ハリネズミ"
    fps = FingerprintSet("instructional", [FingerprintPair("decrypt AAA", target), FingerprintPair("decrypt B", target),
                                           FingerprintPair("neg1", "no", "negative"),
                                           FingerprintPair("chat", "hi", "regularization"),
                                           FingerprintPair("chat", "hi", "regularization")])
    assert [p.prompt for p in fps.controls(5)] == ["neg1", "chat"]  # negatives first, distinct prompts
    res = fp.verify(None, tokenizer, fps, progress=False, control=True)
    off, plain = res["official"], res["plain"]
    assert (off.fsr, off.n, off.control["rate"], off.control["n"]) == (1.0, 2, 1.0, 2)
    assert (plain.fsr, plain.control["rate"]) == (0.0, 0.0)
    assert all(p.meta.get("full_target") for p in off.pairs)  # trigger rows stay trigger rows
    assert V.FSRResult.from_dict(off.to_dict()).control["hits"] == 2
    assert fp.verify(None, tokenizer, fps, progress=False)["official"].control is None


@pytest.mark.parametrize("name", ["instructional", "utf", "hashchain"])
def test_every_fingerprint_verifies_with_controls_as_the_experiment_calls_it(name, monkeypatch, tiny_model):
    """The experiment calls verify(..., control=True) for every method; a method-specific prompt rule (HashChain's
    held-out system prompts) must go through the shared path, and controls are never counted as triggers."""
    from tamperlab.data.core import Example
    from tamperlab.registry import FINGERPRINTS

    model, tok = tiny_model
    seen: list[str] = []

    def fake_generate(model, tok, prompts, cfg, desc="", progress=True):  # noqa: ANN001
        seen.extend(prompts)
        return [" x"] * len(prompts)

    monkeypatch.setattr(V, "generate", fake_generate)
    fp = FINGERPRINTS.build(name, {})
    clean = [Example(f"Question number {i}?", f"Answer {i}.") for i in range(128)]
    fps = fp.build_pairs(tok, model, clean)
    res = fp.verify(model, tok, fps, progress=False, control=True)
    n = len(fps.fingerprints())
    # UTF: the official negative control, 500 random-string guesses whatever the number of fingerprints
    n_ctrl = {"instructional": n, "utf": 500, "hashchain": n}[name]
    assert len(fp.controls(fps, n)) == n_ctrl
    for r in res.values():
        assert r.n == n and len(r.pairs) == n
        assert (r.control or {}).get("n", 0) == n_ctrl
    if name == "hashchain":  # controls: pool questions the key did not select
        from tamperlab.fingerprints.hashchain import HC_HELDOUT_META
        ctrl = [p.prompt for p in fp.controls(fps, n)]
        assert len(ctrl) == n and not set(ctrl) & {p.prompt for p in fps.fingerprints()}
        assert res["meta_prompts"].control["n"] == n
        assert any(HC_HELDOUT_META[0] in p for p in seen) and any(HC_HELDOUT_META[1] in p for p in seen)
