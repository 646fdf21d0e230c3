"""Versioned stages (`RunDir.cached(key, fn, inputs=...)`) and resumes whose recipe grew or changed.

The checks are against the stage's own inputs: every payload a stage returns here names the inputs it was computed
from, so a load under other inputs is visible as a mismatch, whatever the write order or the kill point."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import tamperlab.runs as runs
from tamperlab.errors import TamperlabError
from tamperlab.experiments.base import Experiment, RunConfig, execute
from tamperlab.runs import RunDir, atomic_write_json, inputs_hash


def _stage(run: RunDir, inputs: dict[str, Any], calls: list[Any], key: str = "s") -> Any:
    return run.cached(key, lambda: calls.append(inputs) or {"computed_from": inputs}, inputs=inputs)


def test_same_inputs_load_changed_inputs_recompute(tmp_path, caplog):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    calls: list[Any] = []
    a, b = {"lr": 1e-3, "model": "m"}, {"lr": 3e-4, "model": "m"}
    assert _stage(run, a, calls) == {"computed_from": a}
    assert _stage(run, dict(reversed(list(a.items()))), calls) == {"computed_from": a}  # key order is no change
    assert calls == [a]
    with caplog.at_level(logging.INFO, logger="tamperlab"):
        assert _stage(run, b, calls) == {"computed_from": b}
    assert calls == [a, b] and run.load_stage("s") == {"computed_from": b}
    assert "stage s: inputs changed (lr: 0.001 → 0.0003), recomputing" in caplog.text
    assert _stage(run, b, calls) == {"computed_from": b} and len(calls) == 2
    record = run.stage_record("s")
    assert record["inputs"] == b and record["inputs_sha256"] == inputs_hash(b)
    changed = [e for e in run.read_log() if e["event"] == "stage_inputs_changed"]
    assert [e["changed"] for e in changed] == [["lr: 0.001 → 0.0003"]]
    assert [e["stage"] for e in run.read_log() if e["event"] == "stage_done"] == ["s", "s"]
    assert sorted(p.name for p in (run.path / "stages").iterdir()) == ["s.json"]  # payloads only in stages/


def test_inputs_diff_names_the_changed_paths():
    old = {"lr": 1e-3, "steps": [0, 2], "attacks": [{"n": 8, "lr": 1}], "gone": 1}
    new = {"lr": 1e-3, "steps": [0, 2, 4], "attacks": [{"n": 8, "lr": 2}, {"n": 4}], "new": "x"}
    assert runs.inputs_diff(old, new) == ["steps: [0, 2] → [0, 2, 4]", "attacks.0.lr: 1 → 2", "attacks.1: added",
                                          "gone: removed", "new: added"]
    assert runs.inputs_diff(new, new) == []


def test_inputs_hash_is_canonical():
    assert inputs_hash({"a": 1, "b": [1, 2]}) == inputs_hash({"b": (1, 2), "a": 1})
    assert inputs_hash({"a": 1}) != inputs_hash({"a": 2}) != inputs_hash({"a": "1"})


def test_changed_inputs_never_resume_old_checkpoints(tmp_path):
    """A finished stage's checkpoints belong to its inputs: changed inputs delete them before fn runs. An
    interrupted stage (killed in fn) resumes them under the same inputs, and not under other ones."""
    run = RunDir.create(tmp_path / "r", {"x": 1})
    ckpt = run.checkpoint_dir("train")

    def train(inputs: dict[str, Any], fail: bool = False) -> Any:
        def fn() -> Any:
            seen = sorted(p.name for p in ckpt.glob("checkpoint-*"))
            (ckpt / f"checkpoint-{inputs['lr']}").mkdir(parents=True, exist_ok=True)
            if fail:
                raise KeyboardInterrupt
            return {"lr": inputs["lr"], "resumed_from": seen}
        return run.cached("train", fn, inputs=inputs)

    assert train({"lr": 1})["resumed_from"] == []
    assert train({"lr": 2})["resumed_from"] == []  # checkpoint-1 of the old inputs was deleted first
    with pytest.raises(KeyboardInterrupt):
        train({"lr": 3}, fail=True)
    assert train({"lr": 3})["resumed_from"] == ["checkpoint-3"]  # same inputs: continue
    with pytest.raises(KeyboardInterrupt):
        train({"lr": 4}, fail=True)
    assert train({"lr": 5})["resumed_from"] == []  # the interrupted attempt had other inputs


def test_legacy_stage_loads_with_a_warning(tmp_path, caplog):
    """A stage stored before stages were versioned (payload, no inputs record) is loaded as it is."""
    run = RunDir.create(tmp_path / "r", {"x": 1})
    atomic_write_json(run.stage_path("old"), {"v": 1})
    (run.checkpoint_dir("old") / "checkpoint-2").mkdir(parents=True)
    calls: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="tamperlab"):
        assert _stage(run, {"lr": 1}, calls, key="old") == {"v": 1}
    assert calls == [] and run.stage_record("old") is None
    assert [r.message for r in caplog.records if "before stages were versioned" in r.message] == [
        f"stage old: stored before stages were versioned (no inputs record), loaded as it is; to recompute it, "
        f"delete {run.stage_path('old')} and {run.checkpoint_dir('old')}"]
    assert (run.checkpoint_dir("old") / "checkpoint-2").exists()
    # an unversioned call keeps its old meaning: keyed by name only
    assert run.cached("old", lambda: {"v": 2}) == {"v": 1}


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_between_writes_never_loads_a_payload_under_other_inputs(tmp_path, monkeypatch, kill_at):
    """Stage s finished under inputs A; a run under B is killed at its kill_at-th file write (1: the "computing
    under B" record, 2: the finished record, 3: the payload). Afterwards, a call under A and a call under B each
    return a payload computed from exactly their inputs (loaded or recomputed), never the other's."""
    run = RunDir.create(tmp_path / "r", {"x": 1})
    a, b = {"lr": 1}, {"lr": 2}
    _stage(run, a, [])
    writes = {"n": 0}
    real = runs.atomic_write_text

    def killed(path: Any, text: str) -> None:
        writes["n"] += 1
        if writes["n"] == kill_at:
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        _stage(run, b, [])
    monkeypatch.setattr(runs, "atomic_write_text", real)
    for first, second in ((a, b), (b, a)):
        for inputs in (first, second, first):
            assert _stage(run, inputs, []) == {"computed_from": inputs}


def test_resume_with_changed_recipe_needs_versioned_stages(tmp_path):
    RunDir.create(tmp_path / "r", {"x": 1, "y": [1]})
    with pytest.raises(TamperlabError, match="the recipe differs"):
        RunDir.create(tmp_path / "r", {"x": 1, "y": [1, 2]}, resume=True)
    run = RunDir.create(tmp_path / "r", {"x": 1, "y": [1, 2]}, resume=True, versioned=True)
    assert run.config == {"x": 1, "y": [1, 2]}
    start = [e for e in run.read_log() if e["event"] == "run_start"][-1]
    assert start["previous_config"] == {"x": 1, "y": [1]} and start["recipe_changed"] == ["y: [1] → [1, 2]"]
    unchanged = RunDir.create(tmp_path / "r", {"x": 1, "y": [1, 2]}, resume=True, versioned=True)
    assert "previous_config" not in unchanged.read_log()[-1]


# -- through execute: an experiment that declares versioned stages, and one that does not ------------------------
@dataclass
class ItemsConfig(RunConfig):
    """A toy experiment: one stage per item."""

    items: list[str] = field(default_factory=lambda: ["a"])
    """One stage per item."""
    scale: int = 1
    """Every stage depends on it."""


class Items(Experiment):
    config_cls = ItemsConfig
    cfg: ItemsConfig
    kind = "items"

    def run(self, run: RunDir) -> dict[str, Any]:
        out = {it: run.cached(f"item-{it}", lambda it=it: {"item": it, "scale": self.cfg.scale, "seed": self.cfg.seed},
                              inputs={"item": it, "scale": self.cfg.scale, "seed": self.cfg.seed})
               for it in self.cfg.items}
        return run.save_metrics(out)

    def report(self, run: RunDir) -> list[Path]:
        return []


class VersionedItems(Items):
    versioned_stages = True


def _computed(path: Path, since: int = 0) -> list[str]:
    lines = [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()][since:]
    return [e["stage"] for e in lines if e["event"] == "stage_done"]


def _lines(path: Path) -> int:
    return len((path / "log.jsonl").read_text().splitlines())


def test_execute_resume_grows_only_versioned_experiments(tmp_path):
    def cfg(**kw: Any) -> ItemsConfig:
        return ItemsConfig(**{"name": "toy", "output_dir": str(tmp_path), **kw})

    execute(Items(cfg()))
    with pytest.raises(TamperlabError, match="the recipe differs"):
        execute(Items(cfg(items=["a", "b"])), resume=True)
    run = execute(VersionedItems(cfg(name="v")))
    n = _lines(run.path)
    execute(VersionedItems(cfg(name="v", items=["b", "a"])), resume=True)  # grown and reordered
    assert _computed(run.path, n) == ["item-b"]
    assert yaml.safe_load((run.path / "config.yaml").read_text())["items"] == ["b", "a"]
    n = _lines(run.path)
    res = execute(VersionedItems(cfg(name="v", items=["a"], scale=2)), resume=True).load_metrics()["results"]
    assert _computed(run.path, n) == ["item-a"] and res == {"a": {"item": "a", "scale": 2, "seed": 0}}


def test_repeated_seeds_rerun_finished_seeds_when_the_recipe_changed(tmp_path):
    """`seeds: [0, 1]`: a finished seed is skipped when its recipe is unchanged, resumed (changed stages only)
    when the recipe of a versioned experiment changed."""
    def cfg(items: list[str]) -> ItemsConfig:
        return ItemsConfig(name="toy", output_dir=str(tmp_path), seeds=[0, 1], items=items)

    parent = execute(VersionedItems(cfg(["a"])))
    execute(VersionedItems(cfg(["a"])), resume=True)
    assert [e["seed"] for e in parent.read_log() if e["event"] == "seed_skipped"] == [0, 1]
    n = {s: _lines(parent.path / f"seed-{s}") for s in (0, 1)}
    execute(VersionedItems(cfg(["a", "b"])), resume=True)
    for s in (0, 1):
        assert _computed(parent.path / f"seed-{s}", n[s]) == ["item-b"]
    results = parent.load_metrics()["results"]
    assert results["b"]["seed"]["values"] == [0, 1] and results["b"]["item"] == "b"
