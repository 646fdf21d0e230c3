"""Contract of every registered defense (garak-style plugin test): documented, cited, constructible from its
default config, and two alignment steps on the tiny model move the trainable weights to finite values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tamperlab.defenses.base import Defense, DefenseConfig
from tamperlab.registry import DEFENSES
from tamperlab.training import TrainConfig

NAMES = DEFENSES.names()


def test_all_issue_defenses_registered():
    assert {"sft", "ctrap", "vaccine", "booster", "repnoise", "npo",
            "tvaccine", "tar", "safelora", "antidote", "lisa"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_documented_and_configurable(name):
    entry = DEFENSES.entry(name)
    cls = entry.obj
    assert issubclass(cls, Defense)
    assert (cls.__doc__ or "").strip(), f"{name}: class docstring missing"
    assert (cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__), f"{name}: module docstring"
    assert cls.paper.strip(), f"{name}: `paper` citation missing"
    assert cls.passes_per_step >= 1
    assert entry.config is not None and issubclass(entry.config, DefenseConfig)
    assert cls.config_cls is entry.config
    cfg = entry.config()  # every field has a default
    for f in dataclasses.fields(cfg):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
    defense = cls(cfg)
    assert defense.cfg == cfg


@pytest.mark.parametrize("name", NAMES)
def test_two_alignment_steps_change_weights(name, lora_model, align_data, tmp_path):
    model, tok = lora_model
    entry = DEFENSES.entry(name)
    defense = entry.obj(entry.config())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    stats = defense.align(model, tok, align_data, TrainConfig(batch_size=2, max_steps=2, save_steps=1000,
                                                              logging_steps=1), tmp_path)
    assert stats["steps"] == 2 and torch.isfinite(torch.tensor(stats["train_loss"]))
    after = dict(model.named_parameters())
    moved = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert moved, f"{name}: no trainable tensor changed"
    assert all(torch.isfinite(after[n]).all() for n in before)
    # the defense must not touch frozen weights (look-ahead / reference swaps restore exactly)
    assert all(torch.equal(p, after[n].detach()) for n, p in frozen.items())
