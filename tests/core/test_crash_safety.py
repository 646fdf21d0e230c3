"""Crash safety of everything tamperlab writes: a failure or a kill in the middle of a write leaves the previous
file (or folder) intact and nothing cut under the final name; a result file damaged on disk is detected (a stage
is recomputed, anything else is one TamperlabError line naming the file), never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tamperlab.errors import TamperlabError
from tamperlab.runs import CorruptFileError, RunDir, atomic_dir, atomic_write_json, read_json


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def fsync_fails(monkeypatch):
    """The disk fails after the bytes were written (ENOSPC at flush time): the write must not land."""
    def broken(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken)


def test_failed_metrics_write_keeps_the_previous_file(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    run.save_metrics({"hs": 1.0})
    before = (run.path / "metrics.json").read_bytes()

    def broken(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space"):
        run.save_metrics({"hs": 2.0})
    assert (run.path / "metrics.json").read_bytes() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_a_serializer_that_dies_half_way_leaves_the_old_plot(tmp_path, monkeypatch):
    """matplotlib writes part of the image, then fails: the plot's name keeps the previous image."""
    import matplotlib.figure

    from tamperlab.report.render import _plt, _save

    fig = _plt().figure()
    path = tmp_path / "plots" / "p.png"
    _save(fig, path)
    good = path.read_bytes()
    assert good.startswith(b"\x89PNG")

    def half(self, fname, **kw):
        f = open(fname, "wb") if isinstance(fname, (str, os.PathLike)) else fname
        f.write(good[:100])
        f.flush()
        raise MemoryError("renderer died")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half)
    with pytest.raises(MemoryError):
        _save(_plt().figure(), path)
    assert path.read_bytes() == good and _names(path.parent) == ["p.png"]


def test_saved_folders_are_replaced_whole_or_not_at_all(tmp_path):
    """A model folder (atomic_dir; the stealer's copy model uses it): a save that dies half-way leaves the
    previous folder as it was and no temporary; a save that completes replaces it entirely."""
    from tamperlab.eaas.stealer import _save_copier

    class Model:
        def __init__(self, tag, fail=False):
            self.tag, self.fail = tag, fail

        def save(self, folder, safe_serialization=True):
            (Path(folder) / "model.safetensors").write_text(self.tag)
            if self.fail:
                raise KeyboardInterrupt  # a kill half-way
            (Path(folder) / "config.json").write_text(json.dumps({"tag": self.tag}))

    from pathlib import Path

    out = tmp_path / "stealer" / "model"
    _save_copier(Model("v1"), out)
    with pytest.raises(KeyboardInterrupt):
        _save_copier(Model("v2", fail=True), out)
    assert _names(out) == ["config.json", "model.safetensors"] and (out / "model.safetensors").read_text() == "v1"
    assert _names(out.parent) == ["model"]
    _save_copier(Model("v3"), out)
    assert json.loads((out / "config.json").read_text()) == {"tag": "v3"} and _names(out.parent) == ["model"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "fresh") as tmp:
            (tmp / "w").write_text("x")
            raise RuntimeError
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "fresh.tmp").exists()


def test_sigkill_during_writes_never_leaves_a_cut_file(tmp_path):
    """A process rewriting a 2 MB metrics file in a loop is SIGKILLed mid-stream: the file parses and holds one
    complete version, and the next resume removes the temporary the kill left."""
    run = RunDir.create(tmp_path / "r", {"x": 1})
    target = run.path / "metrics.json"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; from tamperlab.runs import atomic_write_json\n"
        "for i in range(10**6):\n"
        f"    atomic_write_json({str(target)!r}, {{'i': i, 'pad': [i] * 400_000}})\n"
        "    print(i, flush=True)\n")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        for _ in range(3):  # a few complete versions, then kill during a later one
            assert child.stdout.readline().strip()
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    data = read_json(target)
    assert data["pad"] == [data["i"]] * 400_000
    RunDir.create(tmp_path / "r", {"x": 1}, resume=True)
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", [b'{"v": 2, "rows": [1, 2', b"", b"\xff\xfe garbage", b'{"v": 2}{'])
def test_a_damaged_stage_is_recomputed_not_loaded(tmp_path, damage):
    """Unversioned, versioned and legacy (payload without an inputs record) stages whose file is cut or garbled
    on disk: the stage runs again, the new value is returned and stored, and the log records why."""
    run = RunDir.create(tmp_path / "r", {"x": 1})
    calls = []

    def fn():
        calls.append(1)
        return {"v": len(calls)}

    for key, inputs in (("plain", None), ("versioned", {"lr": 1}), ("legacy", {"lr": 1})):
        assert run.cached(key, fn, inputs=inputs) == {"v": len(calls)}
        if key == "legacy":
            run.stage_inputs_path(key).unlink()
        run.stage_path(key).write_bytes(damage)
        n = len(calls)
        assert run.cached(key, fn, inputs=inputs) == {"v": n + 1}, key
        assert run.load_stage(key) == {"v": n + 1}
        assert run.cached(key, fn, inputs=inputs) == {"v": n + 1} and len(calls) == n + 1  # and cached again
    corrupt = [e["stage"] for e in run.read_log() if e["event"] == "stage_corrupt"]
    assert corrupt == ["plain", "legacy"]  # the versioned one is caught by its payload hash


