"""`--resume` with a changed EaaS recipe (versioned stages, packaged MiniLM provider, 1-layer head-only copier):
changed verification settings re-verify without re-stealing or retraining the copy, and equal a fresh run of the
changed recipe in a new directory; a changed watermark makes a new secret (the old watermark.json is deleted, not
restored) and recomputes everything built on it — API arrays, copy, checks, utility — while the SPA suffix search
and the clean provider's utility are loaded untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tamperlab.experiments.base import execute, load_recipe

from stage_log import log_events, resume_stages, stage_stamps  # tests/ is on sys.path

pytestmark = pytest.mark.slow  # three runs of the real pipeline (MiniLM, HTTP service, copies)


def _recipe(out: Path, name: str) -> dict[str, Any]:
    return {
        "experiment": "eaas", "name": name, "output_dir": str(out), "seed": 2022,
        "server": {"keys": [{"name": "stealer"}], "requests_per_minute": 100000, "burst": 64,
                   "texts_per_minute": 10000000, "max_batch": 256},
        "data": {"task": "gen_topic", "n_train": 32, "n_test": 12},
        "scenarios": [{"name": "embmarker", "watermark": "embmarker", "steal_after_spa": False,
                       "watermark_config": {"trigger_seed": 2022}}],
        "control": False,
        "stealer": {"n_layers": 1, "epochs": 0, "head_epochs": 2, "max_seq_length": 32},
        "spa": {"pool_size": 16, "candidates": 4, "n_suffixes": 2, "pca_components": 2, "kde_grid": 64},
        "verify": {"size": 4},
        "downstream": {"epochs": 1},
    }


VERIFY = ["embmarker_verify_api", "embmarker_verify_copy_before_spa"]


def test_changed_eaas_recipe_recomputes_exactly_the_stages_downstream(tmp_path):
    recipe = _recipe(tmp_path, "v")
    run = execute(load_recipe(recipe))
    first = sorted(e["stage"] for e in log_events(run.path) if e["event"] == "stage_done")
    assert set(VERIFY) <= set(first) and "embmarker_copy_before_spa" in first
    before = stage_stamps(run.path)
    copy_model = sorted((run.path / "copies" / "embmarker_before_spa").rglob("*.safetensors"))[0].read_bytes()

    # downstream: verification settings re-verify the API and the copy; nothing is queried or trained again
    ver = copy.deepcopy(recipe)
    ver["verify"]["size"] = 6
    assert resume_stages(ver, run.path) == VERIFY
    after = stage_stamps(run.path)
    assert {k: v for k, v in after.items() if k not in VERIFY} == {k: v for k, v in before.items() if k not in VERIFY}
    fresh = execute(load_recipe({**ver, "name": "fresh"}))  # a second, independent computation
    for key in VERIFY:
        got, want = run.load_stage(key), fresh.load_stage(key)
        assert len(got["scores_backdoor"]) == 6 and got == want, key

    # upstream: another trigger seed is another secret: the API's answers, the copy and every check change; the
    # attacker's suffix search (local surrogate) and the clean provider's utility do not
    wm = copy.deepcopy(ver)
    wm["scenarios"][0]["watermark_config"]["trigger_seed"] = 7
    old_triggers = json.loads((run.path / "provider" / "embmarker" / "watermark.json").read_text())
    redone = resume_stages(wm, run.path)
    assert redone == sorted(["embmarker_secret", "array-embmarker_api_main_train", "array-embmarker_api_main_test",
                             "array-embmarker_api_spa_perturbed", "embmarker_verify_api", "utility_embmarker_api",
                             "embmarker_copy_before_spa", "array-embmarker_before_spa_main_train",
                             "array-embmarker_before_spa_main_test", "embmarker_verify_copy_before_spa",
                             "utility_embmarker_copy_before_spa"])
    after = stage_stamps(run.path)
    for key in ("array-spa_suffix_idx", "utility_clean_provider"):
        assert after[key] == before[key], key
    assert json.loads((run.path / "provider" / "embmarker" / "watermark.json").read_text()) != old_triggers
    assert sorted((run.path / "copies" / "embmarker_before_spa").rglob("*.safetensors"))[0].read_bytes() != copy_model
    assert resume_stages(wm, run.path) == []  # unchanged recipe: nothing is computed
