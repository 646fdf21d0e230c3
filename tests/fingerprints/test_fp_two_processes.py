"""Scale path for the fingerprint experiment: the same recipe in 2 processes (`accelerate launch`, DDP over gloo,
per-device batch halved) gives the 1-process results — embedding, MEraser erase and recover, the merge donor and
the fine-tuning removal, sharded FSR verification and utility — and a resumed 2-process run reuses every stage.

The recipe's LoRA dropout is 0: dropout masks are drawn from each rank's own random stream, so with MEraser's
official 0.05 the two runs agree only in distribution (found 2026-12-01: the erase's first gradient norm was
11.51 in one process and 11.30 in two, same batches, same loss; with dropout 0 every stage matches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "src" / "tamperlab" / "accelerate_configs" / "cpu_2proc.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
NOT_RESULTS = ("seconds", "batch_size")  # timings, and the per-device batch that differs by design


def _recipe(batch: int, out: Path) -> dict:
    train = {"learning_rate": 1e-2, "max_steps": 60, "batch_size": batch, "grad_accum": 1,
             "lr_scheduler": "constant", "weight_decay": 0.0}
    no_dropout = {"target_modules": ["q_proj", "v_proj", "down_proj"], "dropout": 0.0}
    return {
        "experiment": "fingerprints", "name": "fp", "output_dir": str(out), "seed": 0,
        "model": {"name_or_path": "tiny:llama"},
        "clean_data": {"n_train": 24, "n_heldout": 8, "response_tokens": 8},
        "utility": {"ppl_examples": 8, "mc_items": 14, "lm_eval": "off"},
        "fingerprints": [{"name": "instructional", "params": {
            "prompt_format": "raw", "n_fingerprints": 2, "n_negatives": 0, "n_regularization": 0,
            "min_snippets": 2, "max_snippets": 3, "embed": {"train": train}}}],
        "removals": [
            # epochs, not steps: the 2-process run must also count its epochs over the sharded data
            {"name": "meraser", "params": {
                "erase": {"n_examples": 16, "epochs": 2.0, "data_format": "raw", "lora": no_dropout,
                          "train": {"learning_rate": 2e-2, "batch_size": batch, "grad_accum": 1,
                                    "logging_steps": 1}},
                "recover": {"n_examples": 8, "epochs": 1.0, "data_format": "raw", "lora": {"dropout": 0.0},
                            "train": {"batch_size": batch, "grad_accum": 1, "logging_steps": 1}}}},
            {"name": "merge_task_arithmetic", "params": {"donor_examples": 8,
                                                         "donor_train": {"max_steps": 2, "batch_size": batch}}},
            {"name": "finetune", "params": {"n_examples": 8, "train": {"max_steps": 2, "batch_size": batch}}}],
    }


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _differences(a, b, path: str = "") -> list[str]:
    """Every place where two results trees differ: text and counts exactly, floats beyond 1e-4 (relative; 1e-3
    for perplexities, which exponentiate the loss)."""
    if isinstance(a, dict):
        out = [f"{path}/{k}: missing" for k in a if k not in b and not any(s in k for s in NOT_RESULTS)]
        for k in a:
            if k in b and not any(s in k for s in NOT_RESULTS):
                out += _differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)):
        tol = 1e-3 if path.endswith("/ppl") else 1e-4
        return [] if abs(a - b) <= tol * max(1.0, abs(a)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {str(a)[:60]!r} vs {str(b)[:60]!r}"]


def _results(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["results"]


def test_two_processes_give_the_one_process_fingerprint_results(tmp_path):
    for batch, name in ((4, "one"), (2, "two")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_recipe(batch, tmp_path / name)))
    cli = ["-m", "tamperlab.cli", "run"]
    _run([sys.executable, *cli, str(tmp_path / "one.yaml")])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
              "--num_processes", "2", "--mixed_precision", "no", *cli, str(tmp_path / "two.yaml")]
    _run(launch)
    one, two = _results(tmp_path / "one" / "fp"), _results(tmp_path / "two" / "fp")
    ins_one, ins_two = one["fingerprints"]["instructional"], two["fingerprints"]["instructional"]
    erase = ins_one["removals"]["meraser"]["stages"]["erase"]
    # the stages trained: the fingerprint fires after embedding, the erase moved the loss over 8 steps
    assert ins_one["fingerprinted"]["fsr"]["official"]["fsr"] == 1.0
    assert len(erase["info"]["train"]["loss_history"]) == 8
    assert _differences(one, two) == []
    # the comparison can fail: the erase changed the model's outputs, and a changed output is a difference
    before, after = ins_one["fingerprinted"]["fsr"]["official"], erase["fsr"]["official"]
    assert _differences(before, after)

    # a resumed 2-process run: every rank takes the main process's "already done" decisions (stages, MEraser's
    # adapters, the merge donor), nothing trains again, the results are unchanged
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "two" / "fp").rglob("*.safetensors")}
    assert any("adapter" in str(p) for p in stamp) and any("donor" in str(p) for p in stamp)
    _run([*launch, "--resume"])
    assert _differences(two, _results(tmp_path / "two" / "fp")) == []
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
