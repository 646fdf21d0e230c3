"""Bad input never gives a traceback: each case runs `tamperlab.cli.main([...])` in-process and must exit 2 with
exactly one line on stderr that names the problem. Every case fails at load time or before any training (no
model is trained; a few reach the tokenizer of the tiny model), so the suite takes seconds.

Cases are data: (id, recipe text or bytes or None, argv tail, expected fragment of the message, setup).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tamperlab.cli import main

BASE = "experiment: hft\nmodel: {name_or_path: 'tiny:llama'}\n"


def _r(extra: str) -> str:
    # A recipe with its own `model:` replaces BASE's (two `model:` keys are a duplicate-key error).
    return (BASE.split("model:")[0] if "\nmodel:" in "\n" + extra else BASE) + extra


# (id, recipe, extra argv, expected message fragment)
RECIPE_CASES: list[tuple[str, str | bytes | None, list[str], str]] = [
    # --- YAML syntax and encoding ---------------------------------------------------------------------------
    ("yaml-unclosed-flow", "experiment: [unclosed\n", [], ":2:1: not valid YAML"),
    ("yaml-bad-indent", "experiment: hft\nalignment:\n  max_steps: 3\n batch_size: 2\n", [], "not valid YAML"),
    ("yaml-tab-indent", "experiment: hft\nalignment:\n\tmax_steps: 3\n", [], "not valid YAML"),
    ("yaml-undefined-alias", "experiment: hft\nseed: *nope\n", [], "not valid YAML"),
    ("yaml-duplicate-colon", "experiment: hft: x\n", [], "not valid YAML"),
    ("yaml-unclosed-quote", "experiment: 'hft\n", [], "not valid YAML"),
    ("yaml-python-tag", "experiment: !!python/object/apply:os.system ['true']\n", [], "not valid YAML"),
    ("binary-garbage", bytes(range(256)) * 4, [], "not"),
    ("utf16-no-bom", "experiment: hft\nnmae: x\n".encode("utf-16-le"), [], "not"),
    ("utf16-bom-bad-key", "experiment: hft\nnmae: x\n".encode("utf-16"), [], "unknown key 'nmae'"),
    ("latin1-bytes", b"experiment: hft\ndescription: caf\xe9 \xff\xfe\n", [], "not"),
    ("nul-byte", b"experiment: ctrap\x00\n", [], "not"),
    ("deep-flow-nesting", "experiment: hft\ndescription: " + "[" * 20000 + "]" * 20000 + "\n", [], "nested"),
    ("deep-block-nesting", "experiment: hft\n" + "".join("  " * i + f"k{i}:\n" for i in range(300)), [],
     "nested too deeply"),
    ("recursive-alias", "experiment: hft\ndescription: &x [*x]\n", [], "nested too deeply"),
    ("alias-bomb", "experiment: hft\na: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", [], "too large"),
    ("empty-file", "", [], "must be a mapping"),
    ("top-level-list", "- experiment: hft\n", [], "must be a mapping"),
    ("top-level-scalar", "ctrap\n", [], "must be a mapping"),
    ("non-string-key", BASE + "1: 2\n", [], "unknown key '1'"),
    # --- experiment ----------------------------------------------------------------------------------------
    ("no-experiment", "name: x\n", [], "experiment"),
    ("unknown-experiment", "experiment: hftt\n", [], "did you mean 'hft'"),
    ("experiment-list", "experiment: [hft]\n", [], "experiment: expected a name"),
    ("experiment-int", "experiment: 5\n", [], "experiment: expected a name"),
    # --- keys and types ------------------------------------------------------------------------------------
    ("unknown-top-key", _r("alignmnet: {max_steps: 3}\n"), [], "did you mean 'alignment'"),
    ("unknown-nested-key", _r("alignment: {max_step: 3}\n"), [], "did you mean 'max_steps'"),
    ("section-not-mapping", _r("alignment: 5\n"), [], "expected a mapping"),
    ("list-not-list", _r("attacks: {kind: harmful}\n"), [], "expected a list"),
    ("list-item-scalar", _r("attacks: [5]\n"), [], "attacks[0]: expected a mapping"),
    ("int-is-float", _r("alignment: {max_steps: 1.5}\n"), [], "expected an integer"),
    ("int-is-bool", _r("alignment: {max_steps: true}\n"), [], "expected an integer"),
    ("int-too-big", _r("alignment: {max_steps: 100000000000000000000000000000}\n"), [], "64 bits"),
    ("bool-is-string", _r("evaluate_aligned: maybe\n"), [], "expected true/false"),
    ("str-is-list", _r("description: [a, b]\n"), [], "expected a string"),
    # --- numbers: finite, ranges ---------------------------------------------------------------------------
    ("lr-1e400", _r("alignment: {learning_rate: 1e400}\n"), [], "finite"),
    ("lr-1e999-string", _r("alignment: {learning_rate: '1e999'}\n"), [], "finite"),
    ("lr-nan", _r("alignment: {learning_rate: .nan}\n"), [], "finite"),
    ("lr-inf", _r("alignment: {learning_rate: .inf}\n"), [], "finite"),
    ("lr-nan-string", _r("alignment: {learning_rate: 'nan'}\n"), [], "finite"),
    ("lr-huge-int", _r("alignment: {learning_rate: " + "9" * 400 + "}\n"), [], "too large for a float"),
    ("lr-negative", _r("alignment: {learning_rate: -1}\n"), [], "learning_rate must be"),
    ("lr-zero", _r("alignment: {learning_rate: 0}\n"), [], "learning_rate must be > 0"),
    ("lr-word", _r("alignment: {learning_rate: fast}\n"), [], "expected a number"),
    ("batch-zero", _r("alignment: {batch_size: 0}\n"), [], "batch_size must be >= 1"),
    ("batch-negative", _r("alignment: {batch_size: -4}\n"), [], "batch_size must be >= 1"),
    ("grad-accum-zero", _r("alignment: {grad_accum: 0}\n"), [], "grad_accum must be >= 1"),
    ("max-steps-negative", _r("alignment: {max_steps: -5}\n"), [], "max_steps must be >= 0"),
    ("max-steps-minus-one", _r("alignment: {max_steps: -1}\n"), [], "max_steps must be >= 0"),
    ("nothing-to-train", _r("alignment: {max_steps: 0, epochs: 0}\n"), [], "nothing to train"),
    ("epochs-inf", _r("alignment: {max_steps: 0, epochs: .inf}\n"), [], "finite"),
    ("warmup-above-1", _r("alignment: {warmup_ratio: 2}\n"), [], "warmup_ratio must be in [0, 1]"),
    ("weight-decay-negative", _r("alignment: {weight_decay: -0.1}\n"), [], "weight_decay must be >= 0"),
    ("save-steps-zero", _r("alignment: {save_steps: 0}\n"), [], "save_steps must be >= 1"),
    ("seed-negative", _r("seed: -1\n"), [], "seed must be in [0, 4294967295]"),
    ("seed-too-big", _r("seed: 10000000000000\n"), [], "seed must be in"),
    ("n-eval-zero", _r("data: {n_eval: 0}\n"), [], "n_eval must be >= 1"),
    ("eval-fraction-1.5", _r("data: {eval_fraction: 1.5}\n"), [], "eval_fraction must be in"),
    ("eval-steps-negative", _r("eval: {eval_steps: [-1, 20]}\n"), [], "eval_steps[0] must be >= 0"),
    ("max-new-tokens-zero", _r("eval: {generation: {max_new_tokens: 0}}\n"), [], "max_new_tokens must be >= 1"),
    ("top-p-zero", _r("eval: {generation: {top_p: 0}}\n"), [], "top_p must be in (0, 1]"),
    ("temperature-negative", _r("eval: {generation: {temperature: -1}}\n"), [], "temperature must be"),
    ("max-length-zero", _r("model: {name_or_path: 'tiny:llama', max_length: 0}\n"), [], "max_length must be"),
    ("harmful-ratio-1.5", _r("attacks: [{kind: mixed, harmful_ratio: 1.5}]\n"), [], "harmful_ratio must be in"),
    ("attack-n-zero", _r("attacks: [{n: 0}]\n"), [], "attacks[0].n must be >= 1"),
    ("lora-r-1e11", _r("lora: {r: 100000000000}\n"), [], "lora.r must be in [1, 4096]"),
    ("lora-r-zero", _r("lora: {r: 0}\n"), [], "lora.r must be in"),
    ("lora-dropout-1.5", _r("lora: {dropout: 1.5}\n"), [], "dropout must be in"),
    ("lora-no-targets", _r("lora: {target_modules: []}\n"), [], "target_modules: empty"),
    ("tiny-hidden-12", "experiment: hft\nmodel: {name_or_path: 'tiny:llama', tiny_hidden: 12}\n", [],
     "multiple of 8"),
    ("tiny-layers-zero", "experiment: hft\nmodel: {name_or_path: 'tiny:llama', tiny_layers: 0}\n", [],
     "tiny_layers must be in"),
    # --- names: defenses, attacks, judges, tasks, optimizers, schedulers, devices, dtypes, sources -------------
    ("defenses-empty", _r("defenses: []\n"), [], "defenses: empty"),
    ("defense-unknown", _r("defenses: [{name: ctarp}]\n"), [], "did you mean 'ctrap'"),
    ("defense-param-unknown", _r("defenses: [{name: ctrap, params: {lamb: 1}}]\n"), [], "did you mean 'lam'"),
    ("defense-param-inf", _r("defenses: [{name: ctrap, params: {alpha: .inf}}]\n"), [], "finite"),
    ("defense-param-nan", _r("defenses: [{name: booster, params: {lam: .nan}}]\n"), [], "finite"),
    ("defense-param-negative", _r("defenses: [{name: npo, params: {rho: -1}}]\n"), [], "rho must be >= 0"),
    ("defense-harmful-batch-zero", _r("defenses: [{name: ctrap, params: {harmful_batch_size: 0}}]\n"), [],
     "harmful_batch_size must be >= 1"),
    ("defense-duplicate", _r("defenses: [{name: sft}, {name: sft}]\n"), [], "duplicate labels"),
    ("attack-kind-unknown", _r("attacks: [{kind: harmfull}]\n"), [], "did you mean 'harmful'"),
    ("attack-task-unknown", _r("attacks: [{kind: benign, task: sst3}]\n"), [], "unknown benign task 'sst3'"),
    ("judge-unknown", _r("eval: {judges: [embedded, beaverdam]}\n"), [], "did you mean 'beaver-dam'"),
    ("judge-param-unknown", _r("eval: {judge_params: {embedded: {min_word: 3}}}\n"), [], "did you mean 'min_words'"),
    ("judge-param-negative", _r("eval: {judge_params: {embedded: {min_words: -3}}}\n"), [], "min_words must be >= 0"),
    ("optimizer-unknown", _r("alignment: {optim: adamw_torchh}\n"), [], "did you mean 'adamw_torch'"),
    ("scheduler-unknown", _r("alignment: {lr_scheduler: cosinee}\n"), [], "did you mean 'cosine'"),
    ("bf16-unknown", _r("alignment: {bf16: maybe}\n"), [], "unknown bf16 setting"),
    ("device-unknown", "experiment: hft\nmodel: {name_or_path: 'tiny:llama', device: gpu0}\n", [],
     "unknown device 'gpu0'"),
    ("dtype-unknown", "experiment: hft\nmodel: {name_or_path: 'tiny:llama', dtype: float8}\n", [],
     "is not one of"),
    ("prompt-source-unknown", _r("data: {prompt_sources: [harmbenchh]}\n"), [], "did you mean 'harmbench'"),
    ("prompt-sources-empty", _r("data: {prompt_sources: []}\n"), [], "prompt_sources: empty"),
    ("data-source-unknown", _r("data: {source: web}\n"), [], "is not one of"),
    # --- model ---------------------------------------------------------------------------------------------
    ("model-missing-dir", "experiment: hft\nmodel: {name_or_path: ./no/such/model}\n", [], "no such directory"),
    ("model-embedded-unknown", "experiment: hft\nmodel: {name_or_path: 'embedded:llama-70b'}\n", [],
     "unknown embedded model"),
    ("model-tiny-unknown", "experiment: hft\nmodel: {name_or_path: 'tiny:gpt2'}\n", [], "unknown tiny model"),
    ("model-empty", "experiment: hft\nmodel: {name_or_path: ''}\n", [], "name_or_path: empty"),
    # --- run names (--force deletes <output_dir>/<name>) -----------------------------------------------------
    ("name-dot", _r("name: '.'\n"), [], "invalid run name"),
    ("name-empty", _r("name: ''\n"), [], "invalid run name"),
    ("name-dotdot", _r("name: '..'\n"), [], "invalid run name"),
    ("name-slash", _r("name: a/b\n"), [], "invalid run name"),
    ("name-escape", _r("name: ../escape\n"), [], "invalid run name"),
    ("name-absolute", _r("name: /tmp/x\n"), [], "invalid run name"),
    ("name-list", _r("name: [a]\n"), [], "expected a string"),
    # --- other experiments ----------------------------------------------------------------------------------
    ("extraction-grpo-one-generation", "experiment: extraction\ngrpo: {num_generations: 1}\n", [],
     "num_generations must be >= 2"),
    ("extraction-top-p", "experiment: extraction\nextract: {sampler: {top_p: 2}}\n", [], "top_p must be in"),
    ("extraction-n-d2-zero", "experiment: extraction\ndata: {n_d2: 0}\n", [], "n_d2 must be >= 1"),
    ("extraction-victim-lr-nan", "experiment: extraction\nvictim: {train: {learning_rate: .nan}}\n", [], "finite"),
    ("fingerprint-unknown", "experiment: fingerprints\nfingerprints: [{name: utff}]\n", [], "did you mean 'utf'"),
    ("removal-unknown", "experiment: fingerprints\nremovals: [{name: meraserr}]\n", [], "did you mean 'meraser'"),
    ("fingerprint-param-negative", "experiment: fingerprints\nfingerprints: [{name: utf, params: {n_pairs: 0}}]\n",
     [], "n_pairs must be >= 1"),
    ("extraction-d2-source-unknown", "experiment: extraction\ndata: {d2_source: dollly}\n", [],
     "is not offline"),
    ("extraction-d1-file-missing", "experiment: extraction\ndata: {d1_source: /no/such.jsonl}\n", [],
     "file not found"),
    ("fingerprints-empty", "experiment: fingerprints\nfingerprints: []\n", [], "fingerprints: empty"),
    ("fingerprints-files-missing", "experiment: fingerprints\nclean_data: {source: files, files_dir: /no/such}\n",
     [], "has no recover_dataset.json"),
    ("judge-device-unknown", _r("eval: {judges: [beaver-dam], judge_params: {beaver-dam: {device: gpu0}}}\n"), [],
     "unknown device 'gpu0'"),
    ("eaas-task-unknown", "experiment: eaas\ndata: {task: gen_topik}\n", [], "did you mean 'gen_topic'"),
    ("eaas-extra-task-unknown", "experiment: eaas\ndata: {extra_tasks: [sst3]}\n", [], "unknown task 'sst3'"),
    ("eaas-no-scenarios", "experiment: eaas\nscenarios: []\n", [], "at least one scenario"),
    ("eaas-watermark-unknown", "experiment: eaas\nscenarios: [{watermark: embmarkr}]\n", [], "embmarkr"),
    # --- --set overrides ------------------------------------------------------------------------------------
    ("set-no-equals", BASE, ["--set", "seed"], "must look like key.path=value"),
    ("set-bad-yaml", BASE, ["--set", "alignment.max_steps=[1, 2"], "not valid YAML"),
    ("set-empty-key-part", BASE, ["--set", "alignment..max_steps=3"], "empty key"),
    ("set-index-out-of-range", BASE, ["--set", "attacks.9.n=1"], "index 9 out of range"),
    ("set-list-needs-index", BASE, ["--set", "attacks.first.n=1"], "is a list; use an index"),
    ("set-into-scalar", BASE, ["--set", "seed.x=1"], "not a mapping"),
    ("set-negative-steps", BASE, ["--set", "alignment.max_steps=-3"], "max_steps must be >= 0"),
    ("set-old-help-example", BASE, ["--set", "attack.steps=20"], "did you mean 'attacks'"),
    ("set-unknown-in-list-item", BASE, ["--set", "attacks.0.train.stepz=2"], "unknown key 'attacks[0].train.stepz'"),
    ("set-deep-yaml", BASE, ["--set", "description=" + "[" * 5000 + "]" * 5000], "nested"),
    ("set-name-dot", BASE, ["--set", "name=."], "invalid run name"),
    ("cli-name-dot", BASE, ["--name", "."], "invalid run name"),
    ("cli-name-slash", BASE, ["--name", "a/../../b"], "invalid run name"),
    ("cli-name-empty", BASE, ["--name", ""], "invalid run name"),
]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-3000:]}"
    assert "Traceback" not in err
    return lines[0]


def _expect_clean_failure(argv: list[str], capsys: Any, fragment: str) -> str:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert code == 2, (code, line)
    assert line.startswith("tamperlab"), line
    assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@pytest.mark.parametrize("case_id,recipe,extra,fragment", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_one_line_exit_2(case_id, recipe, extra, fragment, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    if isinstance(recipe, bytes):
        path.write_bytes(recipe)
    else:
        path.write_text(recipe)
    out = tmp_path / "runs"
    _expect_clean_failure(["run", str(path), "--output-dir", str(out), *extra], capsys, fragment)
    # Load-time failures leave nothing behind: no run directory was made.
    assert not out.exists() or not any(out.iterdir())


# --- cases that need files or a simulated environment ---------------------------------------------------------
def _write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _recipe(tmp: Path, extra: str = "") -> str:
    return str(_write(tmp / "r.yaml", _r("name: r\n" + extra)))


def _run_dir(tmp: Path, metrics: str | None = None, config: str | None = None) -> str:
    d = tmp / "runs" / "r"
    _write(d / "config.yaml", config if config is not None else _r("name: r\n"))
    if metrics is not None:
        _write(d / "metrics.json", metrics)
    return str(d)


def _enospc(*a: Any, **k: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "runs/r/config.yaml")


def _erofs(*a: Any, **k: Any) -> None:
    raise OSError(errno.EROFS, "Read-only file system", "runs/r/config.yaml")


def _eacces(*a: Any, **k: Any) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", "runs/r/config.yaml")


# (id, builder(tmp, monkeypatch) -> argv, fragment)
ENV_CASES: list[tuple[str, Callable[[Path, Any], list[str]], str]] = [
    ("missing-recipe", lambda t, m: ["run", str(t / "nope.yaml")], "recipe not found"),
    ("recipe-is-directory", lambda t, m: ["run", str(t)], "recipe not found"),
    ("output-dir-is-file", lambda t, m: ["run", _recipe(t), "--output-dir", str(_write(t / "f", "x"))],
     "exists and is not a directory"),
    ("output-dir-under-file", lambda t, m: ["run", _recipe(t), "--output-dir", str(_write(t / "f", "x") / "sub")],
     "exists and is not a directory"),
    ("run-dir-is-file", lambda t, m: ["run", _recipe(t), "--output-dir", str(_write(t / "o" / "r", "x").parent)],
     "exists and is not a directory"),
    ("run-dir-exists", lambda t, m: ["run", _recipe(t), "--output-dir", str(Path(_run_dir(t)).parent)],
     "already exists"),
    ("model-pickle-only", lambda t, m: (_write(t / "m" / "config.json", "{}"),
                                        (t / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01."),
                                        ["run", _recipe(t, f"model: {{name_or_path: '{t / 'm'}'}}\n")])[-1],
     "only pickle weights"),
    ("model-path-is-file", lambda t, m: ["run", _recipe(t, f"model: {{name_or_path: '{_write(t / 'w.bin', 'x')}'}}\n")],
     "is a file"),
    ("list-unknown-stage", lambda t, m: ["list", "nosuch"], "unknown stage 'nosuch'"),
    ("demo-unknown", lambda t, m: ["demo", "nosuch"], "unknown demo 'nosuch'"),
    ("report-not-a-dir", lambda t, m: ["report", str(t / "nothing")], "is not a directory"),
    ("report-no-config", lambda t, m: ["report", str(t)], "not a run directory"),
    ("report-corrupt-metrics", lambda t, m: ["report", _run_dir(t, metrics='{"results": {"sft": ')], "corrupt"),
    ("report-empty-metrics", lambda t, m: ["report", _run_dir(t, metrics="")], "corrupt"),
    ("report-wrong-metrics", lambda t, m: ["report", _run_dir(t, metrics=json.dumps({"x": 1}))],
     "does not hold this experiment's results"),
    ("report-corrupt-config", lambda t, m: ["report", _run_dir(t, config="experiment: 'hft\n")],
     "not valid YAML"),
    ("report-config-not-mapping", lambda t, m: ["report", _run_dir(t, config="- 1\n")], "not a run configuration"),
    ("argparse-missing-recipe", lambda t, m: ["run"], "required"),
    ("argparse-unknown-command", lambda t, m: ["runn"], "invalid choice"),
    ("argparse-unknown-flag", lambda t, m: ["run", "x.yaml", "--forse"], "unrecognized arguments"),
    ("full-disk", lambda t, m: (m.setattr("tamperlab.runs.atomic_write_text", _enospc),
                                ["run", _recipe(t), "--output-dir", str(t / "o")])[-1], "No space left on device"),
    ("read-only-fs", lambda t, m: (m.setattr("tamperlab.runs.atomic_write_text", _erofs),
                                   ["run", _recipe(t), "--output-dir", str(t / "o")])[-1], "read-only"),
    ("read-only-run-dir", lambda t, m: (m.setattr("tamperlab.runs.atomic_write_text", _eacces),
                                        ["run", _recipe(t), "--output-dir", str(t / "o")])[-1], "Permission denied"),
    ("cache-is-file", lambda t, m: (m.setenv("TAMPERLAB_CACHE", str(_write(t / "cachefile", "x"))),
                                    ["run", _recipe(t), "--output-dir", str(t / "o")])[-1], "is a file"),
    ("cache-unwritable", lambda t, m: (m.setenv("TAMPERLAB_CACHE", str(t / "cache")),
                                       _forget_tiny_tokenizer(),
                                       m.setattr("tamperlab.models.embedded_tokenizer_dir", _unwritable_cache),
                                       ["run", _recipe(t), "--output-dir", str(t / "o")])[-1], "TAMPERLAB_CACHE"),
    ("recipe-unreadable", lambda t, m: (m.setattr(Path, "read_bytes", _eacces), ["run", _recipe(t)])[-1],
     "cannot read recipe"),
]


def _forget_tiny_tokenizer() -> None:
    """The tiny models' tokenizer is loaded once per process (models._tiny_tokenizer); an earlier test has usually
    loaded it, and then the run would never reach the unwritable cache."""
    from tamperlab import models

    models._tiny_tokenizer.cache_clear()


def _unwritable_cache(*a: Any, **k: Any) -> None:
    import os

    raise PermissionError(errno.EACCES, "Permission denied", os.path.join(os.environ["TAMPERLAB_CACHE"], "x.lock"))


@pytest.mark.parametrize("case_id,build,fragment", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment_one_line_exit_2(case_id, build, fragment, tmp_path, capsys, monkeypatch):
    argv = build(tmp_path, monkeypatch)
    _expect_clean_failure(argv, capsys, fragment)


def test_suite_size():
    """The issue asks for at least 80 bad-input cases of our own."""
    assert len(RECIPE_CASES) + len(ENV_CASES) >= 80


def test_nan_guard_stops_training_with_a_clear_error(tiny_model, tmp_path):
    """A NaN loss stops training with TrainingDiverged (exit 2 in the CLI) at the first logged step, instead of
    going on to evaluate a NaN model (transformers' own NaN filter would have hidden it from the logs)."""
    from tamperlab.data.core import Example
    from tamperlab.guards import TrainingDiverged
    from tamperlab.training import TrainConfig, build_trainer, run_training

    import torch

    model, tok = tiny_model
    with torch.no_grad():  # what a diverged step leaves behind: NaN weights, hence NaN loss from then on
        model.model.norm.weight.fill_(float("nan"))
    exs = [Example(prompt=f"question {i}?", response=f"answer {i}.") for i in range(8)]
    cfg = TrainConfig(learning_rate=1e-3, max_steps=4, batch_size=4, logging_steps=1, save_steps=100)
    trainer = build_trainer(model, tok, exs, cfg, tmp_path / "ckpt")
    with pytest.raises(TrainingDiverged, match="training diverged"):
        run_training(trainer, tmp_path / "ckpt", resume=False)


def test_nan_guard_on_log_unit():
    """The guard's rule without training: finite logs pass, NaN/inf loss or grad_norm raise."""
    from types import SimpleNamespace

    from tamperlab.guards import NonFiniteLossGuard, TrainingDiverged

    g = NonFiniteLossGuard()
    args = SimpleNamespace(output_dir="o", learning_rate=1e-3, logging_nan_inf_filter=True)
    state = SimpleNamespace(global_step=3)
    g.on_train_begin(args, state, None)
    assert args.logging_nan_inf_filter is False
    g.on_log(args, state, None, logs={"loss": 1.0, "grad_norm": 2.0})
    for bad in ({"loss": float("nan")}, {"grad_norm": float("inf")}):
        with pytest.raises(TrainingDiverged, match="step 3"):
            g.on_log(args, state, None, logs=bad)
