"""Attacker sweep of fingerprint removal on the tiny model: each trial equals the same removal run as a fixed
(non-swept) removal with the trial's parameters (a second computation through the experiment's removal loop), the
aggregate minimises FSR, a sweep with one trial's stage missing recomputes only that trial, the report renders."""

from __future__ import annotations

import pytest

from tamperlab.errors import ConfigError
from tamperlab.experiments.base import execute, load_recipe
from tamperlab.experiments.fingerprints import FingerprintExperiment
from tamperlab.stats import wilson
from tamperlab.sweep import trial_key

from .test_fp_pipeline import TINY_ERASE

FP_PARAMS = {"prompt_format": "raw", "n_fingerprints": 2, "n_negatives": 0, "n_regularization": 0,
             "min_snippets": 2, "max_snippets": 3,
             "embed": {"train": {"learning_rate": 1e-2, "max_steps": 60, "batch_size": 2, "grad_accum": 1,
                                 "lr_scheduler": "constant", "weight_decay": 0.0}}}
BASE_LR, OTHER_LR = 2e-2, 2e-3


def recipe(out, **sweep):
    erase = {**TINY_ERASE, "data_format": "raw"}
    return {
        "experiment": "fingerprints", "name": "fpsweep", "output_dir": str(out),
        "model": {"name_or_path": "tiny:llama"},
        "clean_data": {"n_train": 24, "n_heldout": 8, "response_tokens": 8},
        "utility": {"ppl_examples": 8, "mc_items": 14, "lm_eval": "off"},
        "evaluate_base": False,
        "fingerprints": [{"name": "instructional", "params": FP_PARAMS}],
        "removals": [
            {"name": "meraser", "params": {"erase": erase, "do_recover": False}},
            # the sweep's second trial as a fixed removal: the second computation of that trial
            {"name": "meraser", "label": "meraser-other-lr", "params": {
                "erase": {**erase, "train": {**erase["train"], "learning_rate": OTHER_LR}}, "do_recover": False}},
        ],
        "sweep": {"enabled": True, "removal": "meraser", "space": {"learning_rate": [BASE_LR, OTHER_LR]},
                  "top_n": 1, "utility_threshold": 0.0, **sweep},
    }


@pytest.fixture
def count_removals(monkeypatch):
    original = FingerprintExperiment.apply_removal
    calls: list[str] = []

    def apply_removal(self, run, removal, name, fp, fps, clean, tok, work_dir, key):
        calls.append(key)
        return original(self, run, removal, name, fp, fps, clean, tok, work_dir, key)

    monkeypatch.setattr(FingerprintExperiment, "apply_removal", apply_removal)
    return calls


def _stage_view(ev):
    return {"fsr": ev["fsr"]["official"]["fsr"], "hits": ev["fsr"]["official"]["hits"],
            "acc": ev["utility"]["acc"], "ppl": ev["utility"]["ppl"]}


def test_fingerprint_sweep_equals_fixed_removals_and_resumes(tmp_path, count_removals):
    run = execute(load_recipe(recipe(tmp_path)))
    res = run.load_metrics()["results"]["fingerprints"]["instructional"]
    s = res["sweep"]
    assert [t["params"] for t in s["trials"]] == [{"learning_rate": BASE_LR}, {"learning_rate": OTHER_LR}]
    assert s["stage"] == "erase" and s["attack"] == "meraser"
    # second computation: each trial = the fixed removal with the same parameters, stage by stage
    for t, fixed in zip(s["trials"], ("meraser", "meraser-other-lr")):
        erase = res["removals"][fixed]["stages"]["erase"]
        assert {k: t[k] for k in ("fsr", "hits", "acc", "ppl")} == _stage_view(erase)
        stage = run.load_stage(f"sweep-instructional-{t['key']}")
        assert _stage_view(stage["stages"]["erase"]) == _stage_view(erase)
    assert s["fixed"]["fsr"] == res["removals"]["meraser"]["stages"]["erase"]["fsr"]["official"]["fsr"]
    # the aggregate minimises FSR: the owner's worst case is the lowest FSR, with its Wilson interval
    low = min(s["trials"], key=lambda t: t["fsr"])  # min() keeps the first of equal values, as aggregate does
    ref = wilson(low["hits"], low["n"], scale=1.0)
    assert s["aggregate"]["worst_case"]["key"] == low["key"]
    assert s["aggregate"]["worst_case"]["value"] == pytest.approx(ref.value)
    assert (s["aggregate"]["worst_case"]["lo"], s["aggregate"]["worst_case"]["hi"]) == pytest.approx((ref.lo, ref.hi))
    assert s["aggregate"]["worst_case"]["acc"] == low["acc"]
    assert s["aggregate"]["best_so_far"] == [s["trials"][0]["fsr"], min(t["fsr"] for t in s["trials"])]
    md = (tmp_path / "fpsweep" / "report.md").read_text()
    assert "## Attacker sweep (fingerprint removal)" in md and "fixed FSR" in md and "worst case, acc ≥ 0" in md
    assert (tmp_path / "fpsweep" / "plots" / "sweep_best_so_far.png").exists()

    # resume with one trial's stage present (the other deleted): only the missing trial is computed again
    second = s["trials"][1]["key"]
    (tmp_path / "fpsweep" / "stages" / f"sweep-instructional-{second}.json").unlink()
    count_removals.clear()
    again = execute(load_recipe(recipe(tmp_path)), resume=True)
    assert count_removals == [f"sweep-instructional-{second}"]
    redone = again.load_metrics()["results"]["fingerprints"]["instructional"]["sweep"]
    # the same results (the recomputed trial reuses its saved erase adapter, as any resumed MEraser phase does);
    # only its wall time differs
    for t in redone["trials"] + s["trials"]:
        t.pop("seconds")
    assert redone == s


