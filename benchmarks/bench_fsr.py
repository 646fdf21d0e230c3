"""FSR verification throughput: batched (one left-padded `generate` per batch, tamperlab's `verify`) versus the
official scripts' one-trigger-at-a-time loop, on the same triggers, decoding and match rule. Prints pairs/s of
both and the ratio; checks that both give the same outputs (greedy). No assertions on time: the ratio is the
result.

    python benchmarks/bench_fsr.py                          # embedded SmolLM2-135M, 32 IF triggers, 30 new tokens
    python benchmarks/bench_fsr.py --model tiny:llama       # quick
    python benchmarks/bench_fsr.py --pairs 64 --batch 64 --out fsr_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=32, help="distinct IF triggers verified")
    ap.add_argument("--batch", type=int, default=32, help="triggers per batched generate call")
    ap.add_argument("--new-tokens", type=int, default=30, help="IF's official FSR decodes 30 new tokens")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    import torch
    import transformers

    from tamperlab.fingerprints.instructional import InstructionalConfig, InstructionalFingerprint
    from tamperlab.fingerprints.verify import FSRSpec, verify_prompts, verify_sequential
    from tamperlab.models import ModelConfig, load_model

    transformers.logging.set_verbosity_error()
    model, tok = load_model(ModelConfig(name_or_path=args.model), seed=0)
    fp = InstructionalFingerprint(InstructionalConfig(n_fingerprints=args.pairs, n_negatives=0, n_regularization=0))
    fps = fp.build_pairs(tok)
    pairs = fps.fingerprints()
    prompts = [fp.render(tok, p.prompt) for p in pairs]
    targets = [fp.match_target(p, "official") for p in pairs]
    official = fp.fsr_specs(tok)["official"]
    # min_new_tokens is not set: both paths stop at EOS per sequence (batched: when every row has finished).
    spec = FSRSpec(max_new_tokens=args.new_tokens, answer_prefix=official.answer_prefix, match=official.match)

    verify_prompts(model, tok, prompts[:2], targets[:2], spec, batch_size=2, progress=False)  # warm-up
    t0 = time.perf_counter()
    batched = verify_prompts(model, tok, prompts, targets, spec, batch_size=args.batch, progress=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = verify_sequential(model, tok, prompts, targets, spec)
    t_single = time.perf_counter() - t0

    same = sum(a.output == b.output for a, b in zip(batched.pairs, single.pairs))
    res = {
        "model": args.model, "pairs": len(prompts), "batch": args.batch, "max_new_tokens": args.new_tokens,
        "batched_pairs_per_s": len(prompts) / t_batched, "sequential_pairs_per_s": len(prompts) / t_single,
        "ratio": t_single / t_batched, "batched_s": t_batched, "sequential_s": t_single,
        "identical_outputs": f"{same}/{len(prompts)}", "fsr_batched": batched.fsr, "fsr_sequential": single.fsr,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
                   f"{torch.get_num_threads()}, cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(f"FSR verification, {len(prompts)} triggers × {args.new_tokens} new tokens on {args.model}")
    print(f"  batched (batch {args.batch}): {res['batched_pairs_per_s']:.2f} pairs/s ({t_batched:.1f} s)")
    print(f"  one at a time:        {res['sequential_pairs_per_s']:.2f} pairs/s ({t_single:.1f} s)")
    print(f"  ratio: {res['ratio']:.2f}x   identical outputs: {res['identical_outputs']}   "
          f"FSR {batched.fsr:.2f} / {single.fsr:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
