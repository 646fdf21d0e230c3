"""`eval.trap_diagnostics: true` on an hft run (the CTRAP demo): metrics.json carries the trap diagnostics of every
defense — aligned and after the attack — equal to a direct `diagnose` on the stored answers and the saved adapters,
with the collapse rate the evaluation itself measured; the report renders them with p(trap) by position."""

from __future__ import annotations

import json
from pathlib import Path

from tamperlab.experiments.base import execute, load_recipe
from tamperlab.metrics.trap_diagnostics import diagnose
from tamperlab.models import load_adapter, load_model
from tamperlab.runs import RunDir

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_ctrap.yaml"
ATTACK = "harmful-n8"


def test_hft_trap_diagnostics_match_direct_computation(tmp_path):
    sets = {"alignment.max_steps": 2, "alignment.save_steps": 2, "attacks.0.train.max_steps": 2,
            "attacks.0.train.save_steps": 2, "eval.eval_steps": [], "eval.trap_diagnostics": True,
            "output_dir": str(tmp_path), "name": "diag"}
    exp = load_recipe(str(FIXTURE), [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    run = execute(exp)
    m = json.loads((run.path / "metrics.json").read_text())
    diag = m["trap_diagnostics"]
    assert set(diag) == {d["key"] if "key" in d else d["name"] for d in m["config"]["defenses"]} == {"sft", "ctrap"}
    rd = RunDir(run.path)
    for key in ("sft", "ctrap"):
        assert set(diag[key]) == {"aligned", "after harmful FT"}
        cells = {"aligned": m["results"][key]["aligned"], "after harmful FT": m["results"][key]["attacks"][ATTACK]}
        adapters = {"aligned": run.path / "models" / key,
                    "after harmful FT": run.path / "checkpoints" / f"attack-{key}-{ATTACK}" / "checkpoint-2"}
        stages = {"aligned": f"samples-aligned-{key}", "after harmful FT": f"samples-attack-{key}-{ATTACK}"}
        for ev in diag[key]:
            rows = rd.load_stage(stages[ev])
            base, tok = load_model(exp.cfg.model, exp.cfg.seed)
            direct = diagnose(load_adapter(base, adapters[ev], trainable=False), tok, [r["prompt"] for r in rows],
                              [r["output"] for r in rows], "an error", exp.cfg.model.prompt_format,
                              exp.cfg.model.max_length)
            assert json.loads(json.dumps(direct)) == diag[key][ev]
            assert diag[key][ev]["collapse_rate"] == cells[ev]["collapse_rate"]  # the evaluation's own measurement
    report = (run.path / "report.md").read_text()
    assert "## Trap diagnostics" in report and "By response position" in report
    assert report.count("| ctrap | after harmful FT |") == 2  # the summary row and the by-position row
