"""Every packaged recipe — demo scale and the GPU-scale ones that name 7B hub models — parses into its
experiment's typed config (no model or data is loaded)."""

from __future__ import annotations

import pytest

from tamperlab.experiments.base import RECIPES_DIR, load_recipe

RECIPES = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


def test_recipes_are_packaged():
    assert {"demo_ctrap.yaml", "ctrap_table_full.yaml", "demo_extraction.yaml", "demo_fingerprints.yaml",
            "demo_eaas.yaml"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses(name):
    exp = load_recipe(RECIPES_DIR / name)
    assert exp.cfg.name


def test_gpu_table_recipe_names_a_7b_hub_model():
    exp = load_recipe(RECIPES_DIR / "ctrap_table_full.yaml")
    assert exp.cfg.model.name_or_path == "meta-llama/Llama-2-7b-hf" and exp.cfg.data.source == "hub"
    assert [d.name for d in exp.cfg.defenses] == ["sft", "ctrap", "vaccine", "booster", "repnoise", "npo",
                                                  "tvaccine", "tar", "safelora", "antidote", "lisa"]
