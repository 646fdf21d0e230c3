"""CTRAP step time / SFT step time on the same model and batches (target ≤ 3.3: three forward/backward passes
per CTRAP step is the floor).

    python benchmarks/bench_ctrap_step.py                       # embedded SmolLM2-135M, LoRA r16, CPU
    python benchmarks/bench_ctrap_step.py --model tiny:llama    # quick
    python benchmarks/bench_ctrap_step.py --model /path/to/llama --lora-r 32   # on a GPU

Both trainers draw identical alignment / helpful batches; CTRAP additionally a harmful batch (as in training).
Timing: median over --steps optimizer steps after --warmup, each including forward, backward and AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="alignment rows (plus as many helpful rows)")
    ap.add_argument("--harmful-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--defenses", default="sft,ctrap", help="comma list; the first is the baseline")
    args = ap.parse_args()

    import torch
    import transformers

    from tamperlab.data.packs import helpful_prompts
    from tamperlab.data.core import Example
    from tamperlab.data.sources import harmful_prompts
    from tamperlab.defenses.base import AlignmentData
    from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model
    from tamperlab.registry import DEFENSES
    from tamperlab.training import TrainConfig

    transformers.logging.set_verbosity_error()
    prompts, _ = harmful_prompts(["harmbench"])
    filler = "Here is a detailed answer with several steps and explanations for the question. " * 3
    data = AlignmentData(
        refusal=[Example(p, "I'm sorry, but I can't help with that. It could cause real harm.") for p in prompts[:64]],
        harmful=[Example(p, filler) for p in prompts[64:128]],
        helpful=[Example(p, filler) for p in helpful_prompts(64)],
    )
    names = args.defenses.split(",")
    times: dict[str, float] = {}
    for name in names:
        model, tok = load_model(ModelConfig(name_or_path=args.model), seed=0)
        if args.lora_r > 0:
            model = apply_lora(model, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r))
        entry = DEFENSES.entry(name)
        cfg = entry.config(helpful_batch_size=args.batch, harmful_batch_size=args.harmful_batch)
        defense = entry.obj(cfg)
        with tempfile.TemporaryDirectory() as d:
            trainer = defense.make_trainer(model, tok, data, TrainConfig(max_steps=1, batch_size=args.batch), d)
            trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + args.warmup)
            loader = iter(trainer.get_train_dataloader())
            batches = [next(loader) for _ in range(min(len(data.refusal) // args.batch, args.steps + args.warmup))]
            samples = []
            for i in range(args.steps + args.warmup):
                batch = batches[i % len(batches)]
                t0 = time.perf_counter()
                trainer.training_step(model, batch)
                trainer.optimizer.step()
                model.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
        print(f"{name:10s} median step {times[name]:.3f} s  (passes/step: {entry.obj.passes_per_step})", flush=True)
        del model, trainer
    base = names[0]
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nmodel {args.model}, LoRA r={args.lora_r}, batch {args.batch}+{args.batch} helpful, "
          f"harmful {args.harmful_batch}, device {device}")
    for name in names[1:]:
        print(f"RATIO {name}/{base} step time = {times[name] / times[base]:.2f}")


if __name__ == "__main__":
    main()
