"""A harmful-fine-tuning run whose recipe grows or changes on --resume computes only the new and changed cells
(versioned stages, runs.RunDir.cached): the log's stage_done events name exactly those, the untouched cells keep
their numbers, and a changed attack trains from scratch instead of resuming its old checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tamperlab.data.core import DataSplit, Example
from tamperlab.data.packs import HarmfulData
from tamperlab.experiments.base import execute, load_recipe

from .helpers import tiny_attack, tiny_hft_recipe


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()]


def _resume(recipe: dict[str, Any], path: Path) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """Resume; returns (stages computed, stage_inputs_changed events, results) of this invocation."""
    n = len(_log(path))
    execute(load_recipe(recipe), resume=True)
    new = _log(path)[n:]
    results = json.loads((path / "metrics.json").read_text())["results"]
    return ([e["stage"] for e in new if e["event"] == "stage_done"],
            [e for e in new if e["event"] == "stage_inputs_changed"], results)


def test_hft_grid_grows_and_changes_cell_by_cell(tmp_path):
    recipe = tiny_hft_recipe(tmp_path, "grid")
    run = execute(load_recipe(recipe))
    assert [e["stage"] for e in _log(run.path) if e["event"] == "stage_done"] == [
        "data", "align-sft", "attack-sft-harmful-n8"]
    first = run.load_metrics()["results"]["sft"]["attacks"]["harmful-n8"]

    # one more attack: only its stage runs; the old cell is loaded, number for number
    grown = copy.deepcopy(recipe)
    grown["attacks"].append(tiny_attack(4))
    computed, changed, results = _resume(grown, run.path)
    assert computed == ["attack-sft-harmful-n4"] and changed == []
    assert results["sft"]["attacks"]["harmful-n8"] == first
    assert yaml.safe_load((run.path / "config.yaml").read_text())["attacks"][1]["n"] == 4
    start = [e for e in _log(run.path) if e["event"] == "run_start"][-1]
    assert start["recipe_changed"] == ["attacks.1: added"]
    assert len(start["previous_config"]["attacks"]) == 1

    # the first attack's learning rate changes: exactly its stage re-runs, from step 0 (its checkpoint-2, of the
    # old learning rate, would otherwise be resumed as a finished training)
    assert (run.path / "checkpoints" / "attack-sft-harmful-n8" / "checkpoint-2").exists()
    changed_lr = copy.deepcopy(grown)
    changed_lr["attacks"][0]["train"]["learning_rate"] = 3e-3
    n4 = results["sft"]["attacks"]["harmful-n4"]
    computed, changed, results = _resume(changed_lr, run.path)
    assert computed == ["attack-sft-harmful-n8"]
    assert [(e["stage"], e["changed"]) for e in changed] == [
        ("attack-sft-harmful-n8", ["attack.train.learning_rate: 0.001 → 0.003"])]
    start = [e for e in _log(run.path) if e["event"] == "run_start"][-1]
    assert start["recipe_changed"] == ["attacks.0.train.learning_rate: 0.001 → 0.003"]
    train = results["sft"]["attacks"]["harmful-n8"]["train"]
    assert train["resumed_from"] is None and train["steps"] == 2
    assert train["train_loss"] != first["train"]["train_loss"]
    assert results["sft"]["attacks"]["harmful-n4"] == n4

    # unchanged recipe: nothing computed
    assert _resume(changed_lr, run.path)[0] == []


def _table_inputs(tmp_path: Path, **over: Any) -> dict[str, dict[str, Any]]:
    """Stage inputs of every (defense, seed) cell of a ctrap_table recipe, without running it."""
    recipe = {**tiny_hft_recipe(tmp_path, "grid"), "experiment": "ctrap_table", "seeds": [0, 1],
              "defenses": [{"name": "sft", "params": {"helpful_batch_size": 2}, "alignment": {"batch_size": 4}},
                           {"name": "sft", "label": "sft2", "params": {"helpful_batch_size": 2}}], **over}
    exp = load_recipe(recipe)
    exp.judge = None  # set by run(); the cells share it and it plays no part in their inputs
    split = DataSplit("d", [Example("q", "a")], "test")
    data = HarmfulData(**{k: split for k in ("align_refusal", "align_harmful", "helpful", "attack_harmful",
                                             "eval_prompts")})
    out = {}
    for spec in exp.cfg.defenses:
        for seed in exp.seeds():
            cell_exp, cell = exp.cell(spec, seed)
            out[cell.key] = cell_exp.stage_inputs(cell, data, atk=exp.cfg.attacks[0])
    return out


def test_table_cell_inputs_are_its_own(tmp_path):
    """A ctrap_table cell depends on its seed and its defense's own alignment overrides, not on the table's other
    rows or on how many seeds the table has."""
    cells = _table_inputs(tmp_path)
    assert set(cells) == {"sft.seed0", "sft.seed1", "sft2.seed0", "sft2.seed1"}
    assert cells["sft.seed0"]["seed"] == 0 and cells["sft.seed1"]["seed"] == 1
    assert cells["sft.seed0"]["alignment"]["batch_size"] == 4 and cells["sft2.seed0"]["alignment"]["batch_size"] == 2
    assert cells["sft.seed0"]["attack"]["n"] == 8 and cells["sft.seed0"]["eval"]["eval_steps"] == []
    grown = _table_inputs(tmp_path, seeds=[0, 1, 2])
    assert all(grown[k] == v for k, v in cells.items())
