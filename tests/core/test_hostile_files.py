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
@pytest.mark.parametrize("which", ["unversioned-payload", "versioned-record"])
def test_damaged_stage_file_is_recomputed_and_logged(which, damage, tmp_path):
    """A stage payload (keyed by name only) or a versioned stage's inputs record damaged on disk is derived data:
    on resume the stage is recomputed (was: JSONDecodeError), and the run log names it."""
    run = RunDir(tmp_path / "r")
    (run.path / "stages").mkdir(parents=True)
    (run.path / "stage_inputs").mkdir()
    if which == "unversioned-payload":
        target = run.stage_path("data")
        target.write_bytes(DAMAGE[damage])
        value = run.cached("data", lambda: {"x": 1})
    else:
        target = run.stage_inputs_path("data")
        target.write_bytes(DAMAGE[damage])
        value = run.cached("data", lambda: {"x": 1}, inputs={"n": 1})
    assert value == {"x": 1} and run.load_stage("data") == {"x": 1}
    if which == "unversioned-payload":
        assert [e["stage"] for e in run.read_log() if e["event"] == "stage_corrupt"] == ["data"]


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_metrics_is_named(damage, tmp_path):
    """metrics.json is read by `report` and seed aggregation: damaged, a TamperlabError naming it (was:
    JSONDecodeError), and the file is left as it was."""
    run = RunDir(tmp_path / "r")
    run.path.mkdir(parents=True)
    target = run.path / "metrics.json"
    target.write_bytes(DAMAGE[damage])
    with pytest.raises(TamperlabError, match="metrics.json is corrupt"):
        run.load_metrics()
    assert target.read_bytes() == DAMAGE[damage]


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


# --- user data files: one reader (data/files.read_rows) for every .json/.jsonl a recipe points at ---------------
ROW = '{"instruction": "q", "output": "a"}'
DATA_FILES = [  # (id, suffix, content, fragment)
    ("empty-jsonl", ".jsonl", b"", "has no rows"),
    ("blank-lines", ".jsonl", b"\n  \n", "has no rows"),
    ("bad-json-line-2", ".jsonl", (ROW + "\n{oops\n").encode(), ".jsonl:2: not valid JSON"),
    ("truncated-json", ".json", b'[{"instruction": "q"', "not valid JSON"),
    ("json-not-a-list", ".json", b'{"instruction": "q"}', "expected a JSON list of rows, got dict"),
    ("json-list-of-ints", ".json", b"[1, 2, 3]", "row 0: expected an object"),
    ("jsonl-string-row", ".jsonl", b'"just text"\n', ".jsonl:1: expected an object"),
    ("not-utf8", ".jsonl", b"\xff\xfe\xfa\n", "is not UTF-8 text"),
    ("wrong-columns", ".jsonl", b'{"foo": "bar"}\n', "no row has a query"),
    ("messages-not-dicts", ".jsonl", b'{"messages": [1, 2]}\n', "no row has a query"),
]


@pytest.mark.parametrize("case_id,suffix,content,fragment", DATA_FILES, ids=[c[0] for c in DATA_FILES])
def test_extraction_data_file_refused_at_load_time(case_id, suffix, content, fragment, tmp_path, capsys):
    """Was: a JSONDecodeError/AttributeError traceback, or a run on an empty or column-less file (silently no
    D1 examples)."""
    data = tmp_path / f"d1{suffix}"
    data.write_bytes(content)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"experiment: extraction\nmodel: {{name_or_path: 'tiny:llama'}}\nname: r\n"
                      f"data: {{d1_source: '{data}'}}\n")
    line = _one_line_exit_2(["run", str(recipe), "--output-dir", str(tmp_path / "runs")], capsys)
    assert "data.d1_source" in line and fragment in line, line
    assert not (tmp_path / "runs").exists()  # refused before the run directory exists


def test_extraction_data_file_accepted_forms(tmp_path):
    from tamperlab.extraction.data import file_examples

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(ROW + "\n\n" + '{"messages": [{"content": "q2"}, {"content": "a2"}]}\n')
    lst = tmp_path / "b.json"
    lst.write_bytes(b"\xef\xbb\xbf" + f"[{ROW}]".encode())  # a UTF-8 BOM is fine
    assert [(e.prompt, e.response) for e in file_examples(jsonl, 10, "x")] == [("q", "a"), ("q2", "a2")]
    assert [(e.prompt, e.response) for e in file_examples(lst, 10, "x")] == [("q", "a")]


