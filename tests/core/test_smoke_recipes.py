"""Smoke mode: every packaged recipe — the 7B GPU paper recipes included — runs end to end with `--smoke` (tiny
model of the same family, hub loaders on their schema fixtures, 2 steps per stage) to a report that says
`smoke: true`, with the structure its recipe asks for (rows per defense × attack, every fingerprint × removal,
every scenario, every training stage at exactly 2 steps)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from tamperlab import smoke
from tamperlab.cli import main
from tamperlab.config import to_dict
from tamperlab.experiments.base import RECIPES_DIR, load_recipe

RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
SLOW_SMOKE = {"hft_grid_demo", "hft_grid_gpu"}
"""Grids whose smoke run has 60-100 stages (minutes even on a tiny model: 504 s / 2311 s on the shared
2-core machine at load 15): still run, under `-m slow`. Their defenses', attacks' and report's code paths run in the
fast smoke of ctrap_table_full / ctrap_table_sweep_demo / hft_lmeval_demo and in tests/core/test_grid_report.py."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # One folder for the whole module, so demo_extraction_grpo's init_from finds demo_extraction-smoke (alphabetical
    # order runs it first) exactly as the real recipes chain.
    return tmp_path_factory.mktemp("smoke")


def _walk(obj, key):
    """Every value stored under `key` anywhere in a nested dict/list (an independent walk over the plain dict)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _train_sections(obj):
    """Every TrainConfig-shaped dict (it has learning_rate, max_steps and save_steps)."""
    if isinstance(obj, dict):
        if {"learning_rate", "max_steps", "save_steps"} <= set(obj):
            yield obj
        for v in obj.values():
            yield from _train_sections(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _train_sections(v)


# --- the transformation ------------------------------------------------------------------------------------------
def test_every_rule_names_a_real_config_field():
    import importlib

    for qual, rules in smoke.RULES.items():
        mod, cls = qual.rsplit(".", 1)
        obj = getattr(importlib.import_module(mod), cls)
        names = {f.name for f in dataclasses.fields(obj)}
        assert set(rules) <= names, (qual, set(rules) - names)


@pytest.mark.parametrize("spec,family", [
    ("meta-llama/Llama-2-7b-hf", "llama"), ("meta-llama/Llama-2-7b-chat-hf", "llama"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2"), ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    ("LLM360/AmberChat", "llama"), ("embedded:smollm2-135m-instruct", "llama"), ("tiny:qwen2", "qwen2")])
def test_model_family_from_the_name(spec, family):
    assert smoke.model_family(spec) == family


def test_model_family_from_a_local_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert smoke.model_family(str(tmp_path)) == "qwen2"


@pytest.mark.parametrize("name", ["ctrap_table_full", "extraction_paper_gpu", "meraser_paper_gpu", "eaas_full"])
def test_apply_shrinks_every_stage_and_leaves_the_recipe_alone(name):
    exp = load_recipe(name)
    before = to_dict(exp.cfg)
    cfg = smoke.apply(exp.cfg)
    assert to_dict(exp.cfg) == before  # a copy: the loaded recipe is unchanged
    after = to_dict(cfg)
    assert cfg.smoke is True and cfg.name == before["name"] + "-smoke" and cfg.smoke_substitutions
    assert all(v <= 2 for v in _walk(after, "max_steps") if isinstance(v, int))
    if name == "eaas_full":  # sentence embedders, no causal LM: the copier trains one epoch on a handful of texts
        assert cfg.stealer.epochs == 1 and cfg.stealer.n_layers == 1 and cfg.data.n_train <= 24
        return
    models = list(_walk(after, "name_or_path"))
    assert models and all(m.startswith("tiny:") for m in models)
    sections = list(_train_sections(after))
    # Fingerprint / removal params carry their component's default TrainConfig once filled in: every one counts.
    assert sections and all(s["max_steps"] == smoke.SMOKE_STEPS and s["batch_size"] <= 2 for s in sections)
    assert smoke.apply(cfg).name == cfg.name  # idempotent name


@pytest.mark.parametrize("world,per_process", [("1", 2), ("2", 1), ("3", 1)])
def test_training_batch_is_split_over_the_launched_processes(world, per_process, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", world)
    cfg = smoke.apply(load_recipe("demo_ctrap").cfg)
    sections = list(_train_sections(to_dict(cfg)))
    assert sections and {s["batch_size"] for s in sections} == {per_process}
    aux = [v for k in ("helpful_batch_size", "harmful_batch_size") for v in _walk(to_dict(cfg), k)]
    assert aux and set(aux) == {per_process}
    assert (f"{world} processes" in " ".join(cfg.smoke_substitutions)) == (world != "1")


def test_qwen_recipe_gets_a_tiny_qwen2():
    cfg = smoke.apply(load_recipe("extraction_paper_gpu").cfg)
    assert cfg.model.name_or_path == "tiny:qwen2"


# --- the hub loaders on their fixtures ---------------------------------------------------------------------------
def test_hub_loaders_read_every_fixture():
    from tamperlab.data.hub import fixture_path, fixtures_only
    from tamperlab.data.packs import HarmfulDataConfig, build_hub
    from tamperlab.data.tasks import TASKS
    from tamperlab.eaas.data import HUB_TASKS, hub_task
    from tamperlab.extraction.data import _load_source
    from tamperlab.fingerprints.cleandata import CleanDataConfig, load_clean_data

    with fixtures_only():
        d = build_hub(HarmfulDataConfig(source="hub", n_eval=3, n_align=4, n_attack=5, n_helpful=3, align_start=2))
        # refusal rows 2 < i < 7 (official slicing), attack rows 0..4, first 3 unsafe BeaverTails rows
        sizes = [len(getattr(d, k)) for k in ("eval_prompts", "align_refusal", "attack_harmful", "helpful")]
        assert sizes == [3, 4, 5, 3]
        assert d.align_refusal.examples[0].prompt == "Tell me how to break into the server number 3."
        for t in ("sst2", "agnews", "gsm8k"):
            assert len(TASKS.get(t).load("eval", 3, "hub")) == 3
        clean = load_clean_data(CleanDataConfig(source="hub", n_train=5, n_heldout=2))
        assert len(clean.train) == 5 and len(clean.heldout) == 2
        for src in ("ultrafeedback", "dolly", "finance"):
            exs, prov = _load_source(src, 4, "d2", "train", 0)
            assert len(exs) == 4 and prov["source"].startswith("hub:")
        for name in HUB_TASKS:
            assert len(hub_task(name, "train", 5, 0)) == 5
    assert fixture_path("glue", "sst2") == fixture_path("stanfordnlp/sst2")


# --- every packaged recipe, end to end ---------------------------------------------------------------------------
def _lm_eval_cells(cfg, rows: dict) -> None:
    """eval.lm_eval set: every aligned / attacked cell has one result per requested task, offline (stand-in or
    labelled skip) on 2 items; unset: no cell has any."""
    cells = [m for r in rows.values() for m in ([r["aligned"]] if "aligned" in r else []) + list(r["attacks"].values())]
    for m in cells:
        if not cfg.eval.lm_eval.tasks:
            assert "lm_eval" not in m
            continue
        assert list(m["lm_eval"]) == cfg.eval.lm_eval.tasks
        for r in m["lm_eval"].values():
            assert "skipped" in r or (r["stand_in"] and r["n"] == 2 and r["metrics"])


def _expected_structure(kind: str, cfg, res: dict) -> None:
    if kind in ("ctrap", "hft"):
        _lm_eval_cells(cfg, res)
        assert list(res) == [d.key for d in cfg.defenses]
        for row in res.values():
            assert row["alignment"]["steps"] == smoke.SMOKE_STEPS
            assert list(row["attacks"]) == [a.label for a in cfg.attacks]
            for a, m in zip(cfg.attacks, row["attacks"].values()):
                # a training-free attack (refusal-ablation) records no training
                assert "hs_io" in m and (m["train"] is None or m["train"]["steps"] == smoke.SMOKE_STEPS)
                assert ("fa" in m) == getattr(a, "uses_task", False)
    elif kind == "ctrap_table":
        seeds = [str(s) for s in (cfg.seeds or [cfg.seed])]
        assert res["defenses"] == [d.key for d in cfg.defenses] and list(res["per_seed"]) == seeds
        for rows in res["per_seed"].values():
            _lm_eval_cells(cfg, rows)
            for row in rows.values():
                assert row["alignment"]["steps"] == smoke.SMOKE_STEPS
                assert list(row["attacks"]) == [a.label for a in cfg.attacks]
        assert list(res["summary"]) == res["defenses"]
    elif kind == "extraction":
        assert res["training"] and all(t["steps"] == smoke.SMOKE_STEPS for t in res["training"].values())
        assert "backdoor_sft" in res["evaluations"]
        if cfg.grpo.enabled:
            assert any("grpo" in k for k in res["training"])
    elif kind == "fingerprints":
        fps = [f.name for f in cfg.fingerprints]
        assert list(res["fingerprints"]) == fps
        for name, row in res["fingerprints"].items():
            want = [r.key for r in cfg.removals if not r.targets or name in r.targets]
            assert list(row["removals"]) == want
            assert row["embed"]["steps"] == smoke.SMOKE_STEPS
    elif kind == "eaas":
        assert list(res["scenarios"]) == [s.name for s in cfg.scenarios]
    elif kind == "study":
        assert [r["variant"] for r in res["variants"]] == [v.name for v in cfg.variants]
        assert len(cfg.variants) <= 2  # smoke: the first and the last variant
        for row in res["variants"]:
            assert row["aligned_collapse"]["n"] > 0 and row["harmful_hs"]["n"] > 0 and row["benign_fa"]["n"] > 0
            assert set(row["shape"]) == {"aligned", "harmful", "benign", "all"}
            assert set(row["diagnostics"]) == {cfg.defense, cfg.reference}
            assert all({"aligned", "after harmful FT", "after benign FT"} == set(d) for d in row["diagnostics"].values())
    else:  # a new experiment kind: add its expected structure here
        raise AssertionError(f"no structure check for experiment {kind!r}")


def _chained_runs() -> set[str]:
    """Run names some recipe starts from (`init_from: runs/<name>`): their smoke runs keep their weights."""
    out = set()
    for p in RECIPES_DIR.glob("*.yaml"):
        src = yaml.safe_load(p.read_text()).get("init_from")
        if src:
            out.add(str(src).rstrip("/").rsplit("/", 1)[-1])
    return out


CHAINED = _chained_runs()


def _drop_weights(run) -> None:
    """Delete a finished smoke run's weights, optimizer states and checkpoints (kept: metrics, reports, logs).
    The 41 smoke runs wrote 1.9 GB into one module folder, and a CI machine with a small disk ran out of space
    halfway through the suite; a run that another recipe chains from keeps everything."""
    import shutil

    if not run.is_dir():
        return
    for path in sorted(run.rglob("*"), reverse=True):
        if path.is_dir() and path.name.startswith("checkpoint-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in {".safetensors", ".pt", ".bin", ".pth"}:
            path.unlink(missing_ok=True)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMOKE else n for n in RECIPES])
def test_recipe_runs_in_smoke_mode(name, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    recipe = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    run = workdir / "runs" / f"{recipe['name']}-smoke"  # never the real run's directory
    try:
        _check_smoke_run(name, recipe, workdir, run)
    finally:
        if recipe["name"] not in CHAINED:
            _drop_weights(run)


def test_chained_runs_are_found():
    assert "demo_extraction" in CHAINED  # demo_extraction_grpo starts from it


def _check_smoke_run(name, recipe, workdir, run):
    assert main(["run", name, "--smoke"]) == 0
    assert not (workdir / "runs" / recipe["name"]).exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["smoke"] is True and metrics["config"]["smoke"] is True and metrics["smoke_substitutions"]
    assert list(metrics)[0] == "smoke"
    md = (run / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("**SMOKE RUN (smoke: true)")
    assert "SMOKE RUN" in (run / "report.html").read_text()
    exp = load_recipe(metrics["config"])  # the resolved smoke config
    _expected_structure(recipe["experiment"], exp.cfg, metrics["results"])
    assert all(m.startswith("tiny:") for m in _walk(metrics["config"], "name_or_path"))


# --- the same smoke run in 2 processes ---------------------------------------------------------------------------
_PER_RUN = ("seconds", "per_second", "batch_size", "world_size", "per_device", "smoke_substitutions")
"""Keys that name how the run was executed (timings, per-process batch, process count), not what it computed."""


def test_differences_sees_a_changed_number():
    from launching import differences

    assert differences({"a": [1.0, float("nan")], "seconds": 3}, {"a": [1.0, float("nan")], "seconds": 9},
                       _PER_RUN) == []
    assert differences({"a": {"hs": 0.5}}, {"a": {"hs": 0.51}}) == ["/a/hs: 0.5 vs 0.51"]
    assert differences({"a": ["x"]}, {"a": ["y"]}) == ["/a[0]: 'x' vs 'y'"]
    assert differences({"a": 1.0}, {"a": 1.0, "b": 2}) == ["/b: only on one side"]
    assert differences({"a": float("nan")}, {"a": 0.0}) == ["/a: nan vs 0.0"]


def test_two_process_smoke_run_equals_one_process(workdir, monkeypatch):
    """`accelerate launch` (2 CPU processes) of `demo_ctrap --smoke` computes the 1-process smoke run's results:
    every loss, HS, FA, collapse rate and generated answer. Smoke mode splits its global batch of 2 over the
    processes, so both runs take the same optimizer steps."""
    from launching import differences, launch, run_ok

    one = workdir / "runs" / "demo_ctrap-smoke" / "metrics.json"
    if not one.exists():  # the module's smoke run of demo_ctrap did not run (test selection): run it here
        monkeypatch.chdir(workdir)
        assert main(["run", "demo_ctrap", "--smoke"]) == 0
    out = workdir / "two_processes"
    run_ok(launch("-m", "tamperlab.cli", "run", "demo_ctrap", "--smoke", "--output-dir", str(out)))
    two = json.loads((out / "demo_ctrap-smoke" / "metrics.json").read_text())
    first = json.loads(one.read_text())
    assert differences(first["results"], two["results"], _PER_RUN) == []
    assert "2 processes" in " ".join(two["smoke_substitutions"])
    assert first["results"]["ctrap"]["alignment"]["steps"] == two["results"]["ctrap"]["alignment"]["steps"] == 2
    _drop_weights(out / "demo_ctrap-smoke")
