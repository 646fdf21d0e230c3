"""Recipe validation: unknown keys, wrong types, bad values, missing files, unknown components → one clear
message (exit code 2), never a traceback."""

from __future__ import annotations

import re
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


# --- parent-default rule ---------------------------------------------------------------------------------------
@dataclass
class Parent:
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))
    """the parent's own default for its section differs from Inner's"""
    items: list[Outer] = field(default_factory=lambda: [Outer(steps=9, inner=Inner(lr=0.25))])
    """a default list"""


def test_partial_section_keeps_the_parents_default():
    assert from_dict(Parent, {}).inner.lr == 0.5
    assert from_dict(Parent, {"inner": {}}).inner.lr == 0.5  # an empty section changes nothing
    o = from_dict(Outer, {"inner": {}})
    assert o.inner.lr == 1e-4  # Outer's default for inner is Inner()


def test_list_items_start_from_the_item_class_defaults():
    """A recipe's list replaces the default list; each item starts from the item class's defaults."""
    p = from_dict(Parent, {"items": [{"name": "y"}]})
    assert len(p.items) == 1 and p.items[0].steps == 3 and p.items[0].inner.lr == 1e-4


def test_hft_alignment_override_keeps_experiment_batch():
    """Issue 13: `--set alignment.max_steps=120` used to reset the batch from 4 (HFT's alignment default) to 8."""
    from tamperlab.experiments.ctrap import _alignment_train

    exp = load_recipe({"experiment": "ctrap"}, ["alignment.max_steps=120"])
    ref = _alignment_train()
    assert exp.cfg.alignment.max_steps == 120
    assert exp.cfg.alignment.batch_size == ref.batch_size == 4 and exp.cfg.alignment.save_steps == ref.save_steps


def test_attack_item_keeps_the_papers_attacker():
    """`attacks: [{train: {learning_rate: 1e-4}}]` keeps AttackConfig's own train default (20 epochs, batch 10),
    not TrainConfig's class default (60 steps, batch 8)."""
    from tamperlab.attacks.finetune import _attack_train

    exp = load_recipe({"experiment": "ctrap", "attacks": [{"train": {"learning_rate": 1e-4}}]})
    got, ref = exp.cfg.attacks[0].train, _attack_train()
    assert got.learning_rate == 1e-4
    assert (got.max_steps, got.epochs, got.batch_size, got.save_steps) == (ref.max_steps, 20.0, 10, ref.save_steps)


def test_list_items_overridable_by_index():
    from tamperlab.experiments.ctrap import HFTConfig

    default = HFTConfig().attacks
    exp = load_recipe({"experiment": "ctrap"}, ["attacks.1.train.max_steps=2", "attacks.0.n=7"])
    a0, a1 = exp.cfg.attacks
    assert len(exp.cfg.attacks) == len(default) == 2
    assert (a0.kind, a0.n, a0.train.max_steps) == ("harmful", 7, default[0].train.max_steps)
    assert (a1.kind, a1.n, a1.task, a1.train.max_steps, a1.train.batch_size) == ("benign", 200, "sst2", 2, 10)
    # a list the recipe gives is indexed the same way; -1 is the last item
    exp = load_recipe({"experiment": "ctrap", "attacks": [{"kind": "harmful"}, {"kind": "benign"}]},
                      ["attacks.-1.task=agnews"])
    assert exp.cfg.attacks[1].task == "agnews"
    # an index into a scalar list element
    exp = load_recipe({"experiment": "ctrap"}, ["lora.target_modules.0=o_proj"])
    assert exp.cfg.lora.target_modules == ["o_proj", "k_proj", "v_proj"]


def test_help_examples_work(capsys):
    """Every --set example in `tamperlab run --help` loads on a packaged recipe it applies to."""
    import re

    from tamperlab.cli import SET_HELP

    examples = re.findall(r"--set (\S+?)(?:,|\s|$)", SET_HELP)
    assert len(examples) == 3
    for ex in examples:
        exp = load_recipe("demo_ctrap", [ex])
        key, value = ex.split("=")
        from tamperlab.config import resolve_path

        assert str(resolve_path(exp.cfg, key.split("."))) == value


def test_to_dict_round_trip_of_resolved_config():
    """config.yaml of a run is to_dict(cfg); loading it back gives the same config (resume compares them)."""
    from tamperlab.config import to_dict

    for kind in ("ctrap", "ctrap_table", "extraction", "fingerprints", "eaas"):
        cfg = load_recipe({"experiment": kind}).cfg
        again = load_recipe({"experiment": kind, **to_dict(cfg)}).cfg
        assert to_dict(again) == to_dict(cfg), kind


def test_yaml_error_is_one_line_with_line_and_column(tmp_path):
    from tamperlab.config import load_yaml

    p = tmp_path / "r.yaml"
    p.write_text("experiment: ctrap\nalignment:\n  max_steps: 3\n batch_size: 2\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p)
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"r\.yaml:4:2: not valid YAML", msg), msg


def test_utf16_recipe_with_bom_loads(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes("experiment: ctrap\nname: utf16\n".encode("utf-16"))
    assert load_recipe(p).cfg.name == "utf16"


# --- untrusted weights ---------------------------------------------------------------------------------------------
def _checkpoint(d, *files):
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    for f in files:
        (d / f).write_bytes(b"\x80\x04K\x01.")
    return str(d)


def test_pickle_only_directory_refused_unless_allowed(tmp_path):
    from tamperlab.models import ModelConfig

    pick = _checkpoint(tmp_path / "pick", "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only pickle weights.*allow_pickle"):
        ModelConfig(name_or_path=pick)
    assert ModelConfig(name_or_path=pick, allow_pickle=True).allow_pickle
    ModelConfig(name_or_path=_checkpoint(tmp_path / "safe", "model.safetensors", "pytorch_model.bin"))


def test_unpicklable_weights_are_named(tmp_path):
    """A pickle checkpoint whose bytes are not a valid torch file: a ResourceError naming it, no traceback."""
    import json as _json

    from transformers import LlamaConfig

    from tamperlab.errors import ResourceError
    from tamperlab.models import ModelConfig, load_model

    d = tmp_path / "bad"
    d.mkdir()
    conf = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    (d / "config.json").write_text(_json.dumps(conf.to_dict()))
    (d / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    tok_src = load_tokenizer_dir()
    for f in tok_src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (d / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ResourceError, match=r"cannot (unpickle|load) the weights of"):
        load_model(ModelConfig(name_or_path=str(d), allow_pickle=True))


def load_tokenizer_dir():
    from tamperlab.models import embedded_tokenizer_dir

    return embedded_tokenizer_dir()
