"""The CTRAP update equals its formula:  grad = ∇ℓ_retain(θ) + λ·∇ℓ_collapse(θ − α·g_h/‖g_h‖),
computed explicitly on a copy of the model and compared to what the trainer leaves in `.grad`."""

from __future__ import annotations

import copy

import torch

from tamperlab.defenses.base import AlignmentData, relabel_all, trap_token_id
from tamperlab.defenses.ctrap import CTRAPConfig, CTRAPDefense
from tamperlab.training import TrainConfig, concat_batches

from .helpers import harmful_pairs, helpful, refusals


def _grads(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**batch).loss
    return torch.autograd.grad(loss, params)


def test_ctrap_gradient_matches_formula(tiny_model, tmp_path):
    model, tok = tiny_model
    model.train()
    alpha, lam = 0.5, 0.7
    defense = CTRAPDefense(CTRAPConfig(alpha=alpha, lam=lam, helpful_batch_size=2, harmful_batch_size=3))
    data = AlignmentData(refusals(4), harmful_pairs(6), helpful(4))
    trainer = defense.make_trainer(model, tok, data, TrainConfig(batch_size=2, max_steps=1), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    ref = copy.deepcopy(model)  # parameters before the step

    model.zero_grad()
    trainer.training_step(model, batch)
    got = [p.grad.clone() for p in model.parameters() if p.requires_grad]

    harmful = trainer.aux["harmful"].batch(0)
    retain = concat_batches(batch, trainer.aux["helpful"].batch(0), tok.pad_token_id)
    g_h = _grads(ref, harmful)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_h)) + 1e-7
    shifted = copy.deepcopy(ref)
    with torch.no_grad():
        for p, g in zip([p for p in shifted.parameters() if p.requires_grad], g_h):
            p.sub_(alpha * g / norm)
    g_c = _grads(shifted, relabel_all(retain, trap_token_id(tok)))
    g_r = _grads(ref, retain)
    expected = [r + lam * c for r, c in zip(g_r, g_c)]

    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # parameters restored exactly after the look-ahead
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    # the collapse term really contributes (λ·g_c is not negligible)
    assert max(float((lam * c).abs().max()) for c in g_c) > 1e-6


def test_collapse_labels_only_on_response(tokenizer):
    b = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "labels": torch.tensor([[-100, -100, 7, 8]]),
         "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    e = trap_token_id(tokenizer)
    assert tokenizer.decode([e]).strip() == "error"
    out = relabel_all(b, e)
    assert out["labels"].tolist() == [[-100, -100, e, e]] and torch.equal(out["input_ids"], b["input_ids"])
