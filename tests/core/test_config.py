"""Recipe validation: unknown keys, wrong types, bad values, missing files, unknown components → one clear
message (exit code 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tamperlab.cli import main
from tamperlab.config import from_dict
from tamperlab.errors import ConfigError
from tamperlab.experiments.base import load_recipe


@dataclass
class Inner:
    lr: float = 1e-4
    """learning rate"""


@dataclass
class Outer:
    name: str = "x"
    """name"""
    steps: int = 3
    """steps"""
    inner: Inner = field(default_factory=Inner)
    """nested"""


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'inner.lrr'.*did you mean 'lr'"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_wrong_type_named():
    with pytest.raises(ConfigError, match=r"steps: expected an integer, got 'many'"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"inner: expected a mapping"):
        from_dict(Outer, {"inner": 3})


def test_numeric_strings_and_nesting_accepted():
    o = from_dict(Outer, {"inner": {"lr": "5e-4"}, "steps": 2})
    assert o.inner.lr == 5e-4 and o.steps == 2


def test_recipe_unknown_defense_and_attack_value():
    base = {"experiment": "ctrap", "model": {"name_or_path": "tiny:llama"}}
    with pytest.raises(ConfigError, match=r"unknown defense 'ctarp'.*did you mean 'ctrap'"):
        exp = load_recipe({**base, "defenses": [{"name": "ctarp"}]})
        exp.cfg.defenses[0].build()
    with pytest.raises(ConfigError, match=r"kind.*'harmfull' is not one of"):
        load_recipe({**base, "attacks": [{"kind": "harmfull"}]})
    with pytest.raises(ConfigError, match=r"unknown key 'defenses\[ctrap\].params.lamb'.*did you mean 'lam'"):
        load_recipe({**base, "defenses": [{"name": "ctrap", "params": {"lamb": 1}}]}).cfg.defenses[0].build()
    with pytest.raises(ConfigError, match="harmful_ratio must be in"):
        load_recipe({**base, "attacks": [{"kind": "mixed", "harmful_ratio": 1.5}]})


def test_missing_experiment_key():
    with pytest.raises(ConfigError, match="experiment"):
        load_recipe({"name": "x"})


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: ctrap\nalignmnet: {max_steps: 3}\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'alignmnet'" in err and "did you mean 'alignment'" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err
    notyaml = tmp_path / "x.yaml"
    notyaml.write_text("experiment: [unclosed\n")
    assert main(["run", str(notyaml)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_cli_unreachable_hub_id_is_clear(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("experiment: ctrap\nname: r\noutput_dir: %s\nmodel: {name_or_path: nobody/no-such-model-7b}\n"
                      % tmp_path)
    env = {"PATH": "", "HF_HUB_OFFLINE": "0", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "tamperlab.cli", "run", str(recipe)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "nobody/no-such-model-7b" in proc.stderr and "Traceback" not in proc.stderr


def test_existing_run_dir_needs_resume_or_force(tmp_path):
    from tamperlab.errors import TamperlabError
    from tamperlab.runs import RunDir

    RunDir.create(tmp_path / "r", {"a": 1})
    with pytest.raises(TamperlabError, match="--resume"):
        RunDir.create(tmp_path / "r", {"a": 1})
    RunDir.create(tmp_path / "r", {"a": 1}, resume=True)
    with pytest.raises(TamperlabError, match="recipe differs"):
        RunDir.create(tmp_path / "r", {"a": 2}, resume=True)
