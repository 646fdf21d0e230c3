"""NPO: the loss matches  CE_align − ρ·mean log σ(−(log p̄_θ(y|x) − log p̄_ref(y|x)))  against an explicit
frozen copy of the model taken when alignment starts, on a toy batch; the reference costs no weights of its own
and leaves the policy untouched."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tamperlab.defenses.npo import NPOConfig, NPODefense, npo_loss

from .conftest import first_batch, trainable_grads, trainer_for


def _mean_logp(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(1) / mask.sum(1)


def test_npo_term_is_log2_at_the_reference():
    x = torch.tensor([-1.0, -3.0])
    assert float(npo_loss(x, x)) == pytest.approx(math.log(2))
    assert float(npo_loss(x - 1.0, x)) < math.log(2) < float(npo_loss(x + 1.0, x))


def test_npo_loss_and_gradient_match_formula(lora_model, align_data, tmp_path):
    model, tok = lora_model
    model.train()
    rho = 0.7
    defense = NPODefense(NPOConfig(rho=rho, harmful_batch_size=3))
    trainer = trainer_for(defense, model, tok, align_data, tmp_path)  # snapshots the reference here
    reference = copy.deepcopy(model).eval()
    batch = first_batch(trainer)
    # the policy moves away from the reference (as after some alignment steps)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    policy = copy.deepcopy(model)

    model.zero_grad()
    loss = trainer.training_step(model, batch)
    got = trainable_grads(model)

    harmful = trainer.aux["harmful"].batch(0)
    with torch.no_grad():
        ref_lp = _mean_logp(reference, harmful)
    lp = _mean_logp(policy, harmful)
    expected = policy(**batch).loss - rho * F.logsigmoid(-(lp - ref_lp)).mean()
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    params = [p for p in policy.parameters() if p.requires_grad]
    for a, b in zip(got, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(lp, ref_lp)  # the reference really is the snapshot, not the current weights
    for p, q in zip(model.parameters(), policy.parameters()):  # swapping the reference in and out is exact
        assert torch.equal(p, q)
