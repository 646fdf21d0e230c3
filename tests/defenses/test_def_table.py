"""The comparison-table experiment: paper-style aggregation (mean ± std over seeds, per-seed averages, column
grouping) as pure functions, and an end-to-end run on the tiny model with two defenses × two attacks × two
seeds that is resumable cell by cell."""

from __future__ import annotations

import pytest

from tamperlab.experiments.base import execute, load_recipe
from tamperlab.experiments.ctrap_table import stage_seconds, summarize
from tamperlab.report.tables import attack_columns, average_values
from tamperlab.report.hft_table import fmt_cell, paper_table

ATTACKS = [{"label": "harmful-n200", "kind": "harmful", "n": 200, "p": 1.0, "task": None},
           {"label": "harmful-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None},
           {"label": "mixed-p10-sst2", "kind": "mixed", "n": 1000, "p": 0.1, "task": "sst2"},
           {"label": "benign-gsm8k", "kind": "benign", "n": 1000, "p": 0.0, "task": "gsm8k"}]


def _cell(hs, fa=None):
    return {"hs_io": hs, "hs_o": hs / 2, "collapse_rate": 0.0, **({"fa": fa} if fa is not None else {})}


PER_SEED = {
    "0": {"sft": {"aligned": _cell(10.0), "attacks": {"harmful-n100": _cell(40.0), "harmful-n200": _cell(60.0),
                                                      "benign-gsm8k": _cell(5.0, 30.0)}}},
    "1": {"sft": {"aligned": _cell(12.0), "attacks": {"harmful-n100": _cell(50.0), "harmful-n200": _cell(70.0),
                                                      "benign-gsm8k": _cell(7.0, 34.0)}}},
}


def test_columns_grouped_and_sorted():
    cols = attack_columns(ATTACKS)
    assert [c.header for c in cols["harmful"]] == ["n=100", "n=200"]
    assert [c.header for c in cols["mixed"]] == ["p=10%"]
    assert [c.header for c in cols["benign"]] == ["GSM8K"]


def test_mean_std_and_average_over_seeds():
    cols = attack_columns(ATTACKS)["harmful"]
    row = paper_table(PER_SEED, ["sft"], cols, "hs_io")[0]
    assert row["n=100"] == "45.0 ± 7.1" and row["n=200"] == "65.0 ± 7.1"
    assert average_values(PER_SEED, "sft", cols, "hs_io") == [50.0, 60.0]  # per-seed mean over columns
    assert row["Avg"] == "55.0 ± 7.1"
    assert fmt_cell([3.0]) == "3.0" and fmt_cell([]) == "–"
    s = summarize(PER_SEED, ["sft"], ATTACKS)["sft"]
    assert s["aligned"]["hs_io"] == {"mean": 11.0, "std": pytest.approx(1.41421, rel=1e-4), "n": 2}
    assert s["benign-gsm8k"]["fa"]["mean"] == 32.0 and s["mixed-p10-sst2"] == {}


def test_stage_seconds_by_defense():
    log = [{"event": "stage_done", "stage": "align-sft.seed1", "seconds": 3.0},
           {"event": "stage_done", "stage": "align-sft-x.seed1", "seconds": 5.0},
           {"event": "stage_done", "stage": "attack-sft.seed1-harmful-n100", "seconds": 2.0},
           {"event": "stage_done", "stage": "eval-aligned-sft.seed1", "seconds": 1.0},
           {"event": "stage_done", "stage": "data", "seconds": 9.0}]
    t = stage_seconds(log, {"sft.seed1": "sft", "sft-x.seed1": "sft-x"})
    assert t == {"sft": {"align": 3.0, "eval-aligned": 1.0, "attack": 2.0},
                 "sft-x": {"align": 5.0, "eval-aligned": 0.0, "attack": 0.0}}


def test_report_from_metrics_has_paper_tables_and_plots(tmp_path):
    from tamperlab.runs import RunDir
    from tamperlab.report.hft_table import write_table_report

    attacks = ATTACKS + [{"label": "mixed-p20-sst2", "kind": "mixed", "n": 1000, "p": 0.2, "task": "sst2"}]
    per_seed = {s: {d: {"aligned": _cell(1.0), "attacks": {a["label"]: _cell(10.0 * i + int(s), 80.0 - i)
                                                            for i, a in enumerate(attacks)}}
                    for d in ("sft", "ctrap")} for s in ("0", "1", "2")}
    cfg = {"experiment": "ctrap_table", "description": "fake", "model": {"name_or_path": "m"},
           "data": {"source": "hub", "n_eval": 1000},
           "alignment": {"max_steps": 0, "epochs": 20, "batch_size": 5}}
    run = RunDir.create(tmp_path / "r", cfg)
    run.save_metrics({"seeds": [0, 1, 2], "defenses": ["sft", "ctrap"], "attacks": attacks, "per_seed": per_seed,
                      "seconds": {"sft": {"align": 1.0, "eval-aligned": 0.0, "attack": 2.0}}},
                     judge={"name": "beaver-dam", "stand_in": False})
    write_table_report(run)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| Method | n=100 | n=200 | Avg |" in md and "| Method | p=10% | p=20% | Avg |" in md
    assert "| Method | GSM8K |" in md and "± 1.0" in md and "stand-in" not in md
    for png in ("hs-vs-n.png", "hs-vs-p.png", "fa-mixed.png", "fa-benign.png"):
        assert (tmp_path / "r" / "plots" / png).exists(), png


def recipe(out, name):
    train = {"max_steps": 2, "batch_size": 4, "save_steps": 1, "learning_rate": 1e-3}
    return {
        "experiment": "ctrap_table", "name": name, "output_dir": str(out), "seeds": [0, 1],
        "model": {"name_or_path": "tiny:llama"}, "lora": {"r": 4, "alpha": 8},
        "data": {"n_eval": 4, "n_align": 8, "n_attack": 8, "n_helpful": 8, "response_tokens": 8},
        "alignment": {"max_steps": 2, "batch_size": 2, "save_steps": 10, "learning_rate": 1e-3},
        "defenses": [{"name": "sft", "params": {"helpful_batch_size": 2}},
                     {"name": "vaccine", "params": {"rho": 5.0}, "alignment": {"batch_size": 4}}],
        "attacks": [{"kind": "harmful", "n": 8, "train": train},
                    {"kind": "benign", "n": 8, "task": "sst2", "n_task_eval": 4, "task_max_new_tokens": 2,
                     "train": train}],
        "eval": {"eval_steps": [], "n_loss_probe": 4, "generation": {"max_new_tokens": 4}},
    }


def test_table_run_all_cells_seeds_and_resume(tmp_path):
    run = execute(load_recipe(recipe(tmp_path, "t")))
    res = run.load_metrics()["results"]
    assert res["seeds"] == [0, 1] and res["defenses"] == ["sft", "vaccine"]
    for seed in ("0", "1"):
        for d in ("sft", "vaccine"):
            row = res["per_seed"][seed][d]
            assert set(row["attacks"]) == {"harmful-n8", "benign-sst2"}
            assert "fa" in row["attacks"]["benign-sst2"] and "hs_o" in row["aligned"]
    assert run.load_stage("align-vaccine.seed1")["steps"] == 2
    # per-defense alignment override: vaccine trained with 4-row batches, sft with the shared 2
    assert (tmp_path / "t" / "models" / "vaccine.seed0" / "adapter_model.safetensors").exists()
    assert res["summary"]["vaccine"]["harmful-n8"]["hs_io"]["n"] == 2
    # every cell: n, Wilson interval, per-prompt flags of both judges, FA with its own n; pooled over seeds
    cell = res["per_seed"]["0"]["sft"]["attacks"]["benign-sst2"]
    assert cell["n"] == 4 and cell["intervals"]["hs_io"]["n"] == 4 and cell["fa_n"] == 4
    assert set(cell["per_prompt"]["judges"]) == {"embedded", "garak-mitigation"}
    assert res["summary"]["sft"]["harmful-n8"]["hs_io"]["pooled"]["n"] == 8
    rows = (tmp_path / "t" / "samples" / "samples-attack-sft.seed0-harmful-n8.jsonl").read_text().splitlines()
    assert len(rows) == 4 and (tmp_path / "t" / "samples.html").exists()
    assert set(res["seconds"]) == {"sft", "vaccine"} and res["seconds"]["vaccine"]["align"] > 0
    report = (tmp_path / "t" / "report.md").read_text()
    assert "Full harmful fine-tuning" in report and "Benign fine-tuning" in report and "±" in report
    assert (tmp_path / "t" / "plots" / "fa-benign.png").exists()

    # resume: every cell is cached, nothing is trained or evaluated again
    n_done = sum(r.get("event") == "stage_done" for r in run.read_log())
    again = execute(load_recipe(recipe(tmp_path, "t")), resume=True)
    assert sum(r.get("event") == "stage_done" for r in again.read_log()) == n_done
    assert again.load_metrics()["results"]["per_seed"] == res["per_seed"]
