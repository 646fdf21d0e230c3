"""Many samples of few prompts: the extraction stage's workload (|S| words × N samples of Q(w)).

`generate(..., num_return_sequences=N)` copies each prompt N times *before* the forward pass, so the ~130-token
Q(w) prompt is re-encoded N times — most of the compute when completions are short queries. Here each distinct
prompt is encoded once, its KV cache is repeated N times in place (`Cache.batch_repeat_interleave`), and
`generate` continues from that cache (the prefix-caching pattern of the transformers docs), with many prompts ×
samples per batch. `naive_sample` is the one-prompt-one-sample loop the benchmark compares against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Sequence

from tqdm.auto import tqdm

from ..config import PosFloat, PosInt, Range, Seed

log = logging.getLogger("tamperlab")


@dataclass
class SamplerConfig:
    """Sampling settings of the extraction stage."""

    temperature: PosFloat = 0.9
    """Sampling temperature (paper: 0.9)."""
    top_p: Annotated[float, Range(0, 1, open_lo=True)] = 1.0
    """Nucleus mass (paper: vLLM default 1.0)."""
    max_new_tokens: PosInt = 48
    """Tokens per sample (paper: 1024; a query is ~10–30 tokens, so 48 suffices on CPU)."""
    batch_size: PosInt = 64
    """Sequences (prompts × samples) decoded together."""
    seed: Seed = 0
    """Sampling seed."""
    share_prefill: bool = True
    """Encode each prompt once and repeat its KV cache for its samples (off = plain num_return_sequences)."""


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _gen_kwargs(tok: Any, cfg: SamplerConfig, greedy: bool) -> dict[str, Any]:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kw: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    if greedy:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    return kw


def sample(model: Any, tok: Any, prompts: Sequence[str], n: int, cfg: SamplerConfig | None = None,
           greedy: bool = False, desc: str = "sampling", progress: bool = True) -> list[list[str]]:
    """n completions of each already-formatted prompt (a list of n strings per prompt, in the caller's order)."""
    import torch
    from transformers import DynamicCache

    cfg = cfg or SamplerConfig()
    if not prompts or n <= 0:
        return [[] for _ in prompts]
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(cfg.seed)
    kw = _gen_kwargs(tok, cfg, greedy)
    # Work items: (prompt index, number of samples) chunks of at most batch_size samples, grouped into batches
    # of prompts with similar lengths (sorted) so left padding stays small.
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    per_batch = max(1, cfg.batch_size)
    items: list[tuple[int, int]] = []
    for i in order:
        left = n
        while left > 0:
            take = min(left, per_batch)
            items.append((i, take))
            left -= take
    batches: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    for it in items:
        if cur and sum(k for _, k in cur) + it[1] > per_batch:
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    results: list[list[str]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts) * n, desc=desc, disable=not progress, leave=False, unit="sample")
    with torch.inference_mode():
        for batch in batches:
            rows = [enc[i] for i, _ in batch]
            reps = torch.tensor([k for _, k in batch])
            ids, mask = _left_pad(rows, pad)
            ids, mask = ids.to(device), mask.to(device)
            if cfg.share_prefill and ids.shape[1] > 1:
                # Prefill all but the last prompt token once per prompt, then repeat the cache per sample;
                # generate() sees a cache covering input_ids[:, :-1] and only runs the last token and beyond.
                cache = DynamicCache(config=model.config)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                ck = _cache_kwarg(model)
                model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                      use_cache=True, **{ck: cache})
                if int(reps.max()) == int(reps.min()):
                    cache.batch_repeat_interleave(int(reps[0]))
                else:
                    index = torch.repeat_interleave(torch.arange(len(batch)), reps).to(device)
                    cache.batch_select_indices(index)
                out = model.generate(input_ids=torch.repeat_interleave(ids, reps.to(device), dim=0),
                                     attention_mask=torch.repeat_interleave(mask, reps.to(device), dim=0),
                                     **{ck: cache}, **kw)
            else:
                out = model.generate(input_ids=torch.repeat_interleave(ids, reps.to(device), dim=0),
                                     attention_mask=torch.repeat_interleave(mask, reps.to(device), dim=0), **kw)
            texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            pos_ = 0
            for (i, k) in batch:
                results[i].extend(t.strip() for t in texts[pos_:pos_ + k])
                pos_ += k
            bar.update(int(reps.sum()))
    bar.close()
    if was_training:
        model.train()
    return results


def naive_sample(model: Any, tok: Any, prompts: Sequence[str], n: int, cfg: SamplerConfig | None = None,
                 progress: bool = False) -> list[list[str]]:
    """The baseline: one `generate` call per prompt per sample (what a straightforward script does)."""
    import torch

    cfg = cfg or SamplerConfig()
    kw = _gen_kwargs(tok, cfg, greedy=False)
    device = next(model.parameters()).device
    model.eval()
    torch.manual_seed(cfg.seed)
    out: list[list[str]] = []
    with torch.inference_mode():
        for p in tqdm(prompts, desc="naive sampling", disable=not progress, leave=False):
            ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            row = []
            for _ in range(n):
                g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
                row.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True).strip())
            out.append(row)
    return out


def _cache_kwarg(model: Any) -> str:
    """The name under which this transformers version takes a KV cache: `cache` (≥ 5.24, where
    `past_key_values` is deprecated with a FutureWarning per call) or `past_key_values` (older versions)."""
    import inspect

    forward = getattr(getattr(model, "get_base_model", lambda: model)(), "forward", None)
    try:
        return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"
