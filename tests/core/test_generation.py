"""Batched, length-sorted, left-padded generation returns exactly what one-at-a-time greedy generation does."""

from __future__ import annotations

import torch

from tamperlab.data.core import format_prompt
from tamperlab.generation import GenerationConfig, generate


def test_batched_equals_single(tiny_model):
    model, tok = tiny_model
    prompts = [format_prompt(tok, p) for p in ["Hi", "Tell me a long story about the sea and ships", "2+2?"]]
    cfg = GenerationConfig(max_new_tokens=6, batch_size=3)
    batched = generate(model, tok, prompts, cfg, progress=False)
    single = []
    for p in prompts:
        ids = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        single.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert batched == single


def test_sampling_returns_n_per_prompt(tiny_model):
    model, tok = tiny_model
    out = generate(model, tok, ["a", "b"], GenerationConfig(max_new_tokens=3, do_sample=True,
                                                            num_return_sequences=3), progress=False)
    assert len(out) == 2 and all(len(o) == 3 for o in out)
