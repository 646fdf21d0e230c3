"""Attacker sweep of SPA on a tiny run (packaged MiniLM provider, 1-layer copier): the trial with the recipe's own
SPA settings equals the run's fixed after-SPA copy (a second computation through the experiment's pipeline), the
aggregate minimises Δ, a sweep with one trial's stage missing recomputes only that trial, the report renders."""

from __future__ import annotations

import pytest

from tamperlab.errors import ConfigError
from tamperlab.experiments.base import execute, load_recipe

FRACTION, OTHER = 0.25, 0.5


def recipe(out, **sweep):
    return {
        "experiment": "eaas", "name": "spasweep", "output_dir": str(out), "seed": 2022,
        "provider": {"model": "embedded", "model_name": "tamperlab-minilm"},
        "server": {"keys": [{"name": "stealer"}], "requests_per_minute": 100000, "burst": 64,
                   "texts_per_minute": 10000000, "max_batch": 256},
        "data": {"task": "gen_topic", "n_train": 40, "n_test": 16},
        "scenarios": [{"name": "embmarker", "watermark": "embmarker"}],
        "control": False,
        "stealer": {"n_layers": 1, "epochs": 1, "head_epochs": 1, "max_seq_length": 32},
        "spa": {"pool_size": 16, "candidates": 4, "n_suffixes": 2, "pca_components": 2, "kde_grid": 64,
                "removal": "fraction", "remove_fraction": FRACTION},
        "verify": {"size": 4},
        "downstream": {"epochs": 1},
        "sweep": {"enabled": True, "space": {"remove_fraction": [FRACTION, OTHER]}, "top_n": 1, **sweep},
    }


@pytest.fixture
def count_copies(monkeypatch):
    import tamperlab.eaas.stealer as stealer

    original, calls = stealer.train_copier, []

    def train_copier(texts, targets, cfg, out_dir, seed=0):
        calls.append(str(out_dir))
        return original(texts, targets, cfg, out_dir, seed)

    monkeypatch.setattr(stealer, "train_copier", train_copier)
    return calls


@pytest.mark.slow  # the real pipeline (packaged MiniLM, HTTP service, 3 copies): ~2 min on 2 busy cores
def test_spa_sweep_equals_the_fixed_spa_and_resumes(tmp_path, count_copies):
    run = execute(load_recipe(recipe(tmp_path)))
    sc = run.load_metrics()["results"]["scenarios"]["embmarker"]
    s = sc["sweep"]
    assert [t["params"] for t in s["trials"]] == [{"remove_fraction": FRACTION}, {"remove_fraction": OTHER}]
    # second computation: the trial with the recipe's own SPA = the experiment's after-SPA copy
    same, other = s["trials"]
    after, acc = sc["verify_copy_after_spa"], sc["utility_copy_after_spa"]["gen_topic"]
    for k in ("delta", "p_value", "detected", "scores_backdoor", "scores_benign"):
        assert same[k] == after[k], k
    assert same["acc"] == acc and s["fixed"]["delta"] == after["delta"]
    assert (same["tpr"], same["fpr"], same["n_deleted"]) == (sc["spa"]["tpr"], sc["spa"]["fpr"], sc["spa"]["n_deleted"])
    assert other["n_deleted"] == round(OTHER * 40) and same["n_deleted"] == round(FRACTION * 40)
    # the aggregate minimises Δ (the attacker's objective): worst case = the lower Δ, best-so-far a running min
    low = min(s["trials"], key=lambda t: t["delta"])
    assert s["aggregate"]["worst_case"]["key"] == low["key"]
    assert s["aggregate"]["worst_case"]["value"] == pytest.approx(low["delta"], abs=1e-5)
    assert s["aggregate"]["best_so_far"] == pytest.approx([same["delta"], low["delta"]], abs=1e-5)
    md = (tmp_path / "spasweep" / "report.md").read_text()
    assert "## Attacker sweep (SPA)" in md and "fixed Δ" in md and "remove_fraction" in md
    assert (tmp_path / "spasweep" / "plots" / "sweep_best_so_far.png").exists()
    assert not (tmp_path / "spasweep" / "copies" / f"sweep-embmarker-{other['key']}").exists()

    # resume with one trial's stage present (the other deleted): only that trial trains a copy again
    (tmp_path / "spasweep" / "stages" / f"sweep-embmarker-{other['key']}.json").unlink()
    count_copies.clear()
    again = execute(load_recipe(recipe(tmp_path)), resume=True)
    assert len(count_copies) == 1 and count_copies[0].endswith(f"sweep-embmarker-{other['key']}")
    assert again.load_metrics()["results"]["scenarios"]["embmarker"]["sweep"] == s


def test_spa_sweep_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_suffixes"):
        load_recipe(recipe(tmp_path, space={"n_suffixes": [3]}))
    with pytest.raises(ConfigError, match="no scenario named"):
        load_recipe(recipe(tmp_path, scenarios=["nope"]))
    with pytest.raises(ConfigError, match="no dimension"):
        load_recipe(recipe(tmp_path, space={}))


def test_trial_spa_sets_the_deletion_rule():
    cfg = load_recipe(recipe("/tmp/unused", space={"remove_fraction": [0.1], "score": ["cos"],
                                                   "n_suffixes": [1]})).cfg
    spa = cfg.sweep.trial_spa(cfg.spa, {"remove_fraction": 0.1, "score": "cos", "n_suffixes": 1})
    assert (spa.removal, spa.remove_fraction, spa.score, spa.n_suffixes) == ("fraction", 0.1, "cos", 1)
    assert spa.candidates == cfg.spa.candidates  # the rest of SPA kept


def test_gpu_recipe_carries_the_paper_scale_grid():
    import yaml

    from tamperlab.experiments.base import RECIPES_DIR
    from tamperlab.sweep import grid_points

    raw = yaml.safe_load((RECIPES_DIR / "eaas_full.yaml").read_text())
    assert not load_recipe(raw).cfg.sweep.enabled  # 63 copies of a 6-layer backbone: opt-in
    cfg = load_recipe({**raw, "sweep": {**raw["sweep"], "enabled": True}}).cfg
    dims = cfg.sweep.space.dims()
    assert 0.296 in dims["remove_fraction"] and dims["score"] == ["pca", "cos", "l2"]
    assert len(grid_points(dims)) == 21 and cfg.sweep.targets(cfg.scenarios) == ["embmarker", "warden", "saw_defense"]
