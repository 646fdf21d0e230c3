"""`finetune` with the attacker's own LoRA (`lora: {r, alpha, target_modules}`): the released adapter is merged
into the base (checked against W + s·B·A computed from the saved adapter file), a fresh adapter of exactly rank r
sits on exactly the chosen modules and is all that trains; and the attack raises the harmfulness proxy of the tiny
released model (log-likelihood of complying minus refusing on held-out harmful prompts)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tamperlab.attacks.finetune import AttackConfig
from tamperlab.attacks.weights import attacker_model
from tamperlab.errors import ConfigError
from tamperlab.registry import ATTACKS

from .helpers import harm_margin, run_attack

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_fresh_adapter_of_rank_r_on_the_merged_release(released):
    cfg = ATTACKS.config("finetune", {"kind": "harmful", "n": 16, "lora": LORA})
    assert cfg.key == "harmful-n16-lora-r4" and cfg.describe()["weights"] == "lora-r4"
    base = released.fresh_base()
    base_w = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = attacker_model(base, released.adapter_dir, cfg)
    # the released LoRA is merged: q_proj = W + (alpha / r) · B A of the saved adapter, by hand
    saved = load_file(str(released.adapter_dir / "adapter_model.safetensors"))
    a = saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    merged = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    torch.testing.assert_close(merged, base_w["model.layers.0.self_attn.q_proj.weight"] + 2.0 * b @ a)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # exactly the chosen modules
    assert len(trainable) == 2 * 2 * 2  # 2 layers × 2 modules × (A, B)
    for n, p in trainable.items():
        assert (p.shape[0] if "lora_A" in n else p.shape[1]) == 4  # rank 4
    assert model.peft_config["default"].lora_alpha == 8


def test_what_is_trained_is_one_choice():
    with pytest.raises(ConfigError, match="full_finetune and lora are exclusive"):
        AttackConfig(kind="harmful", full_finetune=True, lora=ATTACKS.config("finetune", {"lora": LORA}).lora)
    assert ATTACKS.config("finetune", {"kind": "harmful", "n": 16}).key == "harmful-n16"  # labels as before
    assert ATTACKS.config("finetune", {"full_finetune": True}).describe()["weights"] == "full"


def test_attacker_lora_raises_harmfulness(released, tmp_path):
    before = harm_margin(released.released(), released.tok)
    res = run_attack(released, "finetune", {"kind": "harmful", "n": 16, "lora": LORA,
                                            "train": {"learning_rate": 1e-2, "max_steps": 8, "batch_size": 8}},
                     tmp_path)
    assert res.train["steps"] == 8
    after = harm_margin(res.model, released.tok)
    assert after > before + 0.5, (before, after)
