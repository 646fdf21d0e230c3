"""The shared-prefill sampler returns what plain `generate` returns, in the caller's order and counts."""

from __future__ import annotations

from tamperlab.data.core import format_prompt
from tamperlab.extraction.sampler import SamplerConfig, sample
from tamperlab.extraction.samples import extraction_instruction
from tamperlab.generation import GenerationConfig, generate


def _prompts(tok):
    # Different lengths on purpose: left padding and the cached prefix must line up.
    return [format_prompt(tok, extraction_instruction(w)) for w in ("What", "Explain")] + [
        format_prompt(tok, "Hi"), format_prompt(tok, "Name two colours of the rainbow, please.")]


def test_shared_prefill_greedy_equals_plain_generate(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)
    ref = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12, batch_size=8), progress=False)
    # 3 samples per prompt with batch 5: batches mix prompts and split one prompt's samples across batches.
    got = sample(model, tok, prompts, 3, SamplerConfig(max_new_tokens=12, batch_size=5), greedy=True,
                 progress=False)
    assert len(got) == len(prompts) and all(len(g) == 3 for g in got)
    for r, g in zip(ref, got):
        assert g == [r.strip()] * 3


def test_sampling_is_seeded_and_diverse(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)[:2]
    cfg = SamplerConfig(max_new_tokens=8, batch_size=8, seed=7)
    a = sample(model, tok, prompts, 4, cfg, progress=False)
    b = sample(model, tok, prompts, 4, cfg, progress=False)
    assert a == b
    assert len(set(a[0])) > 1  # T = 0.9 over a random model: samples differ
    plain = sample(model, tok, prompts, 4, SamplerConfig(max_new_tokens=8, batch_size=8, seed=7,
                                                          share_prefill=False), progress=False)
    assert [len(x) for x in plain] == [4, 4]
    assert sample(model, tok, [], 4, cfg, progress=False) == []