@pytest.mark.parametrize("recover,mismatched,fragment", [
    ("{oops", "[]", "recover_dataset.json: not valid JSON"),
    ("[]", "[]", "recover_dataset.json has no rows"),
    ('[{"question": "q"}]', "[]", "recover_dataset.json row 0: no 'answer' column"),
    ('[{"question": "q", "answer": "a"}]', '[{"question": "q"}]', "no 'mismatched_answer' column"),
    ('[{"question": "q", "answer": "a"}]', '{"question": "q"}', "expected a JSON list of rows, got dict"),
], ids=["bad-json", "empty", "no-answer", "no-mismatched-answer", "not-a-list"])
def test_meraser_files_refused_at_load_time(recover, mismatched, fragment, tmp_path, capsys):
    """Was: JSONDecodeError/KeyError traceback after the run had started (or a run on empty clean data)."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "recover_dataset.json").write_text(recover)
    (files / "mismatched_dataset.json").write_text(mismatched)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"experiment: fingerprints\nmodel: {{name_or_path: 'tiny:llama'}}\nname: r\n"
                      f"clean_data: {{source: files, files_dir: '{files}'}}\n")
    line = _one_line_exit_2(["run", str(recipe), "--output-dir", str(tmp_path / "runs")], capsys)
    assert "clean_data.files_dir" in line and fragment in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"", "has 0 news rows"),
    (b"N1\tnews\tsub\n", "has 0 news rows"),
    (b"\xff\xfe\n", "is not UTF-8 text"),
], ids=["empty", "no-title-column", "not-utf8"])
def test_mind_file_refused(content, fragment, tmp_path):
    """Was: `ValueError: zero-size array` from deep inside the stealer's training."""
    from tamperlab.errors import ResourceError
    from tamperlab.eaas.data import load_task

    news = tmp_path / "news.tsv"
    news.write_bytes(content)
    with pytest.raises(ResourceError, match=fragment):
        load_task("mind", "train", 10, 0, str(news))


@pytest.mark.parametrize("value,ok", [("grpo", True), ("dapo", True), ("dr_grpo", True), ("grpoo", False),
                                      ("GRPO", False), ("", False)])
def test_grpo_loss_type_checked_at_load_time(value, ok):
    """A free string handed to trl: an unknown one raised ValueError only when GRPO training started (after the
    backdoor SFT stage); now refused at load time against the installed trl's supported types."""
    from tamperlab.errors import ConfigError
    from tamperlab.experiments.base import load_recipe

    if ok:
        assert load_recipe("demo_extraction_grpo", [f"grpo.loss_type='{value}'"]).cfg.grpo.loss_type == value
    else:
        with pytest.raises(ConfigError, match="grpo.loss_type: unknown trl GRPO loss type"):
            load_recipe("demo_extraction_grpo", [f"grpo.loss_type='{value}'"])


@pytest.mark.parametrize("argv_tail", [["--output-dir", ""], ["--output-dir", "  "], ["--set", "output_dir=''"]],
                         ids=["flag-empty", "flag-blank", "set-empty"])
def test_empty_output_dir_refused(argv_tail, tmp_path, capsys, monkeypatch):
    """Was: an empty output directory meant the current one, so the run started in whatever folder the shell was
    in."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    line = _one_line_exit_2(["run", str(recipe), *argv_tail], capsys)
    assert "output_dir: empty" in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("variant,ok", [("official", True), ("plain", True), ("meta_prompts", False), ("abc", False),
                                        ("", False)])
def test_fingerprint_sweep_variant_checked_at_load_time(variant, ok):
    """Was: any string, then a KeyError in the sweep summary after every trial had trained. fingerprints_sweep_demo
    sweeps an Instructional fingerprint: its variants are official and plain (meta_prompts is HashChain's)."""
    from tamperlab.errors import ConfigError
    from tamperlab.experiments.base import load_recipe

    if ok:
        assert load_recipe("fingerprints_sweep_demo", [f"sweep.variant='{variant}'"]).cfg.sweep.variant == variant
    else:
        with pytest.raises(ConfigError, match=rf"sweep.variant: '{variant}' is not an FSR variant of"):
            load_recipe("fingerprints_sweep_demo", [f"sweep.variant='{variant}'"])


def test_fsr_variants_match_fsr_specs(tokenizer):
    """The load-time list (`fsr_variants`) and what verification computes (`fsr_specs`) are the same names, for
    every registered fingerprint method."""
    from tamperlab.registry import FINGERPRINTS

    for entry in FINGERPRINTS:
        fp = entry.obj(entry.config() if entry.config else None)
        assert set(fp.fsr_specs(tokenizer)) == set(entry.obj.fsr_variants), entry.name
