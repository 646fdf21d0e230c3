"""`--resume` with a changed fingerprint recipe (versioned stages): changed MEraser parameters re-run that removal
only — not the embedding — and its result equals a fresh run of the changed recipe in a new directory; a changed
embedding re-trains the fingerprinted model and re-runs everything built on it, deleting its old model and
adapters, while the pair set, the clean data and the base model's evaluations are loaded untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tamperlab.experiments.base import execute, load_recipe

from stage_log import log_events, resume_stages, stage_stamps  # tests/ is on sys.path

EMBED = {"train": {"learning_rate": 1e-2, "max_steps": 6, "batch_size": 2, "grad_accum": 1,
                   "lr_scheduler": "constant", "weight_decay": 0.0}}


def _recipe(out: Path, name: str) -> dict[str, Any]:
    return {
        "experiment": "fingerprints", "name": name, "output_dir": str(out),
        "model": {"name_or_path": "tiny:llama"},
        "clean_data": {"n_train": 16, "n_heldout": 4, "response_tokens": 4},
        "utility": {"ppl_examples": 4, "mc_items": 6, "lm_eval": "off"},
        "fingerprints": [{"name": "instructional", "params": {
            "prompt_format": "raw", "n_fingerprints": 2, "n_negatives": 0, "n_regularization": 0,
            "min_snippets": 2, "max_snippets": 3, "embed": EMBED}}],
        "removals": [{"name": "meraser", "params": {
            "erase": {"n_examples": 8, "epochs": 2.0, "data_format": "raw",
                      "train": {"learning_rate": 2e-2, "batch_size": 8, "logging_steps": 1}},
            "recover": {"n_examples": 4, "epochs": 1.0, "train": {"batch_size": 4, "grad_accum": 1}}}}],
    }


def _fsr(entry: dict[str, Any]) -> dict[str, Any]:
    """What a removal measured, without its wall times."""
    return {stage: {"fsr": {v: {k: x for k, x in r.items() if k != "seconds"} for v, r in ev["fsr"].items()},
                    "utility": ev["utility"]} for stage, ev in entry["stages"].items()}


UPSTREAM = ["clean_data", "eval-base", "eval-base-instructional", "pairs-instructional"]
EMBEDDED = ["embed-instructional", "eval-instructional-fingerprinted"]
REMOVAL = "removal-meraser-instructional"


def test_changed_fingerprint_recipe_recomputes_exactly_the_stages_downstream(tmp_path):
    recipe = _recipe(tmp_path, "v")
    run = execute(load_recipe(recipe))
    assert sorted(e["stage"] for e in log_events(run.path) if e["event"] == "stage_done") == sorted(
        UPSTREAM + EMBEDDED + [REMOVAL])
    kept = stage_stamps(run.path, UPSTREAM + EMBEDDED)
    model = (run.path / "models" / "instructional" / "model.safetensors").read_bytes()
    first = run.load_stage(REMOVAL)

    # downstream: MEraser's erase learning rate re-runs the removal (old adapters deleted first), nothing else
    erase = copy.deepcopy(recipe)
    erase["removals"][0]["params"]["erase"]["train"]["learning_rate"] = 5e-3
    assert resume_stages(erase, run.path) == [REMOVAL]
    assert stage_stamps(run.path, UPSTREAM + EMBEDDED) == kept
    assert (run.path / "models" / "instructional" / "model.safetensors").read_bytes() == model
    changed = [e for e in log_events(run.path) if e["event"] == "stage_inputs_changed"]
    assert [(e["stage"], e["changed"]) for e in changed] == [
        (REMOVAL, ["removal.params.erase.train.learning_rate: 0.02 → 0.005"])]
    redone = run.load_stage(REMOVAL)
    assert redone["stages"]["erase"]["info"]["train"]["resumed_from"] is None  # trained anew, not reloaded
    assert redone["stages"]["erase"]["info"]["train"]["loss_history"] != first["stages"]["erase"]["info"]["train"][
        "loss_history"]
    fresh = execute(load_recipe(_recipe(tmp_path, "fresh") | {"removals": erase["removals"]}))
    assert _fsr(redone) == _fsr(fresh.load_stage(REMOVAL))  # the second, independent computation
    stats = run.path / "removals" / "meraser" / "instructional" / "erase_adapter.stats.json"
    assert json.loads(stats.read_text())["loss_history"] == redone["stages"]["erase"]["info"]["train"]["loss_history"]

    # upstream: the embedding's learning rate re-trains the fingerprinted model and re-runs what is built on it;
    # the pairs, the clean data and the base model's evaluations are loaded
    emb = copy.deepcopy(erase)
    emb["fingerprints"][0]["params"]["embed"]["train"]["learning_rate"] = 3e-3
    assert resume_stages(emb, run.path) == sorted(EMBEDDED + [REMOVAL])
    assert stage_stamps(run.path, UPSTREAM) == {k: kept[k] for k in UPSTREAM}
    assert (run.path / "models" / "instructional" / "model.safetensors").read_bytes() != model
    assert run.load_stage("embed-instructional")["resumed_from"] is None
    assert resume_stages(emb, run.path) == []  # unchanged recipe: nothing is computed