def test_a_damaged_inputs_record_recomputes_the_stage(tmp_path):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    calls = []
    run.cached("s", lambda: calls.append(1) or {"v": 1}, inputs={"lr": 1})
    (run.path / "checkpoints" / "s").mkdir(parents=True)
    run.stage_inputs_path("s").write_text('{"inputs_sha256": "ab')
    assert run.cached("s", lambda: calls.append(1) or {"v": 2}, inputs={"lr": 1}) == {"v": 2}
    assert not (run.path / "checkpoints" / "s").exists()  # checkpoints of unknown inputs are not resumed


def test_damaged_result_files_are_one_line_errors_naming_them(tmp_path):
    run = RunDir.create(tmp_path / "r", {"x": 1})
    run.save_metrics({"hs": 1.0})
    (run.path / "metrics.json").write_bytes(b'{"results": {"hs": 1.')
    with pytest.raises(TamperlabError, match="metrics.json is corrupt") as ei:
        run.load_metrics()
    assert "\n" not in str(ei.value)
    (run.path / "config.yaml").write_bytes(b"x: [1, 2\n")
    with pytest.raises(CorruptFileError, match="config.yaml is corrupt") as ei:
        RunDir.create(tmp_path / "r", {"x": 1}, resume=True)
    assert "\n" not in str(ei.value)


def test_provider_secrets_survive_failed_writes_and_damage(tmp_path, monkeypatch, fsync_fails):
    """keys.json: a failed write keeps the previous keys (still 0600); a damaged file is an error naming it,
    never silently replaced by new keys. The query log's hash key: created whole; a damaged one is named."""
    from tamperlab.eaas.auth import resolve_key_secrets
    from tamperlab.eaas.querylog import QueryLog
    from tamperlab.eaas.settings import KeySpec, ServerConfig

    kfile = tmp_path / "keys.json"
    kfile.write_text(json.dumps({"alice": "sk-a"}))
    kfile.chmod(0o600)
    with pytest.raises(OSError, match="No space"):
        resolve_key_secrets(ServerConfig(keys=[KeySpec("alice"), KeySpec("bob")]), tmp_path)
    assert json.loads(kfile.read_text()) == {"alice": "sk-a"} and _names(tmp_path) == ["keys.json"]
    monkeypatch.undo()
    keys = resolve_key_secrets(ServerConfig(keys=[KeySpec("alice"), KeySpec("bob")]), tmp_path)
    assert keys["alice"] == "sk-a" and json.loads(kfile.read_text()) == keys
    assert kfile.stat().st_mode & 0o777 == 0o600
    kfile.write_text('{"alice": "sk-')
    with pytest.raises(TamperlabError, match="keys.json is corrupt"):
        resolve_key_secrets(ServerConfig(keys=[KeySpec("alice")]), tmp_path)

    q = QueryLog(tmp_path / "q.sqlite", retention="hash")
    q.close()
    hk = tmp_path / "q.sqlite.hashkey"
    assert len(hk.read_text()) == 64 and hk.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    hk.write_text("")  # what a kill between create and write left before
    with pytest.raises(TamperlabError, match="hashkey is corrupt"):
        QueryLog(tmp_path / "q.sqlite", retention="hash")


def test_every_result_writer_goes_through_the_atomic_helpers():
    """No module writes a file by hand: serializers that take a path (savefig, save_file, save_pretrained,
    np.save, write_text, open for writing) appear only inside runs.py's helpers' callbacks."""
    import re
    from pathlib import Path

    import tamperlab

    root = Path(tamperlab.__file__).parent
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|json\.dump\(|open\([^)]*['\"][wa]b?['\"]|save_file\(|"
                        r"torch\.save\(|shutil\.copy(2|file)?\(")
    allowed = {("runs.py", 'open(self.path / "log.jsonl", "a")'),  # append-only log: a cut last line is skipped
               ("runs.py", 'os.fdopen(fd, "wb")'),                  # the atomic writer itself
               ("querylog.py", 'os.fdopen(fd, "w")')}               # the hash key's temp, linked into place
    found = []
    for p in root.rglob("*.py"):
        for line in p.read_text().splitlines():
            if direct.search(line) and not line.strip().startswith("#"):
                if not any(p.name == f and frag in line for f, frag in allowed):
                    found.append(f"{p.relative_to(root)}: {line.strip()}")
    assert found == []
    for p in root.rglob("*.py"):  # savefig / save_pretrained / np.save only into a temp file or folder
        text = p.read_text()
        for m in re.finditer(r"(savefig|save_pretrained|np\.savez?|\bmodel\.save)\((?:str\()?(\w+)", text):
            assert m.group(2) in ("f", "tmp"), f"{p.relative_to(root)}: {m.group(0)}"
