"""Scale path: the CTRAP trainer runs under `accelerate launch` with 2 CPU processes (DDP over gloo), and the
replicas stay identical (auxiliary gradients are all-reduced before they are composed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddp_ctrap_steps.py"
CONFIG = Path(__file__).resolve().parents[2] / "src" / "tamperlab" / "accelerate_configs" / "cpu_2proc.yaml"


def test_two_process_ctrap_steps(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and res["trainer_world_size"] == 2 and res["steps"] == 3
    assert res["moved"] > 0
    assert abs(res["checksums"][0] - res["checksums"][1]) < 1e-6, res
