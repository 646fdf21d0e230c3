"""Hostile run directories and CLI options: files the run wrote and later reads back (config.yaml, stage payloads,
stage records, metrics), damaged from outside, and out-of-range `serve` options → one line naming the file or
option, exit 2, never a traceback. Each case failed before (a yaml/json traceback on `--resume`, or a server that
loaded its model and then hung on an impossible port). No model is loaded."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tamperlab.cli import main
from tamperlab.errors import TamperlabError
from tamperlab.runs import RunDir

BASE = "experiment: hft\nmodel: {name_or_path: 'tiny:llama'}\nname: r\n"
DAMAGE = {
    "truncated": b'{"a": [1, 2',
    "not-utf8": b"\xff\xfe\xfa\x00{",
    "empty": b"",
    "garbage": b"\x00\x01\x02 not json at all",
}


def _one_line_exit_2(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    return lines[0]


@pytest.mark.parametrize("config", ["experiment: 'hft\n", "{oops", "a: [1\n", "\t- x\n"],
                         ids=["unclosed-quote", "unclosed-flow", "unclosed-list", "tab"])
def test_resume_with_a_corrupt_config_yaml(config, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    line = _one_line_exit_2(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--resume"], capsys)
    assert "config.yaml is corrupt" in line and "--force" in line, line
    assert (run / "config.yaml").read_text() == config  # nothing was overwritten


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
@pytest.mark.parametrize("which", ["unversioned-payload", "versioned-record", "metrics"])
def test_damaged_run_file_is_named(which, damage, tmp_path):
    """A stage payload (keyed by name only) and a versioned stage's inputs record are read on resume, metrics by
    `report` and seed aggregation: damaged, each is a TamperlabError naming the file (was: JSONDecodeError)."""
    run = RunDir(tmp_path / "r")
    (run.path / "stages").mkdir(parents=True)
    (run.path / "stage_inputs").mkdir()
    computed = []
    if which == "unversioned-payload":
        target = run.stage_path("data")
        target.write_bytes(DAMAGE[damage])
        call = lambda: run.cached("data", lambda: computed.append(1))  # noqa: E731
    elif which == "versioned-record":
        target = run.stage_inputs_path("data")
        target.write_bytes(DAMAGE[damage])
        call = lambda: run.cached("data", lambda: computed.append(1), inputs={"n": 1})  # noqa: E731
    else:
        target = run.path / "metrics.json"
        target.write_bytes(DAMAGE[damage])
        call = run.load_metrics
    with pytest.raises(TamperlabError, match=f"{target.name} is corrupt"):
        call()
    assert not computed and target.read_bytes() == DAMAGE[damage]


def test_damaged_versioned_payload_is_recomputed_not_loaded(tmp_path):
    """A versioned stage whose payload no longer matches its record's hash is unfinished: recomputed (what the
    record's payload_sha256 is for), so it needs no error."""
    run = RunDir(tmp_path / "r")
    assert run.cached("data", lambda: {"x": 1}, inputs={"n": 1}) == {"x": 1}
    run.stage_path("data").write_text('{"x": ')
    assert run.cached("data", lambda: {"x": 2}, inputs={"n": 1}) == {"x": 2}
    assert json.loads(run.stage_path("data").read_text()) == {"x": 2}


@pytest.mark.parametrize("args,fragment", [
    (["--port", "-1"], "argument --port: must be in [1, 65535], got -1"),
    (["--port", "0"], "argument --port: must be in [1, 65535], got 0"),
    (["--port", "70000"], "argument --port: must be in [1, 65535], got 70000"),
    (["--port", "80.5"], "argument --port: expected an integer, got '80.5'"),
    (["--port", "http"], "argument --port: expected an integer"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--workers", "-3"], "argument --workers: must be >= 1, got -3"),
    (["--workers", "two"], "argument --workers: expected an integer"),
], ids=["port-negative", "port-zero", "port-too-big", "port-float", "port-word", "workers-zero",
        "workers-negative", "workers-word"])
def test_serve_option_out_of_range(args, fragment, capsys):
    line = _one_line_exit_2(["serve", "demo_eaas", *args], capsys)
    assert fragment in line, line


def test_serve_on_a_port_in_use_fails_before_loading(capsys, monkeypatch):
    """The port is checked before the provider's model loads (was: minutes of loading, then uvicorn's error)."""
    import tamperlab.eaas.server as server

    monkeypatch.setattr(server, "_build_from_spec", lambda spec: pytest.fail("model loaded before the port check"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _one_line_exit_2(["serve", "demo_eaas", "--port", str(port)], capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in line, line


def test_serve_on_an_unknown_host_fails_before_loading(capsys, monkeypatch):
    import tamperlab.eaas.server as server

    monkeypatch.setattr(server, "_build_from_spec", lambda spec: pytest.fail("model loaded before the host check"))
    line = _one_line_exit_2(["serve", "demo_eaas", "--host", "no-such-host.invalid"], capsys)
    assert "--host 'no-such-host.invalid'" in line, line
