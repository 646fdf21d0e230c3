"""Attacks as registered components that recipes name (`attacks[].name`, default `finetune`), and the one
collapse-trap text of a harmful-fine-tuning run (the CTRAP defense's `trap_text`; eval follows it)."""

from __future__ import annotations

import pytest

from tamperlab.attacks.finetune import AttackConfig, FineTuneAttack
from tamperlab.config import to_dict
from tamperlab.errors import ConfigError
from tamperlab.experiments.base import load_recipe
from tamperlab.registry import ATTACKS

TINY = {"experiment": "hft", "model": {"name_or_path": "tiny:llama"}}


def _load(**over):
    return load_recipe({**TINY, **over}).cfg


def test_an_attack_entry_without_name_is_a_finetune_attack_as_before():
    cfg = _load(attacks=[{"kind": "harmful", "n": 20}, {"name": "finetune", "kind": "benign", "task": "agnews",
                                                         "label": "ag"}])
    a, b = cfg.attacks
    assert type(a) is type(b) is AttackConfig and a.name == b.name == "finetune"
    assert [a.key, b.key] == ["harmful-n20", "ag"]  # derived label, or the given one (stage keys use it)
    assert isinstance(ATTACKS.build(a.name, a), FineTuneAttack)


def test_a_run_directory_written_before_attacks_were_named_still_loads():
    """Old config.yaml files record `name: ''` (then the table label) for each attack: '' means the default."""
    cfg = _load(attacks=[{"name": "", "kind": "harmful", "n": 20}])
    assert cfg.attacks[0].name == "finetune" and cfg.attacks[0].key == "harmful-n20"


def test_unknown_attack_names_the_attacks_and_what_name_means_now():
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.name: unknown attack 'finetun'; did you mean 'finetune'\?"
                                          r".*table label is `label`"):
        _load(attacks=[{"name": "finetun"}])
    with pytest.raises(ConfigError, match=r"unknown key 'attacks\[0\]\.strength'"):
        _load(attacks=[{"kind": "harmful", "strength": 2}])  # validated against the finetune attack's config


def test_duplicate_attack_labels_are_refused():
    with pytest.raises(ConfigError, match="duplicate labels.*distinct `label`"):
        _load(attacks=[{"kind": "harmful", "n": 20}, {"kind": "harmful", "n": 20}])


def test_resolved_config_round_trips():
    cfg = _load(attacks=[{"kind": "mixed", "harmful_ratio": 0.2, "task": "sst2"}])
    again = load_recipe({"experiment": "hft", **to_dict(cfg)}).cfg
    assert again == cfg and again.attacks[0].key == "mixed-p20-sst2"


def test_the_trap_text_is_set_once_in_the_defense():
    assert _load().eval.trap_text == "an error"  # the CTRAP default
    cfg = _load(defenses=[{"name": "sft"}, {"name": "ctrap", "params": {"trap_text": "a banana"}}])
    assert cfg.eval.trap_text == "a banana"  # evaluation follows the defense
    assert _load(defenses=[{"name": "sft"}], eval={"trap_text": "a banana"}).eval.trap_text == "a banana"
    assert _load(defenses=[{"name": "sft"}]).eval.trap_text == "an error"
    with pytest.raises(ConfigError, match="eval.trap_text 'a banana' differs from the defenses' trap_text 'an error'"):
        _load(eval={"trap_text": "a banana"})
    with pytest.raises(ConfigError, match="different trap_text"):
        _load(defenses=[{"name": "ctrap"}, {"name": "ctrap", "label": "c2", "params": {"trap_text": "a banana"}}])
    # a recorded config (eval.trap_text resolved to the defense's) loads again unchanged
    old = _load(defenses=[{"name": "ctrap", "params": {"trap_text": "a banana"}}])
    assert load_recipe({"experiment": "hft", **to_dict(old)}).cfg == old


def test_the_attacker_sweep_varies_a_finetune_attack_only():
    from dataclasses import dataclass

    from tamperlab.attacks.base import Attack, AttackSpec

    @dataclass
    class NoTrainConfig(AttackSpec):
        name: str = "test-no-train"

    sweep = {"enabled": True, "space": {"learning_rate": [1e-4]}}
    with ATTACKS.scratch():
        ATTACKS.register("test-no-train", config=NoTrainConfig)(type("NoTrain", (Attack,), {"__doc__": "x"}))
        cfg = _load(attacks=[{"name": "test-no-train"}, {"kind": "harmful", "n": 20}], sweep=sweep)
        assert cfg.sweep.base_attack(cfg.attacks) is cfg.attacks[1]  # the first fine-tuning attack
        with pytest.raises(ConfigError, match="'test-no-train' is a 'test-no-train' attack; the sweep varies"):
            _load(attacks=[{"name": "test-no-train"}], sweep={**sweep, "attack": "test-no-train"})
        with pytest.raises(ConfigError, match="no fine-tuning attack to sweep around"):
            _load(attacks=[{"name": "test-no-train"}], sweep=sweep)
    assert "test-no-train" not in ATTACKS
