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


def test_atomic_files_are_world_readable(tmp_path):
    """mkstemp creates 0600; results must get the mode open() gives (0644 under the usual umask 022)."""
    import os

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_resume_removes_temporaries(tmp_path):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    (run.path / ".metrics.json.x1y2.tmp").write_text("{")
    (run.path / "models" / "sft.tmp").mkdir(parents=True)
    (run.path / "models" / "sft.tmp" / "w").write_text("")
    (run.path / "models" / "keep").mkdir()
    RunDir.create(tmp_path / "r", {"x": 1}, resume=True)
    names = sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))
    assert names == ["config.yaml", "log.jsonl", "models", "models/keep"]


def test_run_lock_refuses_second_writer_and_force(tmp_path):
    """A live run (lock held, here by another process) cannot be written by a second one, nor deleted by --force;
    once its holder is gone (even killed), the lock is free again."""
    import subprocess
    import sys
    import time

    import pytest

    from tamperlab.experiments.base import execute, load_recipe
    from tamperlab.runs import RunBusyError, RunLock

    run = RunDir.create(tmp_path / "r", {"x": 1})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; "
        f"l = FileLock({str(tmp_path / '.r.lock')!r}); l.acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError, match="in use"):
            with RunLock(run.path):
                pass
        exp = load_recipe({"experiment": "ctrap", "name": "r", "output_dir": str(tmp_path),
                           "model": {"name_or_path": "tiny:llama"}})
        with pytest.raises(RunBusyError):
            execute(exp, force=True)
        assert (run.path / "config.yaml").exists()  # --force did not delete the live run
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    time.sleep(0.1)
    with RunLock(run.path):
        pass
