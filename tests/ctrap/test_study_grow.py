"""A study resumed with one more variant runs only that variant: the finished ones are skipped (their sub-runs
untouched), and the study table gains the new row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tamperlab.experiments.base import execute, load_recipe

BASE = {
    "experiment": "hft", "name": "base",
    "model": {"name_or_path": "tiny:llama"}, "lora": {"r": 4, "alpha": 8},
    "data": {"n_eval": 4, "n_align": 8, "n_attack": 8, "n_helpful": 8, "response_tokens": 8},
    "alignment": {"max_steps": 1, "batch_size": 2, "save_steps": 1, "learning_rate": 1e-3},
    "defenses": [{"name": "sft", "params": {"helpful_batch_size": 2}}],
    "attacks": [{"kind": "harmful", "n": 8, "train": {"max_steps": 1, "batch_size": 4, "save_steps": 1}}],
    "eval": {"eval_steps": [], "n_trajectory_prompts": 2, "n_loss_probe": 4, "generation": {"max_new_tokens": 4}},
    "evaluate_aligned": False,
}


def _study(tmp_path: Path, variants: list[dict[str, Any]]) -> dict[str, Any]:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    return {"experiment": "study", "name": "study", "output_dir": str(tmp_path / "out"), "base": str(base),
            "defense": "sft", "reference": "sft", "diagnostics": False, "variants": variants}


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()) if e["event"] == event]


def test_study_resumed_with_an_added_variant_runs_only_that_variant(tmp_path):
    a = {"name": "a"}
    b = {"name": "b", "set": {"attacks.0.train.learning_rate": 3e-3}}
    run = execute(load_recipe(_study(tmp_path, [a])))
    a_log = (run.path / "a" / "log.jsonl").read_text()
    execute(load_recipe(_study(tmp_path, [b, a])), resume=True)  # added, and put first
    assert [e["variant"] for e in _events(run.path, "variant_skipped")] == ["a"]
    assert [e["variant"] for e in _events(run.path, "variant_done")] == ["a", "b"]  # a in the first run
    assert (run.path / "a" / "log.jsonl").read_text() == a_log
    assert [e["stage"] for e in _events(run.path / "b", "stage_done")] == ["data", "align-sft", "attack-sft-harmful-n8"]
    rows = json.loads((run.path / "metrics.json").read_text())["results"]["variants"]
    assert [r["variant"] for r in rows] == ["b", "a"]
    sub_b = json.loads((run.path / "b" / "metrics.json").read_text())
    assert sub_b["config"]["attacks"][0]["train"]["learning_rate"] == 3e-3
    assert rows[0]["harmful_hs"]["value"] == sub_b["results"]["sft"]["attacks"]["harmful-n8"]["hs_io"]
