"""SafeLoRA: the projection and similarity on hand-checked 2×2 matrices, the layer selection, and the repair on a
tiny LoRA model — every projected layer's effective weight becomes W_base + V + C·ΔW (computed here from the
saved and live LoRA factors), the others are untouched."""

from __future__ import annotations

import math

import pytest
import torch

from tamperlab.defenses.post import RepairContext, repair_attacked
from tamperlab.defenses.safelora import (SafeLoRAConfig, SafeLoRADefense, cosine, projection, select_layers)
from tamperlab.defenses.sft import SFTDefense


def test_projection_and_similarity_by_hand():
    v = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    c = projection(v)  # V Vᵀ / ‖V‖_F = diag(4, 0) / 2
    torch.testing.assert_close(c, torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    dw = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(c @ dw, torch.tensor([[2.0, 4.0], [0.0, 0.0]]))
    # ⟨ΔW, CΔW⟩ = 2 + 8 = 10, ‖ΔW‖ = √30, ‖CΔW‖ = √20
    assert cosine(dw, c @ dw) == pytest.approx(10 / math.sqrt(30 * 20))
    assert cosine(dw, torch.zeros(2, 2)) == 0.0
    # an update inside the aligned subspace is kept (similarity 1)
    inside = torch.tensor([[1.0, 5.0], [0.0, 0.0]])
    assert cosine(inside, c @ inside) == pytest.approx(1.0)


def test_layer_selection():
    sims = {"a": 0.9, "b": 0.2, "c": 0.49, "d": 0.5}
    assert select_layers(sims, SafeLoRAConfig(threshold=0.5)) == ["b", "c"]
    assert select_layers(sims, SafeLoRAConfig(select="number", num_layers=3)) == ["b", "c", "d"]
    assert select_layers(sims, SafeLoRAConfig(threshold=0.0)) == []


def _lora(model):
    from tamperlab.defenses.post import lora_layers

    return lora_layers(model)


def _effective(layer):
    with torch.no_grad():
        return layer.get_base_layer().weight.float() + layer.scaling["default"] * (
            layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float())


@pytest.mark.parametrize("threshold", [1.01, -1.0])
def test_repair_projects_selected_layers(threshold, lora_model, tmp_path):
    model, tok = lora_model
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))  # the "alignment" update
    model.save_pretrained(tmp_path / "aligned", safe_serialization=True)
    layers = _lora(model)
    base = {n: l.get_base_layer().weight.detach().clone().float() for n, l in layers.items()}
    aligned = {n: _effective(l) - base[n] for n, l in layers.items()}
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))  # the "attack"
    attacked = {n: _effective(l) - base[n] - aligned[n] for n, l in layers.items()}

    stats = repair_attacked(SafeLoRADefense(SafeLoRAConfig(threshold=threshold)), model,
                            RepairContext(tmp_path / "aligned", [], tok))
    assert stats["repaired"] and stats["n_layers"] == len(layers) == 6  # q, k, v × 2 blocks
    for n, l in layers.items():
        v, dw = aligned[n], attacked[n]
        c = (v @ v.T) / torch.linalg.matrix_norm(v)
        sim = float((dw * (c @ dw)).sum() / (dw.norm() * (c @ dw).norm()))
        assert stats["similarity"][n] == pytest.approx(sim, abs=1e-5)
        want = base[n] + v + (c @ dw if sim < threshold else dw)
        torch.testing.assert_close(_effective(l), want, rtol=1e-4, atol=1e-5)
    assert stats["n_projected"] == (6 if threshold > 1 else 0)


def test_not_a_post_defense_is_left_alone(lora_model, tmp_path):
    model, tok = lora_model
    assert repair_attacked(SFTDefense(), model, RepairContext(tmp_path, [], tok)) is None


def test_soft_prompted_model_is_reported_not_repaired(tiny_model, tmp_path):
    """A soft-prompt attack has no LoRA update: SafeLoRA leaves every weight as it is and says why (a grid mixing
    LoRA and soft-prompt attacks runs through)."""
    from tamperlab.attacks.soft_prompt import SoftPromptConfig, with_soft_prompt

    model, tok = tiny_model
    prompted = with_soft_prompt(model, tok, SoftPromptConfig(num_virtual_tokens=3), seed=0)
    before = {n: p.detach().clone() for n, p in prompted.named_parameters()}
    stats = repair_attacked(SafeLoRADefense(SafeLoRAConfig()), prompted, RepairContext(tmp_path, [], tok))
    assert stats["repaired"] is False and "soft-prompt" in stats["reason"]
    assert all(torch.equal(p, before[n]) for n, p in prompted.named_parameters())
