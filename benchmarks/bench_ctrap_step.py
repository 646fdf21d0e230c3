"""CTRAP step time / SFT step time on the same model and batches (target ≤ 3.3: three forward/backward passes
per CTRAP step is the floor).

    python benchmarks/bench_ctrap_step.py                       # embedded SmolLM2-135M, LoRA r16, CPU
    python benchmarks/bench_ctrap_step.py --model tiny:llama    # quick
    python benchmarks/bench_ctrap_step.py --model /path/to/llama --lora-r 32   # on a GPU

The measurement is bench_defense_steps.py restricted to sft and ctrap (same batches, round-robin steps, median
after warm-up); every option of that script is accepted. Prints `RATIO ctrap/sft step time = …`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_defense_steps import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--defenses", "ctrap", *sys.argv[1:]]
    main()
