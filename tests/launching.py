"""Shared by the 1-process vs 2-process tests: how to launch tamperlab under `accelerate launch` on CPU, and how two
results trees are compared (tests/ is on sys.path, like stage_log)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_2PROC = ROOT / "src" / "tamperlab" / "accelerate_configs" / "cpu_2proc.yaml"
# One OpenMP thread per process: two gloo ranks on 2 cores would otherwise oversubscribe them.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def launch(*args: str, config: Path = CPU_2PROC) -> list[str]:
    """The `accelerate launch` command line (2 processes, no mixed precision) for a script or `-m module` args."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", "2", "--mixed_precision", "no", *args]


def run_ok(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def differences(a, b, skip: tuple[str, ...] = (), path: str = "") -> list[str]:
    """Every place where two results trees differ: keys, list lengths, text and counts exactly; floats beyond 1e-4
    relative to max(1, |a|) (1e-3 for perplexities, which exponentiate the loss); NaN equals NaN. Keys containing
    any of `skip` (timings, per-process batch sizes) are not compared."""
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [f"{path}: a dict vs {type(b).__name__}"]
        keys = [k for k in a if not any(s in k for s in skip)]
        out = [f"{path}/{k}: only on one side" for k in sorted(set(keys) ^ {k for k in b if not any(s in k for s in skip)})]
        return out + [d for k in keys if k in b for d in differences(a[k], b[k], skip, f"{path}/{k}")]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: {len(a)} items vs {b if not isinstance(b, list) else len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, skip, f"{path}[{i}]")]
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers and (isinstance(a, float) or isinstance(b, float)):
        if math.isnan(a) or math.isnan(b):
            return [] if math.isnan(a) and math.isnan(b) else [f"{path}: {a} vs {b}"]
        tol = 1e-3 if path.endswith("/ppl") else 1e-4
        return [] if abs(a - b) <= tol * max(1.0, abs(a)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {str(a)[:60]!r} vs {str(b)[:60]!r}"]
