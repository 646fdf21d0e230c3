"""Scale path for the fingerprint experiment: the same recipe in 2 processes (`accelerate launch`, DDP over gloo,
per-device batch halved) gives the 1-process results — embedding, MEraser erase and recover, the merge donor and
the fine-tuning removal, sharded FSR verification and utility — and a resumed 2-process run reuses every stage.

The recipe's LoRA dropout is 0: dropout masks are drawn from each rank's own random stream, so with MEraser's
official 0.05 the two runs agree only in distribution (found 2026-12-01: the erase's first gradient norm was
11.51 in one process and 11.30 in two, same batches, same loss; with dropout 0 every stage matches)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from launching import differences, launch, run_ok  # tests/ is on sys.path

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


def _differences(a, b) -> list[str]:
    return differences(a, b, NOT_RESULTS)


def _results(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["results"]


def test_two_processes_give_the_one_process_fingerprint_results(tmp_path):
    for batch, name in ((4, "one"), (2, "two")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_recipe(batch, tmp_path / name)))
    cli = ["-m", "tamperlab.cli", "run"]
    run_ok([sys.executable, *cli, str(tmp_path / "one.yaml")])
    two_processes = launch(*cli, str(tmp_path / "two.yaml"))
    run_ok(two_processes)
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
    run_ok([*two_processes, "--resume"])
    assert _differences(two, _results(tmp_path / "two" / "fp")) == []
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
