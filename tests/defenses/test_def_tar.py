"""TAR: one outer step equals an independent re-computation on copies of the model — a K-step AdamW adversary run
with torch's own optimizer on a copy, the tamper-resistance gradient at each adversary iterate, averaged, plus the
retain gradient (LM loss + hidden-state distance to the adapter-disabled model) — for K = 1 and 2; the weights are
restored exactly and gradients already accumulated in `.grad` are kept."""

from __future__ import annotations

import copy

import pytest
import torch

from tamperlab.defenses.tar import TARConfig, TARDefense, neg_entropy
from tamperlab.errors import ConfigError
from tamperlab.training import concat_batches

from .conftest import first_batch, trainer_for


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _jitter(model):
    with torch.no_grad():
        for p in _params(model):
            p.add_(0.05 * torch.randn_like(p))


def _retain_grad(model, batch, with_rep):
    out = model(**batch, output_hidden_states=True)
    loss = out.loss
    if with_rep:
        with torch.no_grad(), model.disable_adapter():
            ref = model(**batch, output_hidden_states=True).hidden_states
        m = batch["attention_mask"].float()
        dists = [((h - r).norm(dim=-1) * m).sum() / m.sum() for h, r in zip(out.hidden_states, ref)]
        loss = loss + sum(dists) / len(dists)
    return torch.autograd.grad(loss, _params(model))


@pytest.mark.parametrize("k,with_rep,tr_loss", [(1, False, "refusal"), (2, True, "refusal"), (2, False, "entropy")])
def test_tar_step_matches_recomputation(k, with_rep, tr_loss, lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    _jitter(model)
    cfg = TARConfig(inner_steps=k, adversary_lrs=[5e-3], tr_scale=0.7, retain_scale=1.3, tr_loss=tr_loss,
                    retain_representations=with_rep, helpful_batch_size=2, harmful_batch_size=2)
    trainer = trainer_for(TARDefense(cfg), model, tok, align_data, tmp_path)
    batch = first_batch(trainer)
    ref = copy.deepcopy(model)
    before = [p.detach().clone() for p in _params(model)]
    g0 = [torch.randn_like(p) for p in _params(model)]  # gradients of earlier micro-batches
    for p, g in zip(_params(model), g0):
        p.grad = g.clone()
    trainer.training_step(model, batch)
    got = [p.grad - g for p, g in zip(_params(model), g0)]
    for p, b in zip(_params(model), before):
        assert torch.equal(p, b)  # exact restore after the adversary run

    loader = trainer.aux["harmful"]
    adversary = [loader.batch(i) for i in range(k)]
    held_out = loader.batch(k)
    tr_batch = held_out if tr_loss == "entropy" else batch
    adv = copy.deepcopy(ref)
    opt = torch.optim.AdamW(_params(adv), lr=5e-3)
    tr_grads = []
    for b in adversary:
        adv.zero_grad()
        adv(**b).loss.backward()
        opt.step()
        if tr_loss == "entropy":
            out = adv(**tr_batch)
            logits, labels = out.logits[:, :-1].float(), tr_batch["labels"][:, 1:]
            ent = torch.distributions.Categorical(logits=logits).entropy()
            mask = labels != -100
            tr = -(ent[mask]).mean()
        else:
            tr = adv(**tr_batch).loss
        tr_grads.append(torch.autograd.grad(tr, _params(adv)))
    g_tr = [sum(gs) / k for gs in zip(*tr_grads)]
    retain = concat_batches(batch, trainer.aux["helpful"].batch(0), tok.pad_token_id)
    g_ret = _retain_grad(ref, retain, with_rep)
    expected = [1.3 * r + 0.7 * t for r, t in zip(g_ret, g_tr)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the adversary moved the weights: the TR gradient at θ_K is not the one at θ
    g_at_theta = torch.autograd.grad(ref(**tr_batch).loss if tr_loss == "refusal" else neg_entropy(ref, tr_batch),
                                     _params(ref))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(g_tr, g_at_theta))


def test_neg_entropy_of_uniform_is_minus_log_vocab():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 7)})()

    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.tensor([[-100, -100, 1, 2, 3]] * 2)}
    assert float(neg_entropy(Uniform(), batch)) == pytest.approx(-torch.log(torch.tensor(7.0)).item())


def test_config_checks():
    with pytest.raises(ConfigError, match="adversary_lrs"):
        TARConfig(adversary_lrs=[])
    with pytest.raises(ConfigError, match="tr_every"):
        TARConfig(inner_steps=2, tr_every=3)
