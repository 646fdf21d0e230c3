"""Contract over every registry: entries have a docstring, configs are dataclasses with defaults, and the CLI
lists them."""

from __future__ import annotations

import dataclasses

import pytest

from tamperlab.cli import main
from tamperlab.registry import ALL_REGISTRIES


@pytest.mark.parametrize("stage", sorted(ALL_REGISTRIES))
def test_entries_documented_and_configurable(stage):
    reg = ALL_REGISTRIES[stage]
    for e in reg:
        assert e.doc, f"{stage}.{e.name} has no docstring"
        if e.config is not None:
            assert dataclasses.is_dataclass(e.config)
            e.config()  # every field has a default


def test_core_components_registered():
    assert {"sft", "ctrap"} <= set(ALL_REGISTRIES["defenses"].names())
    assert {"embedded", "beaver-dam", "llama-guard"} <= set(ALL_REGISTRIES["judges"].names())
    assert {"sst2", "agnews", "gsm8k"} <= set(ALL_REGISTRIES["tasks"].names())
    assert "hft" in ALL_REGISTRIES["experiments"].names() and "ctrap" in ALL_REGISTRIES["experiments"]  # ctrap: an alias


def test_cli_list(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "ctrap" in out and "demo_ctrap" in out
