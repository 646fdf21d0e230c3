"""Fingerprint utility's lm-eval accuracy goes through the project's one lm-eval runner (metrics/lmeval.py): its acc
on the shipped stand-in equals the fingerprint package's own scorer on the same generated items, and `auto` skips
hub tasks with a note (and without trying) when the hub is unreachable."""

from __future__ import annotations

import pytest

from tamperlab.errors import ResourceError
from tamperlab.fingerprints import utility as U
from tamperlab.metrics import lmeval


def test_lm_eval_accuracy_equals_the_generated_mc_scorer_on_the_same_items(tiny_model):
    """tamperlab_mc.jsonl is generated_mc(N_MC, DATA_SEED) and both score `Question: q\\nAnswer:` + ` choice` by
    summed log-likelihood: lm-eval's acc and mc_accuracy (a plain forward pass, written independently) agree."""
    model, tok = tiny_model
    n = 7  # one item of each of the generator's 7 kinds
    acc = U.lm_eval_accuracy(model, tok, ["tamperlab_mc"], limit=n, batch_size=16)
    items = U.generated_mc(lmeval.N_MC, lmeval.DATA_SEED)[:n]
    assert acc == {"tamperlab_mc": pytest.approx(U.mc_accuracy(model, tok, items)["acc"])}


def test_auto_skips_hub_tasks_when_the_hub_is_unreachable(tiny_model, monkeypatch):
    model, tok = tiny_model
    calls: list[object] = []
    monkeypatch.setattr("tamperlab.models.hub_unreachable", lambda: "no network (test)")
    monkeypatch.setattr(lmeval, "evaluate_utility", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(U, "_LM_EVAL_FAILED", {})
    cfg = U.UtilityConfig(ppl_examples=2, mc_items=7, lm_eval="auto", lm_eval_tasks=["sciq", "boolq"])
    from tamperlab.data.core import Example

    heldout = [Example("What is 1 plus 1?", "2."), Example("Name a colour.", "Red.")]
    out = U.evaluate_utility(model, tok, heldout, cfg)
    assert out["lm_eval"] is None and "unreachable" in out["lm_eval_note"] and "no network (test)" in out["lm_eval_note"]
    assert calls == []  # skipped before lm-eval was started
    with pytest.raises(ResourceError, match="unreachable"):
        U.evaluate_utility(model, tok, heldout, U.UtilityConfig(ppl_examples=2, mc_items=7, lm_eval="on",
                                                                  lm_eval_tasks=["sciq"]))
