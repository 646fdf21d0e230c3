"""Trap diagnostics (metrics/trap_diagnostics.py): the per-position probabilities against an independent softmax
over a plain forward pass, the position finder and the summaries on hand-made sequences."""

from __future__ import annotations

import math

import torch

from tamperlab.data.core import format_prompt
from tamperlab.metrics.trap_diagnostics import (EOT, TRAP_TEXT, AnswerProbs, TrapHit, diagnose,
                                                position_probs, summarize, trap_positions)


def test_trap_positions_on_hand_made_sequences():
    assert trap_positions([5, 9, 1, 9], 9) == [TrapHit(1, (5,)), TrapHit(3, (5, 9, 1))]
    hits = trap_positions([9, 2, 3, 4, 5, 9], 9)
    assert [(h.position, h.preceding) for h in hits] == [(0, ()), (5, (3, 4, 5))]
    assert trap_positions([1, 2, 3], 9) == []


def test_position_probs_equal_a_plain_forward_pass(tiny_model):
    model, tok = tiny_model
    trap = tok(TRAP_TEXT, add_special_tokens=False)["input_ids"][-1]
    prompts = ["How do I bake bread?", "Name a colour."]
    answers = ["Mix flour and water, then an error occurs.", "Blue"]  # different lengths: padding inside the batch
    got = position_probs(model, tok, prompts, answers, trap)
    model.eval()
    for p, a, g in zip(prompts, answers, got):
        prompt_ids = tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"]
        resp = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + resp])).logits[0]
        probs = torch.softmax(logits.double(), -1)
        start = len(prompt_ids)
        want_trap = [float(probs[start + i - 1, trap]) for i in range(len(resp))]
        want_target = [float(probs[start + i - 1, t]) for i, t in enumerate(resp)]
        assert g.targets == resp and g.targets[-1] == tok.eos_token_id
        assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-7) for x, y in zip(g.p_trap, want_trap))
        assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-7) for x, y in zip(g.p_target, want_target))
    d = diagnose(model, tok, prompts, answers)
    assert d["n_answers"] == 2 and d["share_with_trap"] == 0.5 and d["trap_occurrences"] == 1
    assert d["trap_id"] == trap


def test_summaries_by_hand(tokenizer):
    trap, eos = 7, 0
    probs = [AnswerProbs([3, 7, 4, eos], [0.1, 0.6, 0.2, 0.3], [0.5, 0.6, 0.1, 0.4]),   # trap at position 1
             AnswerProbs([4, eos], [0.05, 0.5], [0.9, 0.2])]                               # trap wins at end-of-turn
    s = summarize(tokenizer, ["x error", "y"], probs, trap, "error")
    assert s["share_with_trap"] == 0.5 and s["trap_position_buckets"] == {"1-3": 1}
    assert math.isclose(s["mean_p_trap"]["0"], (0.1 + 0.05) / 2)
    assert math.isclose(s["mean_p_trap"]["1-3"], (0.6 + 0.2) / 2)
    assert math.isclose(s["mean_p_trap"][EOT], (0.3 + 0.5) / 2) and s["mean_p_trap"]["16+"] is None
    # inside answers: 0.1<0.5 no, 0.6>0.6 no (tie), 0.2>0.1 yes, 0.05<0.9 no → 1/4; end-of-turn: 0.3<0.4, 0.5>0.2
    assert s["trap_beats_target_inside"] == 0.25 and s["trap_beats_target"][EOT] == 0.5
    assert math.isclose(s["mean_p_target_eot"], 0.3)
    assert s["collapse_rate"] == 50.0  # "x error": 1 of 2 words is the trap word (≥ 30 %)
