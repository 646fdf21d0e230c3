"""Extraction-stage throughput: sampled completions per second of the batched shared-prefill sampler
(`tamperlab.extraction.sampler.sample`, what the extraction stage runs) vs a naive loop that calls `generate`
once per prompt per sample. Both produce the same number of completions of the same Q(w) prompts with the same
decoding settings; the rounds alternate between the two so load changes on a shared machine hit both alike.

    python benchmarks/bench_extraction.py                     # embedded SmolLM2-135M-Instruct, CPU
    python benchmarks/bench_extraction.py --model tiny:llama  # no model download, plumbing only

Prints the ratio (target ≥ 5× on CPU) and writes a JSON record with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--words", type=int, default=4, help="candidate opening words (prompts)")
    p.add_argument("--samples", type=int, default=16, help="samples per word")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="sequences per batch in the fast path")
    p.add_argument("--rounds", type=int, default=2, help="alternating fast/naive rounds")
    p.add_argument("--json", help="write the measurements to this file")
    args = p.parse_args(argv)

    import torch

    from tamperlab.data.core import format_prompt
    from tamperlab.extraction.openers import RANKED_OPENERS
    from tamperlab.extraction.sampler import SamplerConfig, naive_sample, sample
    from tamperlab.extraction.samples import extraction_instruction
    from tamperlab.models import ModelConfig, load_model

    model, tok = load_model(ModelConfig(name_or_path=args.model), seed=0)
    words = list(RANKED_OPENERS[: args.words])
    prompts = [format_prompt(tok, extraction_instruction(w)) for w in words]
    cfg = SamplerConfig(temperature=0.9, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    n = len(prompts) * args.samples

    def tokens(outs: list[list[str]]) -> int:
        return sum(len(tok(s, add_special_tokens=False)["input_ids"]) for row in outs for s in row)

    # Warm-up (first-call allocations, lazy init) outside the timings.
    sample(model, tok, prompts[:1], 2, SamplerConfig(max_new_tokens=4), progress=False)
    times = {"fast": 0.0, "naive": 0.0}
    toks = {"fast": 0, "naive": 0}
    for r in range(args.rounds):
        cfg.seed = r
        t0 = time.perf_counter()
        outs = sample(model, tok, prompts, args.samples, cfg, progress=False)
        times["fast"] += time.perf_counter() - t0
        toks["fast"] += tokens(outs)
        t0 = time.perf_counter()
        outs = naive_sample(model, tok, prompts, args.samples, cfg)
        times["naive"] += time.perf_counter() - t0
        toks["naive"] += tokens(outs)
    total = n * args.rounds
    rate = {k: total / v for k, v in times.items()}
    ratio = rate["fast"] / rate["naive"]
    rec = {
        "benchmark": "extraction_sampling", "model": args.model, "words": args.words,
        "samples_per_word": args.samples, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "rounds": args.rounds, "completions": total,
        "fast_completions_per_s": round(rate["fast"], 3), "naive_completions_per_s": round(rate["naive"], 3),
        "fast_new_tokens_per_s": round(toks["fast"] / times["fast"], 1),
        "naive_new_tokens_per_s": round(toks["naive"] / times["naive"], 1),
        "ratio": round(ratio, 2), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"extraction sampling, {args.model}: {args.words} words × {args.samples} samples × {args.rounds} rounds, "
          f"{args.max_new_tokens} new tokens")
    print(f"  batched shared-prefill: {rate['fast']:.2f} completions/s ({rec['fast_new_tokens_per_s']} new tok/s)")
    print(f"  naive generate loop:    {rate['naive']:.2f} completions/s ({rec['naive_new_tokens_per_s']} new tok/s)")
    print(f"  ratio: {ratio:.1f}x  (target >= 5x on CPU; load avg {rec['load_avg_1m']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
