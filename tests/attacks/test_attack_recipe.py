"""A recipe names the new attacks and the `hft` experiment runs them end to end (smoke mode: tiny model, 2 steps
per training stage): one row per attack, each measured like a fine-tuning attack (HS with the judge panel),
training-free ablation without training statistics, the AOA row trained on no harmful example, the attacker-LoRA
and soft-prompt rows trained for exactly the smoke steps; labels frozen before smoke shrinks the sizes."""

from __future__ import annotations

import json

import yaml

from tamperlab import smoke
from tamperlab.cli import main

RECIPE = {
    "experiment": "hft", "name": "attacks_recipe", "model": {"name_or_path": "tiny:llama"},
    "data": {"source": "offline", "n_eval": 2, "n_align": 4, "n_attack": 8, "n_helpful": 8},
    "defenses": [{"name": "sft"}], "evaluate_aligned": False,
    "attacks": [
        {"kind": "harmful", "n": 100, "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}},
        {"name": "aoa", "n_benign": 4},
        {"name": "refusal-ablation"},
        {"name": "soft-prompt", "num_virtual_tokens": 20},
    ],
    "eval": {"judges": ["embedded", "garak-mitigation"], "eval_steps": []},
}


def test_hft_recipe_runs_the_new_attacks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(tmp_path / "r.yaml"), "--smoke"]) == 0
    run = tmp_path / "runs" / "attacks_recipe-smoke"
    metrics = json.loads((run / "metrics.json").read_text())
    row = metrics["results"]["sft"]["attacks"]
    # sizes shrank (soft prompt k 20 → 4, LoRA r 16 → 8), labels did not
    assert list(row) == ["harmful-n100-lora-r16", "aoa", "refusal-ablation", "soft-prompt-k20"]
    for label, m in row.items():
        assert "hs_io" in m and m["n"] == 2, label
    assert row["refusal-ablation"]["train"] is None and row["refusal-ablation"]["data"]["layer"] == 1
    assert row["aoa"]["data"]["harmful"] == 0 and row["aoa"]["train"]["steps"] == smoke.SMOKE_STEPS
    assert row["soft-prompt-k20"]["data"]["num_virtual_tokens"] == 4
    assert row["harmful-n100-lora-r16"]["train"]["steps"] == smoke.SMOKE_STEPS
    cfg = metrics["config"]["attacks"]
    assert cfg[0]["lora"]["r"] == 8 and cfg[3]["num_virtual_tokens"] == 4
    md = (run / "report.md").read_text()
    assert all(label in md for label in row)
