"""T-Vaccine: the layer probabilities are the normalised harmful-gradient norms of the attention outputs, the
layers are drawn from them, and one step equals Vaccine's two-pass computation restricted to the sampled layers
(hand-written hooks on a copy of the model): perturbation only on the sampled layers' outputs, norm ρ over them,
no update for the other blocks."""

from __future__ import annotations

import copy

import pytest
import torch

from tamperlab.defenses.tvaccine import TVaccineConfig, TVaccineDefense, layer_probabilities, sample_layers

from .conftest import first_batch, trainer_for


def _attention_modules(model):
    return [m for n, m in model.named_modules() if n.endswith("self_attn")]


def _block_of(name: str) -> int:
    return int(name.split("layers.")[1].split(".")[0])


def _jitter(model):
    # LoRA B starts at 0 (no gradient reaches A); move off that point so every term is generic.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _output_grads(model, batch, modules):
    """Gradient of the batch loss w.r.t. each module's output, via retain_grad (independent of output_grads)."""
    outs = []

    def keep(_m, _i, o):
        o[0].retain_grad()
        outs.append(o[0])

    hooks = [m.register_forward_hook(keep) for m in modules]
    model(**batch).loss.backward()
    for h in hooks:
        h.remove()
    model.zero_grad()
    return [o.grad for o in outs]


def test_layer_probabilities_are_normalised_harmful_gradient_norms(lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    _jitter(model)
    trainer = trainer_for(TVaccineDefense(TVaccineConfig(layers_per_step=1, harmful_batch_size=3)), model, tok,
                          align_data, tmp_path)
    harmful = trainer.aux["harmful"].batch(0)
    got = layer_probabilities(model, harmful, _attention_modules(model))
    ref = copy.deepcopy(model)
    norms = [float(g.norm()) for g in _output_grads(ref, harmful, _attention_modules(ref))]
    assert got == pytest.approx([n / sum(norms) for n in norms], rel=1e-5)
    assert sum(got) == pytest.approx(1.0)


def test_sampling_follows_the_probabilities():
    assert sample_layers([0.0, 0.0, 1.0, 0.0], 1, (0, 0, 0)) == [2]
    assert sample_layers([0.1, 0.2, 0.3, 0.4], 4, (0, 0, 0)) == [0, 1, 2, 3]
    assert sample_layers([0.1, 0.9], 1, (1, 2, 3)) == sample_layers([0.1, 0.9], 1, (1, 2, 3))  # seeded
    draws = [sample_layers([0.2, 0.8], 1, (s, 0, 0))[0] for s in range(2000)]
    assert sum(draws) / len(draws) == pytest.approx(0.8, abs=0.04)


@pytest.mark.parametrize("selected", [[0], [1]])
def test_step_perturbs_and_trains_only_the_sampled_layers(selected, lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    _jitter(model)
    rho = 2.0
    defense = TVaccineDefense(TVaccineConfig(rho=rho, layers_per_step=1))
    trainer = trainer_for(defense, model, tok, align_data, tmp_path)
    batch = first_batch(trainer)
    ref = copy.deepcopy(model)
    # the step draws its layers from the harmful gradients; pin the draw to test both layers
    defense.update_layers(trainer, model, batch["input_ids"].device)
    defense.selected = selected

    model.zero_grad()
    trainer.training_step(model, batch)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.requires_grad for _, p in named)  # unfrozen again after the step

    attn = _attention_modules(ref)
    chosen = [attn[i] for i in selected]
    g = _output_grads(ref, batch, chosen)
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    eps = [rho * x / norm for x in g]
    hooks = [m.register_forward_hook(lambda _m, _i, o, e=e: (o[0] + e,) + tuple(o[1:])) for m, e in zip(chosen, eps)]
    ref(**batch).loss.backward()
    for h in hooks:
        h.remove()
    expected = dict((n, p.grad) for n, p in ref.named_parameters() if p.requires_grad)

    trained = 0
    for n, p in named:
        if _block_of(n) in selected:
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-7)
            trained += 1
        else:
            assert p.grad is None  # frozen: no gradient, no optimizer update
    assert trained > 0
    # the unselected layer is not perturbed: Vaccine's all-layer perturbation gives a different update
    vaccine_ref = copy.deepcopy(model)
    vaccine_ref.zero_grad()
    g_all = _output_grads(vaccine_ref, batch, _attention_modules(vaccine_ref))
    norm_all = torch.sqrt(sum((x ** 2).sum() for x in g_all))
    hooks = [m.register_forward_hook(lambda _m, _i, o, e=rho * x / norm_all: (o[0] + e,) + tuple(o[1:]))
             for m, x in zip(_attention_modules(vaccine_ref), g_all)]
    vaccine_ref(**batch).loss.backward()
    for h in hooks:
        h.remove()
    other = dict(vaccine_ref.named_parameters())
    assert any(not torch.allclose(p.grad, other[n].grad, rtol=1e-3, atol=1e-6)
               for n, p in named if _block_of(n) in selected)


def test_all_layers_selected_is_vaccine(lora_model, align_data, tmp_path):
    """γ ≥ the block count: every layer perturbed and trained, the step is exactly Vaccine's."""
    from tamperlab.defenses.vaccine import VaccineConfig, VaccineDefense

    model, tok = lora_model
    model.train()
    _jitter(model)
    tv = trainer_for(TVaccineDefense(TVaccineConfig(rho=2.0, layers_per_step=8)), model, tok, align_data,
                     tmp_path / "t")
    batch = first_batch(tv)
    model.zero_grad()
    tv.training_step(model, batch)
    assert tv.defense.selected == [0, 1]
    got = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    va = trainer_for(VaccineDefense(VaccineConfig(rho=2.0)), model, tok, align_data, tmp_path / "v")
    model.zero_grad()
    va.training_step(model, batch)
    for a, p in zip(got, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(a, p.grad)


def test_paper_reference_is_not_comparable_to_a_harmful_only_table():
    """The T-Vaccine reference (mixed p = 0.1 SST2 attack) is rendered next to a CTRAP table run, and the verdict
    names the attack mismatch instead of a pass / fail."""
    from tamperlab.report.references import HFT_REFERENCES, comparison_rows, hft_setting

    run = hft_setting({"model": {"name_or_path": "meta-llama/Llama-2-7b-hf"}, "data": {"source": "hub"}},
                      {"name": "beaver-dam"}, [100])
    rows = comparison_rows(HFT_REFERENCES, {("tvaccine", "hs_io"): 15.0}, run)
    assert [r["method"] for r in rows] == ["tvaccine"]
    assert rows[0]["verdict"].startswith("not comparable: attack harmful n=100")
