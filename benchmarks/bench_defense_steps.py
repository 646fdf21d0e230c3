"""Step time of every alignment defense relative to SFT, on the same model and the same batches.

    python benchmarks/bench_defense_steps.py                          # embedded SmolLM2-135M, LoRA r16, CPU
    python benchmarks/bench_defense_steps.py --model tiny:llama       # quick
    python benchmarks/bench_defense_steps.py --defenses sft,vaccine,booster --json out.json
    python benchmarks/bench_defense_steps.py --model /path/to/llama --lora-r 32 --batch 5 --harmful-batch 10  # GPU

Every defense gets the same batch composition — `--batch` alignment rows + `--batch` helpful rows (the retain
batch) and `--harmful-batch` harmful rows where it uses harmful data — so the ratio measures the algorithm, not a
different amount of data (the official scripts differ per method; see docs/methods). Expected floors from the
forward/backward passes per step: CTRAP and Booster 3×; Vaccine 2× (its first pass needs no weight gradients);
RepNoise and NPO 2× their extra rows plus, for RepNoise, one LM-head projection per hidden state (the logit lens).
Timing: median over --steps optimizer steps after --warmup, each = forward(s), backward(s) and AdamW; the defenses
take turns step by step (round-robin), so load changes on a shared machine affect all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def alignment_data(n: int = 64) -> Any:
    """Packaged harmful prompts with templated refusals / filler answers: realistic lengths, no generation."""
    from tamperlab.data.core import Example
    from tamperlab.data.packs import helpful_prompts
    from tamperlab.data.sources import harmful_prompts
    from tamperlab.defenses.base import AlignmentData

    prompts, _ = harmful_prompts(["harmbench"])
    filler = "Here is a detailed answer with several steps and explanations for the question. " * 3
    return AlignmentData(
        refusal=[Example(p, "I'm sorry, but I can't help with that. It could cause real harm.") for p in prompts[:n]],
        harmful=[Example(p, filler) for p in prompts[n:2 * n]],
        helpful=[Example(p, filler) for p in helpful_prompts(n)],
    )


class Stepper:
    """One defense's trainer, optimizer and fixed batches; `step()` times one optimizer step."""

    def __init__(self, name: str, args: argparse.Namespace, data: Any, workdir: str):
        from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model
        from tamperlab.registry import DEFENSES
        from tamperlab.training import TrainConfig

        model, tok = load_model(ModelConfig(name_or_path=args.model), seed=0)
        if args.lora_r > 0:
            model = apply_lora(model, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r))
        entry = DEFENSES.entry(name)
        overrides: dict[str, Any] = {"helpful_batch_size": args.batch, "harmful_batch_size": args.harmful_batch}
        if name == "repnoise":
            overrides["lens_stride"] = args.lens_stride
        defense = entry.obj(entry.config(**overrides))
        self.model = model
        self.trainer = defense.make_trainer(model, tok, data, TrainConfig(max_steps=1, batch_size=args.batch,
                                                                          logging_steps=10 ** 6), workdir)
        total = args.steps + args.warmup
        self.trainer.create_optimizer_and_scheduler(num_training_steps=total)
        loader = iter(self.trainer.get_train_dataloader())
        self.batches = [next(loader) for _ in range(min(len(data.refusal) // args.batch, total))]
        self.i = 0

    def step(self) -> float:
        import torch

        t0 = time.perf_counter()
        self.trainer.training_step(self.model, self.batches[self.i % len(self.batches)])
        self.trainer.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.i += 1
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="alignment rows (plus as many helpful rows)")
    ap.add_argument("--harmful-batch", type=int, default=8)
    ap.add_argument("--lens-stride", type=int, default=1, help="RepNoise logit lens stride (1 = official)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--defenses", default="", help="comma list (default: all registered); sft is the baseline")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch
    import transformers

    from tamperlab.registry import DEFENSES

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in (args.defenses.split(",") if args.defenses else DEFENSES.names()) if n]
    names = ["sft"] + [n for n in names if n != "sft"]
    data = alignment_data()
    samples: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        steppers = {n: Stepper(n, args, data, f"{d}/{n}") for n in names}
        # Round-robin: one step of every defense per round, so a change in machine load (shared CPUs) hits all
        # defenses alike instead of biasing whichever ran during it.
        for r in range(args.warmup + args.steps):
            for n, st in steppers.items():
                t = st.step()
                if r >= args.warmup:
                    samples[n].append(t)
            print(f"round {r + 1}/{args.warmup + args.steps}: " +
                  ", ".join(f"{n} {samples[n][-1]:.2f}s" for n in names if samples[n] and r >= args.warmup),
                  flush=True)
    times = {n: statistics.median(v) for n, v in samples.items()}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nmodel {args.model}, LoRA r={args.lora_r}, batch {args.batch} + {args.batch} helpful, harmful "
          f"{args.harmful_batch}, RepNoise lens stride {args.lens_stride}, device {device}")
    print("| defense | passes/step | step (s) | × SFT |\n|---|---|---|---|")
    for name in names:
        print(f"| {name} | {DEFENSES.get(name).passes_per_step} | {times[name]:.3f} | {times[name] / times['sft']:.2f} |")
    for name in names[1:]:
        print(f"RATIO {name}/sft step time = {times[name] / times['sft']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device, "seconds": times,
                                               "ratio_to_sft": {n: t / times["sft"] for n, t in times.items()}},
                                              indent=2))


if __name__ == "__main__":
    main()
