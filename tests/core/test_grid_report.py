"""The comparison grid of a `ctrap_table` report from a synthetic run directory: heatmaps per metric embedded in
report.md / report.html, the attacker sweep's worst case as a column (checked against the maximum of the fixture's
trials, computed here), missing cells left missing, and "n.s." against the SFT row where McNemar says so."""

from __future__ import annotations

import pytest

from tamperlab.judges import JudgePanel
from tamperlab.runs import RunDir
from tamperlab.stats import rate_record, wilson
from tamperlab.sweep import TrialScore, aggregate

from .test_report import cell, parse

ATTACKS = [{"label": "harmful-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None},
           {"label": "harmful-full-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None},
           {"label": "benign-sst2", "kind": "benign", "n": 100, "p": 0.0, "task": "sst2"}]
# harmful answers of 32 per (defense, attack); the sweep's trials (k of 32 each) per defense
HARMFUL = {"sft": {"harmful-n100": 26, "harmful-full-n100": 28, "benign-sst2": 8},
           "ctrap": {"harmful-n100": 21, "harmful-full-n100": 27, "benign-sst2": 9},
           "vaccine": {"harmful-n100": 0, "harmful-full-n100": 3, "benign-sst2": 0}}
TRIALS = {"sft": [27, 30, 25], "ctrap": [22, 29, 18], "vaccine": [2, 28, 5]}
FA_CORRECT = {"sft": 30, "ctrap": 28, "vaccine": 4}  # of 40 SST2 answers after benign fine-tuning


def _fa(correct: int) -> dict:
    from tamperlab.experiments.hft_eval import fa_fields

    rows = [{"input": f"q{i}", "label": "pos", "prediction": "pos" if i < correct else "neg", "correct": i < correct}
            for i in range(40)]
    return {"fa": 100 * correct / 40, **fa_fields(rows)}


def _lm_eval(k: int) -> dict:
    return {"tamperlab_mc": {"task": "tamperlab_mc", "stand_in": True, "n": 70,
                             "metrics": {"acc": {"value": k / 70, "n": 70, "stderr": 0.05,
                                                 "interval": rate_record(k, 70)}}}}


def _cells(panel):
    """cell() per (k harmful, trap), each judged once (the judges are the slow part of the fixture)."""
    import copy
    import functools

    @functools.cache
    def judged(k: int, trap: int) -> dict:
        return cell(panel, k, trap)[0]

    return lambda k, trap=0: copy.deepcopy(judged(k, trap))


def build_grid_run(tmp_path):
    from tamperlab.experiments.ctrap_table import summarize
    from tamperlab.report.hft_table import write_table_report

    panel = JudgePanel(["embedded", "garak-mitigation"])
    judged = _cells(panel)
    rows = {}
    for d, ks in HARMFUL.items():
        aligned = judged(1)
        if d != "vaccine":  # vaccine ran without lm-eval: its utility cells must stay missing
            aligned["lm_eval"] = _lm_eval(40)
        attacks = {}
        for label, k in ks.items():
            m = judged(k, 2 if d == "ctrap" else 0)
            if label == "benign-sst2":
                m.update(_fa(FA_CORRECT[d]))
            attacks[label] = m
        trials = [{"trial": i, "key": f"t{i}", "params": {"learning_rate": lr}, "hs_io": 100 * k / 32, "k": k,
                   "n": 32, "fa": None} for i, (k, lr) in enumerate(zip(TRIALS[d], (1e-4, 3e-4, 1e-3)))]
        agg = aggregate([TrialScore(t["key"], t["k"], t["n"]) for t in trials], 2, 50.0)
        sweep = {"attack": "harmful-n100", "method": "grid", "space": {"learning_rate": [1e-4, 3e-4, 1e-3]},
                 "fixed": {"hs_io": 100 * ks["harmful-n100"] / 32, "k": ks["harmful-n100"], "n": 32},
                 "skipped": None, "trials": trials, "aggregate": agg}
        rows[d] = {"aligned": aligned, "attacks": attacks, "sweep": sweep}
    per_seed = {"0": rows}
    cfg = {"experiment": "ctrap_table", "model": {"name_or_path": "m"}, "data": {"source": "offline", "n_eval": 32},
           "alignment": {"max_steps": 30, "epochs": 1, "batch_size": 4}}
    run = RunDir.create(tmp_path / "g", cfg)
    run.save_metrics({"seeds": [0], "defenses": list(HARMFUL), "attacks": ATTACKS, "per_seed": per_seed,
                      "summary": summarize(per_seed, list(HARMFUL), ATTACKS)}, judge=panel.describe())
    write_table_report(run)
    return run, per_seed


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One synthetic grid run for the module (the report is the slow part: judges, heatmaps, plots)."""
    return build_grid_run(tmp_path_factory.mktemp("grid"))


def test_grid_heatmaps_and_worst_case_column(grid_run):
    from tamperlab.report.grid import WORST, grid_rows, grid_tables

    run, per_seed = grid_run
    md = (run.path / "report.md").read_text()
    page = parse(run.path / "report.html")
    for name in ("hs", "fa", "collapse", "utility", "sweep"):
        assert (run.path / "plots" / f"grid-{name}.png").exists(), name
        assert f"plots/grid-{name}.png" in page.images and f"(plots/grid-{name}.png)" in md
    defenses = list(HARMFUL)
    tables = grid_tables(per_seed, defenses, ATTACKS, ["embedded", "garak-mitigation"])
    hs = tables["hs"][0]
    assert hs.rows == defenses
    # two attacks of one setting keep apart (headed by their labels); the sweep's column closes the row
    assert hs.cols == ["aligned", "harmful-n100", "harmful-full-n100", "benign SST2", WORST]
    for i, d in enumerate(defenses):
        assert hs.cells[i][2].value == pytest.approx(100 * HARMFUL[d]["harmful-full-n100"] / 32)
        assert hs.cells[i][-1] == wilson(max(TRIALS[d]), 32)  # the worst case = the highest trial, here
    assert [t.title for t in tables["hs"]] == ["HS(IO) % — embedded (primary)", "HS(IO) % — garak-mitigation"]
    # sft 26 vs ctrap 21 harmful of 32 (5 discordant pairs, exact p = 1/16): n.s.; vaccine 0 vs sft 26: significant
    assert hs.notes.get((1, 1)) == "n.s. vs sft" and (2, 1) not in hs.notes
    fa = tables["fa"][0]
    assert fa.cols == ["benign SST2"] and fa.cells[0][0] == wilson(FA_CORRECT["sft"], 40)
    util = tables["utility"][0]
    expect = wilson(40, 70)
    assert [util.cells[0][0].value, util.cells[0][0].lo, util.cells[0][0].hi] == pytest.approx(
        [expect.value, expect.lo, expect.hi])
    assert util.cells[2][0] is None  # missing, not 0
    assert util.values().mask[2, 0]
    sweep = tables["sweep"][0]
    assert [c.value for c in (sweep.cells[2][0], sweep.cells[2][1])] == pytest.approx([0.0, 100 * 28 / 32])
    # mean of the top 2 trials: Wilson over their pooled prompts
    assert sweep.cells[1][2] == wilson(29 + 22, 64)
    # the table: the worst case on the swept attack's rows only, intervals in every HS cell
    rows = grid_rows(per_seed, defenses, ATTACKS, ["embedded", "garak-mitigation"])
    swept = [r for r in rows if r["attack"] == "harmful-n100"]
    assert [r[WORST] for r in swept] == [wilson(max(TRIALS[d]), 32) for d in defenses]
    assert all(WORST not in r or r[WORST] is None for r in rows if r["attack"] != "harmful-n100")
    assert swept[1]["Δ HS(IO) vs sft"] == "-15.6 (p=0.19) n.s." or swept[1]["Δ HS(IO) vs sft"].endswith("n.s.")
    assert not swept[2]["Δ HS(IO) vs sft"].endswith("n.s.") and swept[2]["Δ HS(IO) vs sft"].startswith("-81.2")
    assert "| harmful-n100 | vaccine |" in md and f"{wilson(28, 32).fmt(1)}" in md


def test_tvaccine_reference_is_compared_on_its_mixed_column():
    """T-Vaccine's Table 1 number (mixed p = 0.1 SST2, n = 1000, Llama-2-7B, beaver-dam) is set against the run's
    mixed p = 0.1 SST2 cell: pass / fail in the paper's setting, "not comparable" on the model at 135M; a run
    without that column has no T-Vaccine row."""
    from tamperlab.report.tables import attack_columns
    from tamperlab.report.hft_table import paper_rows

    mixed = {"label": "mixed-p10-sst2", "kind": "mixed", "n": 1000, "p": 0.1, "task": "sst2"}
    harmful = {"label": "harmful-n100", "kind": "harmful", "n": 100, "p": 1.0, "task": None}

    def cell(k: int, n: int = 1000) -> dict:
        return {"hs_io": 100 * k / n, "n": n, "intervals": {"hs_io": wilson(k, n).to_dict()}}

    per_seed = {"0": {"tvaccine": {"attacks": {"mixed-p10-sst2": cell(150), "harmful-n100": cell(600)}}},
                "1": {"tvaccine": {"attacks": {"mixed-p10-sst2": cell(160), "harmful-n100": cell(610)}}}}
    cfg = {"model": {"name_or_path": "meta-llama/Llama-2-7b-hf"}, "data": {"source": "hub"}}
    cols = attack_columns([harmful, mixed])["harmful"]
    rows = paper_rows(per_seed, ["tvaccine"], cols, [harmful, mixed], cfg, {"name": "beaver-dam"})
    assert len(rows) == 1 and rows[0]["method"] == "tvaccine"
    assert rows[0]["measured"] == wilson(310, 2000)  # both seeds' prompts of the mixed column, not the harmful one
    assert rows[0]["verdict"] == "pass"  # 14.97 within [13.9, 17.1] ± 5
    small = {"model": {"name_or_path": "embedded:smollm2-135m-instruct"}, "data": {"source": "offline"}}
    v = paper_rows(per_seed, ["tvaccine"], cols, [harmful, mixed], small, {"name": "embedded"})[0]["verdict"]
    assert v.startswith("not comparable: model") and "attack" not in v
    assert paper_rows(per_seed, ["tvaccine"], cols, [harmful], cfg, {"name": "beaver-dam"}) == []


def test_grid_heatmaps_load_in_chromium(grid_run):
    """Every image of the grid report loads in a real browser (a file that exists can still be a broken PNG)."""
    from .test_report_browser import BROWSER, browse

    if BROWSER is None:
        pytest.skip("no Chromium on this machine")
    run, _ = grid_run
    seen = browse(run.path / "report.html")
    assert seen["errors"] == [] and not seen["stars"]
    grid = [i for i in seen["images"] if i["src"].startswith("plots/grid-")]
    assert len(grid) == 5 and all(i["ok"] and i["w"] > 300 for i in grid), grid


def test_grid_recipes_cover_the_defenses_and_attack_kinds():
    from tamperlab.experiments.base import RECIPES_DIR, load_recipe

    gpu = load_recipe(RECIPES_DIR / "hft_grid_gpu.yaml").cfg
    assert [d.name for d in gpu.defenses] == ["sft", "ctrap", "vaccine", "booster", "repnoise", "npo", "tvaccine",
                                              "tar", "safelora", "antidote", "lisa"]
    assert gpu.seeds == [0, 1, 2] and gpu.eval.judges[0] == "beaver-dam" and gpu.sweep.enabled
    assert all(a.train.learning_rate == 1e-5 and a.train.epochs == 20 and a.train.batch_size == 10
               for a in gpu.attacks if a.name == "finetune")
    # the field's other attacks run in the GPU grid (the CPU grid keeps them as a commented block: CPU time)
    assert {a.name for a in gpu.attacks} == {"finetune", "aoa", "refusal-ablation", "soft-prompt"}
    cpu = load_recipe(RECIPES_DIR / "hft_grid_demo.yaml").cfg
    assert {"sft", "ctrap", "vaccine", "booster", "repnoise"} <= {d.name for d in cpu.defenses}
    assert cpu.model.name_or_path.startswith("embedded:") and cpu.sweep.enabled and cpu.eval.lm_eval.tasks
    for cfg in (gpu, cpu):
        ft = [a for a in cfg.attacks if a.name == "finetune"]
        assert {a.kind for a in ft} == {"harmful", "mixed", "benign"}
        assert [a.key for a in ft if a.full_finetune] == [a.key for a in ft][-1:]
