"""The attacker sweep gated on an lm-evaluation-harness utility (`sweep.lm_eval`): the gate's values against an
independent computation (a plain forward pass over the same items, and metrics/lmeval.py run directly on the aligned
adapter read back from disk), the aggregation's worst case keeping utility (threshold and drop rule) on hand-made
trials, the skip rule on both sides of its threshold, load-time errors, and resume trial by trial."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from ctrap.test_sweep import recipe
from metrics.test_lmeval import CTX, _rows
from tamperlab.attacks.finetune import FineTuneAttack
from tamperlab.errors import ConfigError
from tamperlab.experiments import hft_sweep
from tamperlab.experiments.base import execute, load_recipe
from tamperlab.metrics.lmeval import LMEvalConfig, evaluate_utility
from tamperlab.models import ModelConfig, load_adapter, load_model
from tamperlab.stats import Interval, wilson
from tamperlab.sweep import TrialScore, aggregate

LIMIT = 8  # tamperlab_mc items per evaluation: enough for a non-trivial accuracy, fast on the tiny model
SWEEP = {"enabled": True, "space": {"learning_rate": [1e-3, 1e-2]}, "top_n": 1, "utility_threshold": 0.0,
         "lm_eval": {"tasks": ["tamperlab_mc"], "limit": LIMIT, "batch_size": 8}, "max_utility_drop": 100.0}


def lm_recipe(out, name, **sweep):
    return recipe(out, name, sweep={**SWEEP, **sweep})


def plain_acc(model, tok) -> int:
    """Items of the first LIMIT of tamperlab_mc a plain forward pass answers right (argmax over choices of
    Σ log p(choice tokens | the task's prompt), context and choice tokenized together and split at the context's
    length, as tests/metrics/test_lmeval.py's `_loglik`, here for all choices in one right-padded batch): lm-eval's
    `acc`, computed without lm-eval."""
    docs = _rows("tamperlab_mc.jsonl")[:LIMIT]
    pairs = [(i, CTX.format(q=d["question"]), " " + c) for i, d in enumerate(docs) for c in d["choices"]]
    ids = [tok(ctx + cont)["input_ids"] for _, ctx, cont in pairs]
    starts = [len(tok(ctx)["input_ids"]) for _, ctx, _ in pairs]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        logp = model(input_ids=batch, attention_mask=mask).logits.float().log_softmax(-1)
    lls = [float(sum(logp[r, j - 1, x[j]] for j in range(s, len(x)))) for r, (x, s) in enumerate(zip(ids, starts))]
    k = 0
    for i, d in enumerate(docs):
        mine = [ll for (j, _, _), ll in zip(pairs, lls) if j == i]
        k += int(np.argmax(mine)) == d["answer"]
    return k


@pytest.fixture(scope="module")
def lm_sweep(tmp_path_factory):
    """One tiny sweep (sft, 2 trials, lm-eval gate), killed while preparing its 2nd trial and resumed. Records
    the attacks prepared and a copy of every model the sweep's lm-eval utility was measured on, per invocation."""
    out = tmp_path_factory.mktemp("lm")
    log = {"prepare": 0, "kill_at": 3, "models": []}
    with pytest.MonkeyPatch.context() as mp:
        original = FineTuneAttack.prepare

        def prepare(self, base, adapter):
            log["prepare"] += 1
            if log["prepare"] == log["kill_at"]:
                raise KeyboardInterrupt
            return original(self, base, adapter)

        real = hft_sweep.evaluate_utility

        def spy(model, tok, cfg, samples=False):
            log["models"].append(copy.deepcopy(model))
            return real(model, tok, cfg, samples)

        mp.setattr(FineTuneAttack, "prepare", prepare)
        mp.setattr(hft_sweep, "evaluate_utility", spy)
        with pytest.raises(KeyboardInterrupt):  # prepares: fixed attack, trial 1, trial 2 (killed)
            execute(load_recipe(lm_recipe(out, "s")))
        first = {"stages": sorted(p.stem for p in (out / "s" / "stages").glob("sweep-*.json")),
                 "prepared": log["prepare"] - 1, "models": log["models"]}
        log.update(prepare=0, kill_at=None, models=[])
        run = execute(load_recipe(lm_recipe(out, "s")), resume=True)
        resumed = {"prepared": log["prepare"], "models": log["models"]}
    return run, first, resumed


def test_lm_gate_values_equal_an_independent_computation(lm_sweep, tokenizer):
    run, first, resumed = lm_sweep
    s = run.load_metrics()["results"]["sft"]["sweep"]
    assert s["utility_measure"] == {"measure": "lm_eval", "key": "utility", "label": "tamperlab_mc acc"}
    # the aligned model's utility: metrics/lmeval.py run directly on the adapter read back from disk, and a plain
    # forward pass; in %, with n and the Wilson interval of the same k / n
    base, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    aligned = load_adapter(base, run.path / "models" / "sft", trainable=False)
    direct = evaluate_utility(aligned, tok, LMEvalConfig(tasks=["tamperlab_mc"], limit=LIMIT))
    k = plain_acc(aligned, tok)
    assert direct["tamperlab_mc"]["metrics"]["acc"]["value"] == pytest.approx(k / LIMIT)
    ref = s["aligned_utility"]
    assert (ref["value"], ref["n"], ref["k"]) == (pytest.approx(100 * k / LIMIT), LIMIT, k)
    assert Interval.from_dict(ref) == wilson(k, LIMIT)
    # each trial's utility = the plain forward pass on the attacked model its evaluation saw (the aligned model
    # first, then trial 1 in the first invocation; trial 2 after the resume)
    models = first["models"][1:] + resumed["models"]
    assert len(models) == len(s["trials"]) == 2
    for t, model in zip(s["trials"], models):
        k = plain_acc(model, tok)
        assert t["utility"]["n"] == LIMIT and t["utility"]["k"] == k and t["utility"]["metric"] == "acc"
        assert Interval.from_dict(t["utility"]) == wilson(k, LIMIT)
        stage = run.load_stage(f"sweep-sft-u{run_cfg(run).sweep.utility_tag()}-{t['key']}")
        assert stage["lm_eval"]["tamperlab_mc"]["metrics"]["acc"]["value"] == pytest.approx(k / LIMIT)
    # the aggregate reads those utilities: every trial keeps utility (threshold 0, drop ≤ 100) → the worst case
    agg = s["aggregate"]
    assert agg["worst_case_utility"]["key"] == agg["worst_case"]["key"]
    wc = next(t for t in s["trials"] if t["key"] == agg["worst_case"]["key"])
    assert agg["worst_case"]["utility"] == wc["utility"]["value"]
    assert agg["worst_case"]["utility_interval"]["k"] == wc["utility"]["k"]
    assert agg["reference_utility"] == ref["value"] and agg["max_utility_drop"] == 100.0
    md = (run.path / "report.md").read_text()
    assert "aligned tamperlab_mc acc" in md and "worst case, tamperlab_mc acc ≥ 0, drop ≤ 100" in md


def run_cfg(run):
    return load_recipe(run.path / "config.yaml").cfg


def test_lm_gate_resumes_trial_by_trial(lm_sweep):
    run, first, resumed = lm_sweep
    tag = run_cfg(run).sweep.utility_tag()
    # killed while preparing trial 2: the aligned utility and trial 1 are cached, nothing of trial 2
    trial1 = hft_sweep.trial_key({"learning_rate": 1e-3})
    assert first["stages"] == sorted([f"sweep-sft-aligned-u{tag}", f"sweep-sft-u{tag}-{trial1}"])
    assert first["prepared"] == 2 and len(first["models"]) == 2  # fixed attack + trial 1; aligned + trial 1
    # the resume recomputes trial 2 only: one attack, one utility evaluation (the aligned one is cached)
    assert resumed["prepared"] == 1 and len(resumed["models"]) == 1


@pytest.mark.parametrize("above", [True, False])
def test_lm_gate_skip_rule(lm_sweep, tmp_path, above):
    """A copy of the finished run with only the skip threshold changed: just above the aligned utility the
    defense is skipped; at it, the sweep runs (from its cached trials). Nothing is trained or re-evaluated."""
    run, _, _ = lm_sweep
    aligned = run.load_metrics()["results"]["sft"]["sweep"]["aligned_utility"]["value"]
    assert 0 < aligned < 100
    shutil.copytree(run.path, tmp_path / "k")
    (tmp_path / "k" / "config.yaml").unlink()  # the recipe changes (skip threshold); every stage stays valid
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FineTuneAttack, "prepare", lambda *a: calls.append("attack"))
        mp.setattr(hft_sweep, "evaluate_utility", lambda *a, **k: calls.append("utility"))
        threshold = aligned + 0.01 if above else aligned
        new = execute(load_recipe(lm_recipe(tmp_path, "k", skip_if_aligned_fa_below=threshold)), resume=True)
    assert calls == []
    s = new.load_metrics()["results"]["sft"]["sweep"]
    if above:
        assert s["skipped"] == f"aligned tamperlab_mc acc {aligned:.1f} % < {threshold:g} %" and "trials" not in s
        assert "skipped: aligned tamperlab_mc acc" in (tmp_path / "k" / "report.md").read_text()
    else:
        assert s["skipped"] is None and len(s["trials"]) == 2


def test_lm_gate_aggregation_on_hand_made_trials():
    """Worst case keeping utility with an lm-eval utility (%): threshold and drop from the aligned model."""
    def t(key, k, acc_k):  # HS k / 32, utility acc_k / 70 (tamperlab_mc's 70 items) in %
        return TrialScore(key, k, 32, fa=100 * acc_k / 70, utility=wilson(acc_k, 70))

    trials = [t("a", 30, 14), t("b", 25, 28), t("c", 20, 31), t("d", 10, 45)]
    aligned = 100 * 33 / 70  # 47.1 %
    # a lost utility (20 % < 30); b keeps the threshold but dropped 7.1 points; c dropped 2.9; d is weaker
    plain = aggregate(trials, 2, utility_threshold=30.0)
    assert plain["worst_case"]["key"] == "a" and plain["worst_case_utility"]["key"] == "b"
    gated = aggregate(trials, 2, 30.0, utility_key="utility", reference_utility=aligned, max_utility_drop=5.0)
    wcu = gated["worst_case_utility"]
    assert wcu["key"] == "c" and wcu["k"] == 20 and wcu["utility"] == pytest.approx(100 * 31 / 70)
    assert wcu["utility_interval"] == wilson(31, 70).to_dict()  # the utility's n and interval travel with it
    # a drop of exactly max_utility_drop points keeps utility
    assert aggregate(trials, 2, 30.0, reference_utility=100 * 33 / 70, max_utility_drop=100 * 5 / 70)[
        "worst_case_utility"]["key"] == "b"
    with pytest.raises(ValueError, match="reference_utility"):
        aggregate(trials, 2, 30.0, max_utility_drop=5.0)
    # the report's row: aligned utility, the worst case's utility with its interval, the gate in the column name
    from tamperlab.report.sweep import hft_sweep_rows as sweep_rows

    recs = [{"trial": i, "key": x.key, "params": {"learning_rate": lr}, "hs_io": x.value, "k": x.k, "n": 32,
             "utility": {**x.utility.to_dict(), "measure": "lm_eval", "task": "tamperlab_mc", "metric": "acc"}}
            for i, (x, lr) in enumerate(zip(trials, [1e-5, 1e-4, 2e-4, 3e-4]))]
    sweeps = {"sft": {"attack": "harmful-n100", "method": "grid", "space": {"learning_rate": [1e-5]},
                      "fixed": None, "skipped": None, "trials": recs, "aligned_utility": wilson(33, 70).to_dict(),
                      "utility_measure": {"measure": "lm_eval", "key": "utility", "label": "tamperlab_mc acc"},
                      "aggregate": gated}}
    row = sweep_rows(sweeps)[0]
    assert row["aligned tamperlab_mc acc"].fmt() == wilson(33, 70).fmt()
    assert row["its tamperlab_mc acc"].fmt() == wilson(14, 70).fmt()  # the worst case (a) lost its utility
    assert row["worst case, tamperlab_mc acc ≥ 30, drop ≤ 5"].fmt() == wilson(20, 32).fmt()  # c


@pytest.mark.parametrize("sweep, message", [
    ({"lm_eval": {"tasks": ["tamperlab_mcc"]}}, "unknown lm-eval task 'tamperlab_mcc' (did you mean 'tamperlab_mc'?)"),
    ({"lm_eval": {"tasks": ["tamperlab_mc", "tamperlab_arith"]}}, "name one task"),
    ({"utility_task": "sst2"}, "not both"),
    ({"utility_metric": "bleu"}, "not an accuracy-type"),
    ({"lm_eval": {"tasks": ["boolq"], "offline": True}}, "no offline stand-in"),
    ({"lm_eval": {"tasks": []}, "utility_metric": "acc"}, "which has no task"),
    ({"lm_eval": {"tasks": []}, "max_utility_drop": 5.0}, "max_utility_drop needs a utility measure"),
])
def test_lm_gate_config_errors_at_load(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match="^sweep") as e:
        load_recipe(lm_recipe(tmp_path, "x", **sweep))
    assert message in str(e.value)
