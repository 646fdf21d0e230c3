"""A run killed in the middle of a training stage and continued with --resume ends with the same weights and
metrics as an uninterrupted run (auxiliary batches, data order and optimizer state all resume exactly)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tamperlab.defenses.ctrap import CTRAPDefense
from tamperlab.experiments.base import execute, load_recipe


def recipe(out, name):
    return {
        "experiment": "ctrap", "name": name, "output_dir": str(out),
        "model": {"name_or_path": "tiny:llama"}, "lora": {"r": 4, "alpha": 8},
        "data": {"n_eval": 4, "n_align": 8, "n_attack": 8, "n_helpful": 8, "response_tokens": 8},
        "alignment": {"max_steps": 4, "batch_size": 2, "save_steps": 2, "learning_rate": 1e-3},
        "defenses": [{"name": "ctrap", "params": {"helpful_batch_size": 2, "harmful_batch_size": 2}}],
        "attacks": [{"kind": "harmful", "n": 8, "train": {"max_steps": 2, "batch_size": 4, "save_steps": 1,
                                                          "learning_rate": 1e-3}}],
        "eval": {"eval_steps": [0, 2], "n_trajectory_prompts": 2, "n_loss_probe": 4,
                 "generation": {"max_new_tokens": 4}},
        "evaluate_aligned": False,
    }


def _numbers(metrics):
    a = metrics["results"]["ctrap"]["attacks"]["harmful-n8"]
    return {k: v for k, v in a["trajectory"]["2"].items()}, a["hs_io"]


def _run_killed_in_ctrap_alignment(tmp_path, monkeypatch):
    """Run the recipe as `killed`, interrupted at the 4th CTRAP step (after the step-2 checkpoint, mid-stage)."""
    original = CTRAPDefense.step
    calls = {"n": 0}

    def killed_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(CTRAPDefense, "step", killed_step)
    with pytest.raises(KeyboardInterrupt):
        execute(load_recipe(recipe(tmp_path, "killed")))
    monkeypatch.setattr(CTRAPDefense, "step", original)


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    clean = execute(load_recipe(recipe(tmp_path, "clean")))

    _run_killed_in_ctrap_alignment(tmp_path, monkeypatch)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = execute(load_recipe(recipe(tmp_path, "killed")), resume=True)

    align = resumed.load_stage("align-ctrap")
    assert align["resumed_from"] and align["resumed_from"].endswith("checkpoint-2")
    w1 = load_file(str(clean.path / "models" / "ctrap" / "adapter_model.safetensors"))
    w2 = load_file(str(resumed.path / "models" / "ctrap" / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-7)
    t1, hs1 = _numbers(clean.load_metrics())
    t2, hs2 = _numbers(resumed.load_metrics())
    assert hs1 == hs2
    for k in t1:
        assert t1[k] == pytest.approx(t2[k], rel=1e-5, abs=1e-6), k
    # train_loss covers the whole stage, not only the steps after the resume
    assert align["train_loss"] == pytest.approx(clean.load_stage("align-ctrap")["train_loss"], rel=1e-6)


def test_resume_skips_checkpoint_cut_by_a_kill(tmp_path, monkeypatch):
    """A kill while checkpoint-4 was being written (folder there, trainer_state.json missing or cut) must not
    make the run unresumable: the newest complete checkpoint is used and the broken one removed."""
    from tamperlab.training import last_checkpoint

    clean = execute(load_recipe(recipe(tmp_path, "clean")))
    _run_killed_in_ctrap_alignment(tmp_path, monkeypatch)
    ckdir = tmp_path / "killed" / "checkpoints" / "align-ctrap"
    good = ckdir / "checkpoint-2"
    # what a SIGKILL during the save of step 3 leaves: weights written, trainer state cut mid-file
    broken = ckdir / "checkpoint-3"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes()[:100])
    (broken / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    (ckdir / "checkpoint-4").mkdir()  # a save that got no further than the folder
    (tmp_path / "killed" / "stages" / ".align-ctrap.json.abc123.tmp").write_text("{")  # a cut atomic write
    assert last_checkpoint(ckdir) == str(good)
    assert not broken.exists() and not (ckdir / "checkpoint-4").exists()
    resumed = execute(load_recipe(recipe(tmp_path, "killed")), resume=True)
    assert not list((tmp_path / "killed").rglob(".*.tmp"))
    a, b = clean.load_stage("align-ctrap"), resumed.load_stage("align-ctrap")
    assert b["resumed_from"].endswith("checkpoint-2") and b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)


@pytest.mark.slow  # four full CLI runs as subprocesses: ≈3.5 min on the loaded 2-core machine
def test_kill_loop_small(tmp_path):
    """scripts/kill_loop.py in small: SIGKILL a real CLI run twice at random moments, resume it each time; the
    final metrics.json equals an uninterrupted run's (train_loss included) and no temporaries are left."""
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    import kill_loop

    small = yaml.safe_load((root / "tests" / "fixtures" / "tiny_ctrap.yaml").read_text())
    small["defenses"] = small["defenses"][1:]  # CTRAP only
    small["evaluate_aligned"] = False
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    s = kill_loop.main(["--recipe", str(path), "--out", str(tmp_path / "kl"), "--kills", "2", "--per-episode", "2",
                        "--seed", "1"])
    assert s["kills"] == 2
    assert s["episodes_identical"] == s["episodes"] >= 1
    assert s["train_loss_equal"] == s["episodes"] and s["temporaries_left"] == 0