def test_fingerprint_sweep_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no removal labelled"):
        load_recipe(recipe(tmp_path, removal="nope"))
    bad = recipe(tmp_path, removal="prune")
    bad["removals"].append({"name": "prune_magnitude", "label": "prune"})
    with pytest.raises(ConfigError, match="no learning rate"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="no dimension"):
        load_recipe(recipe(tmp_path, space={}))
    with pytest.raises(ConfigError, match="yields erase, not 'recover'"):  # the removal skips recovery
        load_recipe(recipe(tmp_path, stage="recover"))


def test_trial_params_reach_the_phase_or_the_fine_tune():
    cfg = load_recipe(recipe("/tmp/unused", phases=["erase", "recover"],
                             space={"learning_rate": [1e-3], "epochs": [2.0]})).cfg
    spec = cfg.sweep.base_removal(cfg.removals)
    p = cfg.sweep.trial_params(spec, {"learning_rate": 1e-3, "epochs": 2.0})
    m = spec.__class__(spec.name, spec.label, p).build().cfg
    assert m.erase.train.learning_rate == m.recover.train.learning_rate == 1e-3
    assert m.erase.epochs == m.recover.epochs == 2.0 and m.erase.train.max_steps == 0
    assert m.erase.lora.target_modules == TINY_ERASE["lora"]["target_modules"]  # the rest of the removal kept
    ft = spec.__class__("finetune", "", {"n_examples": 4})
    m = spec.__class__("finetune", "", cfg.sweep.trial_params(ft, {"learning_rate": 1e-3, "epochs": 2.0})).build().cfg
    assert m.train.learning_rate == 1e-3 and m.train.epochs == 2.0 and m.n_examples == 4
    assert trial_key({"learning_rate": 1e-3}) != trial_key({"learning_rate": 2e-3})


def test_gpu_recipe_carries_the_paper_scale_grid():
    from tamperlab.sweep import grid_points

    exp = load_recipe("meraser_paper_gpu")
    assert not exp.cfg.sweep.enabled  # 36 erase + recover runs of a 7B model: opt-in
    raw = _plain("meraser_paper_gpu")
    cfg = load_recipe({**raw, "sweep": {**raw["sweep"], "enabled": True}}).cfg
    dims = cfg.sweep.space.dims()
    assert dims == {"learning_rate": [1e-4, 5e-4, 1e-3, 2e-3], "epochs": [1, 3, 5]} and len(grid_points(dims)) == 12
    spec = cfg.sweep.base_removal(cfg.removals)
    m = spec.__class__(spec.name, spec.label, cfg.sweep.trial_params(spec, grid_points(dims)[-1])).build().cfg
    assert m.erase.train.learning_rate == 2e-3 and m.erase.epochs == 5 and m.erase.train.bf16 == "true"
    assert m.recover.train.learning_rate == 5e-4  # recover keeps the published setting


def _plain(name):
    import yaml

    from tamperlab.experiments.base import RECIPES_DIR

    return yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
