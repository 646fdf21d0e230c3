"""Booster's update equals its formula  ∇f(θ) + λ·∇h(θ) − λ·∇h(θ'),  θ' = θ − α·∇h(θ)/‖∇h(θ)‖,
computed explicitly on copies of the model, and its extra term is the difference between the harmful
gradients before and after the simulated harmful step."""

from __future__ import annotations

import copy

import torch

from tamperlab.defenses.booster import BoosterConfig, BoosterDefense
from tamperlab.defenses.sft import SFTDefense
from tamperlab.training import concat_batches

from .conftest import first_batch, trainable_grads, trainer_for


def _loss_grads(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**batch).loss
    return float(loss.detach()), torch.autograd.grad(loss, params)


def test_booster_gradient_matches_formula(lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    alpha, lam = 0.5, 3.0
    defense = BoosterDefense(BoosterConfig(alpha=alpha, lam=lam, helpful_batch_size=2, harmful_batch_size=3))
    trainer = trainer_for(defense, model, tok, align_data, tmp_path)
    batch = first_batch(trainer)
    # LoRA B starts at 0, which makes some gradients vanish; move off that point so every term is generic.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(model)

    model.zero_grad()
    trainer.training_step(model, batch)
    got = trainable_grads(model)

    harmful = trainer.aux["harmful"].batch(0)
    retain = concat_batches(batch, trainer.aux["helpful"].batch(0), tok.pad_token_id)
    h0, g_h = _loss_grads(ref, harmful)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_h)) + 1e-7
    shifted = copy.deepcopy(ref)
    with torch.no_grad():
        for p, g in zip([p for p in shifted.parameters() if p.requires_grad], g_h):
            p.sub_(alpha * g / norm)
    h1, g_h1 = _loss_grads(shifted, harmful)
    _, g_f = _loss_grads(ref, retain)
    expected = [f + lam * a - lam * b for f, a, b in zip(g_f, g_h, g_h1)]

    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the simulated harmful step lowers the harmful loss: that drop is what Booster penalises
    assert h1 < h0
    # the extra term is exactly λ(∇h(θ) − ∇h(θ')) on top of SFT's retain gradient, and it is not negligible
    extra = [g - f for g, f in zip(got, g_f)]
    for e, a, b in zip(extra, g_h, g_h1):
        torch.testing.assert_close(e, lam * (a - b), rtol=1e-3, atol=1e-6)
    assert max(float(e.abs().max()) for e in extra) > 1e-5
    # weights restored exactly after the look-ahead
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_booster_without_regulariser_is_sft(lora_model, align_data, tmp_path):
    """λ = 0 leaves exactly the SFT gradient on the same retain batch."""
    model, tok = lora_model
    model.train()
    booster = trainer_for(BoosterDefense(BoosterConfig(lam=0.0, helpful_batch_size=2)), model, tok, align_data,
                          tmp_path / "b")
    batch = first_batch(booster)
    model.zero_grad()
    booster.training_step(model, batch)
    g_booster = trainable_grads(model)
    sft = trainer_for(SFTDefense(), model, tok, align_data, tmp_path / "s")
    sft.aux = booster.aux  # same helpful stream
    model.zero_grad()
    sft.training_step(model, batch)
    for a, b in zip(g_booster, trainable_grads(model)):
        torch.testing.assert_close(a, b)
