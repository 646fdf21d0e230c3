"""Atomic writes and cached stages."""

from __future__ import annotations

import json

from tamperlab.runs import RunDir, atomic_write_json


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_cached_stage_computed_once(tmp_path):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    calls = []
    assert run.cached("s", lambda: calls.append(1) or {"v": 2}) == {"v": 2}
    assert run.cached("s", lambda: calls.append(1) or {"v": 3}) == {"v": 2}
    assert calls == [1]
    assert any(r["event"] == "stage_done" for r in run.read_log())


def test_metrics_record_provenance(tmp_path):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    m = run.save_metrics({"hs": 1.0})
    assert m["config"] == {"x": 1} and "versions" in m["provenance"] and m["results"] == {"hs": 1.0}
