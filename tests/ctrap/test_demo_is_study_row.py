"""`make demo` runs the settings study's best row: the demo recipe, loaded on its own, must be the study's row
`DEMO_ROW` (the first demo recipe with that row's overrides) in every setting that can change a number — so the
demo's table is the study's row, and editing one without the other fails here."""

from __future__ import annotations

import dataclasses

from tamperlab.experiments.base import load_recipe

DEMO_ROW = "clean_steps_60"
# Labels, where the run is written, and the demo's extra report section (the study computes the same trap
# diagnostics as a stage of its own); nothing a number of the table depends on.
COSMETIC = {"name", "description", "output_dir"}
COSMETIC_EVAL = {"trap_diagnostics"}


def _settings(exp) -> dict:
    d = {k: v for k, v in dataclasses.asdict(exp.cfg).items() if k not in COSMETIC}
    d["eval"] = {k: v for k, v in d["eval"].items() if k not in COSMETIC_EVAL}
    return d


def test_demo_recipe_equals_the_study_row_it_names():
    study = load_recipe("ctrap_study_demo")
    (row,) = [v for v in study.cfg.variants if v.name == DEMO_ROW]
    demo, from_study = _settings(load_recipe("demo_ctrap")), _settings(study.cfg.sub_experiment(row))
    differ = sorted(k for k in demo.keys() | from_study.keys() if demo.get(k) != from_study.get(k))
    assert not differ, {k: (demo.get(k), from_study.get(k)) for k in differ}


def test_the_demo_row_changes_what_the_first_demo_got_wrong():
    """Independent of the study file: the demo's alignment data are the clean ones (one refusal, complete short
    answers, no end-of-turn after a cut-off answer) and differ from the first demo's."""
    demo, first = load_recipe("demo_ctrap").cfg, load_recipe("ctrap_first_demo").cfg
    assert (demo.data.refusal_variants, demo.data.helpful, demo.data.eos_after_truncated) == (1, "complete_short", False)
    assert (first.data.refusal_variants, first.data.helpful, first.data.eos_after_truncated) != (1, "complete_short", False)
