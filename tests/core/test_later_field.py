"""`later_field`: a config option added after runs were recorded is left out of recorded configs and stage inputs
while at its default, so a run recorded before it existed resumes without recomputing; a non-default value is
recorded and changes the stage hash."""

from __future__ import annotations

import dataclasses

from tamperlab.config import later_field, to_dict
from tamperlab.experiments.base import load_recipe
from tamperlab.runs import RunDir


@dataclasses.dataclass
class Old:
    a: int = 1


@dataclasses.dataclass
class New:
    a: int = 1
    b: bool = later_field(False, since="2026-11-30")


def test_to_dict_leaves_a_later_field_out_at_its_default():
    assert to_dict(New()) == to_dict(Old()) == {"a": 1}
    assert to_dict(New(b=True)) == {"a": 1, "b": True}


def test_stage_recorded_before_the_field_existed_is_loaded(tmp_path):
    run = RunDir(tmp_path / "r")
    calls = []
    assert run.cached("s", lambda: calls.append(1) or 5, inputs=to_dict(Old())) == 5
    assert run.cached("s", lambda: calls.append(1) or 6, inputs=to_dict(New())) == 5 and calls == [1]
    assert run.cached("s", lambda: calls.append(1) or 7, inputs=to_dict(New(b=True))) == 7 and calls == [1, 1]


def test_hft_trap_diagnostics_is_recorded_only_when_on():
    off = load_recipe("ctrap_first_demo").recorded_config()
    on = load_recipe("ctrap_first_demo", ["eval.trap_diagnostics=true"]).recorded_config()
    assert "trap_diagnostics" not in off["eval"] and on["eval"]["trap_diagnostics"] is True
    assert {k: v for k, v in on["eval"].items() if k != "trap_diagnostics"} == off["eval"]
