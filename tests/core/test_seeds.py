"""`seeds: [...]` in any recipe: one ordinary run per seed in `<run>/seed-<s>/`, an aggregate metrics.json that an
independent recomputation (numpy mean / sd, statsmodels Wilson) reproduces, seed-s sub-runs equal to plain runs
with `seed: s`, a resume that re-runs only the unfinished seed, and one-line errors for bad seed lists.

The experiment is the cheapest full one: `ctrap` (hft) with SFT only on the tiny random model (~15 s per seed on
2 loaded cores; the tiny EaaS smoke run took ~55 s).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from tamperlab.cli import main
from tamperlab.errors import ConfigError
from tamperlab.experiments import repeat
from tamperlab.experiments.base import execute, load_recipe
from tamperlab.experiments.ctrap import HFTExperiment
from tamperlab.report.seeds import summaries

from ctrap.helpers import tiny_attack, tiny_hft_recipe  # tests/ is on sys.path


def recipe(out, name, **extra):
    return tiny_hft_recipe(out, name, experiment="ctrap",
                           attacks=[tiny_attack(8, max_steps=1, batch_size=2, save_steps=1)],
                           eval={"eval_steps": [1], "n_trajectory_prompts": 2, "n_loss_probe": 2,
                                 "generation": {"max_new_tokens": 4}}, **extra)


def events(run_dir, kind=None):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [e for e in lines if kind is None or e["event"] == kind]


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """seeds [0, 1], killed when seed 1 starts its attack (seed 0 finished, seed 1's alignment cached), then
    resumed. Returns the parent path and what seed 0 looked like before the resume."""
    out = tmp_path_factory.mktemp("seeds")
    original = HFTExperiment.attack

    def killed(self, run, *a, **k):
        if run.path.name == "seed-1":
            raise KeyboardInterrupt
        return original(self, run, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFTExperiment, "attack", killed)
        with pytest.raises(KeyboardInterrupt):
            execute(load_recipe(recipe(out, "rep", seeds=[0, 1])))
    parent = out / "rep"
    before = {"seed0_metrics": (parent / "seed-0" / "metrics.json").read_bytes(),
              "seed0_log": (parent / "seed-0" / "log.jsonl").read_bytes(),
              "seed1_metrics": (parent / "seed-1" / "metrics.json").exists(),
              "parent_metrics": (parent / "metrics.json").exists()}
    run = execute(load_recipe(recipe(out, "rep", seeds=[0, 1])), resume=True)
    assert run.path == parent
    return out, parent, before


# -- (3) resume ---------------------------------------------------------------------------------------------------
def test_resume_reruns_only_the_unfinished_seed(repeated):
    _, parent, before = repeated
    assert not before["seed1_metrics"] and not before["parent_metrics"]
    # seed 0 was finished: not run again (log and metrics.json byte-identical)
    assert (parent / "seed-0" / "log.jsonl").read_bytes() == before["seed0_log"]
    assert (parent / "seed-0" / "metrics.json").read_bytes() == before["seed0_metrics"]
    assert [e["seed"] for e in events(parent, "seed_start")] == [0, 1, 1]
    assert [e["seed"] for e in events(parent, "seed_skipped")] == [0]
    # seed 1 continued through its stage cache: its alignment was computed once, before the kill
    s1 = parent / "seed-1"
    assert len(events(s1, "run_start")) == 2
    assert [e["resume"] for e in events(s1, "run_start")] == [True, True]
    done = [e["stage"] for e in events(s1, "stage_done")]
    assert done.count("align-sft") == 1 and done.count("attack-sft-harmful-n8") == 1
    assert events(s1)[-1]["event"] == "run_done"
    cfg = load_recipe(str(s1 / "config.yaml")).cfg
    assert (cfg.seed, cfg.seeds, cfg.name) == (1, [], "seed-1")


# -- (1) the aggregate against an independent recomputation ----------------------------------------------------------
def _leaves(tree, path=""):
    """{JSON Pointer: number or Wilson record} of one seed's results, walked independently of repeat.py: a dict with
    value/lo/hi/n/method is one record; lists of numbers (per-prompt vectors) are not metrics."""
    out = {}
    if isinstance(tree, dict) and {"value", "lo", "hi", "n", "method"} <= set(tree):
        out[path] = tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_leaves(v, f"{path}/{k}"))
    elif isinstance(tree, list) and all(isinstance(x, dict) for x in tree):
        for i, v in enumerate(tree):
            out.update(_leaves(v, f"{path}/{i}"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[path] = tree
    return out


def _get(tree, pointer):
    for p in pointer.lstrip("/").split("/"):
        tree = tree[int(p)] if isinstance(tree, list) else tree[p]
    return tree


def test_aggregate_equals_an_independent_recomputation(repeated):
    _, parent, _ = repeated
    agg = json.loads((parent / "metrics.json").read_text())
    seeds = [json.loads((parent / f"seed-{s}" / "metrics.json").read_text())["results"] for s in (0, 1)]
    leaves = [_leaves(r) for r in seeds]
    common = set(leaves[0]) & set(leaves[1])
    # every number present in both seeds is summarised, and nothing else
    assert {p for p, _ in summaries(agg["results"])} == common
    n_pooled = 0
    for ptr in sorted(common):
        got = _get(agg["results"], ptr)
        a, b = leaves[0][ptr], leaves[1][ptr]
        xs = [a["value"], b["value"]] if isinstance(a, dict) else [a, b]
        assert got["n_seeds"] == 2 and got["values"] == pytest.approx(xs, nan_ok=True), ptr
        if any(math.isnan(x) for x in xs):
            assert math.isnan(got["mean"]), ptr
            continue
        assert got["mean"] == pytest.approx(np.mean(xs), rel=1e-12, abs=1e-12), ptr
        assert got["sd"] == pytest.approx(np.std(xs, ddof=1), rel=1e-9, abs=1e-12), ptr
        if isinstance(a, dict) and a["method"] == "wilson":
            k, n = a["k"] + b["k"], a["n"] + b["n"]
            lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
            # every HFT rate is stored in percent
            assert got["pooled"]["k"] == k and got["pooled"]["n"] == n, ptr
            assert (got["pooled"]["lo"], got["pooled"]["hi"]) == pytest.approx((100 * lo, 100 * hi)), ptr
            n_pooled += 1
    assert n_pooled >= 5
    assert agg["repeat"]["seeds"] == [0, 1] and agg["config"]["seeds"] == [0, 1]
    assert agg["results"]["sft"]["alignment"]["resumed_from"] is None  # equal non-numeric leaves are kept
    # the report: one row per differing metric with mean ± sd and both seeds' values, and links to both seeds
    md = (parent / "report.md").read_text()
    tl = agg["results"]["sft"]["alignment"]["train_loss"]
    assert f"| `sft › alignment › train_loss` | {tl['mean']:.4g} ± {tl['sd']:.4g} |" in md
    assert "(seed-0/report.md)" in md and "(seed-1/report.html)" in md
    assert "<table>" in (parent / "report.html").read_text()


def test_tamperlab_report_rerenders_the_parent(repeated):
    _, parent, _ = repeated
    before = (parent / "report.md").read_text()
    (parent / "report.md").unlink()
    (parent / "seed-1" / "report.md").unlink()
    assert main(["report", str(parent)]) == 0
    assert (parent / "report.md").read_text() == before
    assert (parent / "seed-1" / "report.md").exists()


# -- (2) determinism: a seed's sub-run is the plain run with that seed -----------------------------------------------
def test_seed_subrun_equals_a_plain_run_with_that_seed(repeated):
    out, parent, _ = repeated
    plain = execute(load_recipe(recipe(out, "plain1", seed=1))).load_metrics()
    sub = json.loads((parent / "seed-1" / "metrics.json").read_text())
    assert json.dumps(sub["results"], sort_keys=True) == json.dumps(plain["results"], sort_keys=True)
    seed0 = json.loads((parent / "seed-0" / "metrics.json").read_text())
    assert seed0["results"]["sft"]["alignment"]["train_loss"] != sub["results"]["sft"]["alignment"]["train_loss"]


# -- the aggregation rules on hand-made trees ------------------------------------------------------------------------
def test_aggregate_rules_by_hand():
    from tamperlab.stats import rate_record

    trees = [{"acc": 0.5, "fsr": rate_record(0, 10), "name": "x", "tag": "a", "only0": 1.0, "flags": [1, 0],
              "rows": [{"v": 1}], "ok": True},
             {"acc": 0.7, "fsr": rate_record(3, 10), "name": "x", "tag": "b", "flags": [1, 1],
              "rows": [{"v": 3}], "ok": True}]
    agg, varying = repeat.aggregate(trees, "/results")
    assert agg["acc"]["mean"] == pytest.approx(0.6) and agg["acc"]["sd"] == pytest.approx(np.std([.5, .7], ddof=1))
    lo, hi = proportion_confint(3, 20, method="wilson")  # scale 1 read back even from the k = 0 record
    assert agg["fsr"]["pooled"] == pytest.approx({"value": 0.15, "lo": lo, "hi": hi, "n": 20, "method": "wilson",
                                                  "k": 3})
    assert agg["fsr"]["values"] == [0.0, 0.3]
    assert agg["name"] == "x" and agg["ok"] is True and agg["rows"][0]["v"]["values"] == [1.0, 3.0]
    assert "tag" not in agg and "only0" not in agg and "flags" not in agg
    assert sorted(varying) == ["/results/flags", "/results/only0", "/results/tag"]


# -- (4) bad input and configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds,fragment", [
    ([0, 0, 1], "duplicate seeds [0]"), (["a"], "seeds[0]: expected an integer"), ([1.5], "expected an integer"),
    ([-1], "seeds[0] must be in [0, 4294967295]"), (3, "seeds: expected a list"), ([2**32], "must be in")])
def test_bad_seed_lists_are_one_line_config_errors(tmp_path, seeds, fragment):
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe(tmp_path, "bad", seeds=seeds))
    assert fragment in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="duplicate seeds"):
        load_recipe("ctrap_table_demo", ["seeds=[1,1]"])


def test_cli_bad_seeds_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(json.dumps(recipe(tmp_path, "x")))
    assert main(["run", str(tmp_path / "r.yaml"), "--set", "seeds=[0,0]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tamperlab: error:") and "duplicate seeds" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_which_runs_repeat(tmp_path):
    from tamperlab import smoke

    exp = load_recipe(recipe(tmp_path, "r"), ["seeds=[0,1]"])
    assert exp.cfg.seeds == [0, 1] and repeat.repeats(exp)
    # --smoke keeps the seeds; every seed's run is a smoke run too
    exp.cfg = smoke.apply(exp.cfg)
    sub = repeat.seed_experiment(exp, 1, tmp_path / exp.cfg.name)
    assert exp.cfg.seeds == [0, 1] and sub.cfg.smoke and (sub.cfg.seed, sub.cfg.seeds) == (1, [])
    # one entry = a plain run with that seed
    one = load_recipe(recipe(tmp_path, "r", seeds=[3]))
    assert not repeat.repeats(one)
    repeat.apply_single_seed(one)
    assert one.cfg.seed == 3
    # ctrap_table repeats its cells itself (one data stage for every seed)
    table = load_recipe("ctrap_table_demo", ["seeds=[0,1]"])
    assert not repeat.repeats(table) and table.cfg.seeds == [0, 1]
