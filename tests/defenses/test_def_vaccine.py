"""Vaccine: the hidden-embedding perturbation has norm ρ over all layers, it raises the alignment loss (it is
the worst-case first-order direction), and the update is the gradient at the perturbed embeddings — checked
against an explicit two-pass computation with hand-written hooks on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch

from tamperlab.defenses.lookahead import global_norm
from tamperlab.defenses.representations import add_to_outputs, decoder_parts
from tamperlab.defenses.vaccine import VaccineConfig, VaccineDefense

from .conftest import first_batch, trainable_grads, trainer_for


def _attention_modules(model):
    return [m for n, m in model.named_modules() if n.endswith("self_attn")]


@pytest.mark.parametrize("rho", [0.5, 5.0])
def test_perturbation_has_norm_rho_and_raises_loss(rho, lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    defense = VaccineDefense(VaccineConfig(rho=rho))
    batch = first_batch(trainer_for(defense, model, tok, align_data, tmp_path))
    clean, eps = defense.perturbation(model, batch)
    assert len(eps) == len(_attention_modules(model)) == 2
    assert global_norm(eps) == pytest.approx(rho, rel=1e-4)
    with torch.no_grad():
        assert float(model(**batch).loss) == pytest.approx(clean, rel=1e-5)
        with add_to_outputs(decoder_parts(model).attention, eps):
            perturbed = float(model(**batch).loss)
        assert float(model(**batch).loss) == pytest.approx(clean, rel=1e-5)  # hooks removed
    assert perturbed > clean
    # and more than a random direction of the same norm would (ascent direction, not noise)
    rand = [torch.randn_like(e) for e in eps]
    s = rho / global_norm(rand)
    with torch.no_grad(), add_to_outputs(decoder_parts(model).attention, [r * s for r in rand]):
        assert perturbed > float(model(**batch).loss)


def test_vaccine_gradient_matches_two_pass_computation(lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    rho = 2.0
    defense = VaccineDefense(VaccineConfig(rho=rho))
    trainer = trainer_for(defense, model, tok, align_data, tmp_path)
    batch = first_batch(trainer)
    ref = copy.deepcopy(model)

    model.zero_grad()
    trainer.training_step(model, batch)
    got = trainable_grads(model)

    # pass 1: gradient of the alignment loss w.r.t. each attention output (retain_grad on hooked outputs)
    outs = []

    def keep(_m, _i, o):
        o[0].retain_grad()
        outs.append(o[0])

    hooks = [m.register_forward_hook(keep) for m in _attention_modules(ref)]
    ref(**batch).loss.backward()
    for h in hooks:
        h.remove()
    g = [o.grad for o in outs]
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    eps = [rho * x / norm for x in g]
    ref.zero_grad()
    # pass 2: loss with ε added to the attention outputs; its weight gradient is the update
    hooks = [m.register_forward_hook(lambda _m, _i, o, e=e: (o[0] + e,) + tuple(o[1:]))
             for m, e in zip(_attention_modules(ref), eps)]
    ref(**batch).loss.backward()
    for h in hooks:
        h.remove()
    expected = [p.grad for p in ref.parameters() if p.requires_grad]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # it differs from the unperturbed gradient (the perturbation matters)
    ref.zero_grad()
    ref(**batch).loss.backward()
    clean = [p.grad for p in ref.parameters() if p.requires_grad]
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(got, clean))
