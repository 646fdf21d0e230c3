"""Lisa: on the attack's Trainer, the alignment state trains on refusal batches instead of the user's, the
fine-tuning state on the user's batch, and both add ρ(θ − θ̃) toward the weights at the last state switch —
checked against gradients computed directly on a copy of the model; the proximal term is off during the first
`proximal_after` fraction of the steps; the states alternate align_steps / finetune_steps."""

from __future__ import annotations

import copy

import torch

from tamperlab.defenses.lisa import LisaConfig, LisaDefense, guard_finetuning
from tamperlab.defenses.sft import SFTDefense
from tamperlab.training import TrainConfig, build_trainer


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _grads(model, batch):
    return torch.autograd.grad(model(**batch).loss, _params(model))


def _setup(lora_model, align_data, tmp_path, **cfg):
    model, tok = lora_model
    model.train()
    trainer = build_trainer(model, tok, list(align_data.harmful), TrainConfig(batch_size=2, max_steps=10,
                                                                            save_steps=1000), tmp_path)
    # set by train(); these tests call training_step directly
    trainer.current_gradient_accumulation_steps, trainer.state.max_steps = 1, 10
    guard = guard_finetuning(LisaDefense(LisaConfig(**cfg)), trainer, list(align_data.refusal))
    return model, trainer, guard, next(iter(trainer.get_train_dataloader()))


def test_states_alternate(lora_model, align_data, tmp_path):
    _, _, guard, _ = _setup(lora_model, align_data, tmp_path, align_steps=2, finetune_steps=3)
    assert [guard.state_at(s) for s in range(7)] == ["alignment"] * 2 + ["finetune"] * 3 + ["alignment"] * 2
    assert guard_finetuning(SFTDefense(), None, []) is None  # other defenses leave the attack alone


def test_steps_match_direct_gradients(lora_model, align_data, tmp_path):
    rho = 0.7
    model, trainer, guard, user = _setup(lora_model, align_data, tmp_path, rho=rho, align_steps=1,
                                         finetune_steps=2, proximal_after=0.0)
    # step 0, alignment state: a refusal batch replaces the user's; anchor = current weights, so no pull yet
    ref = copy.deepcopy(model)
    model.zero_grad()
    trainer.training_step(model, user)
    refusal = guard.alignment.batch(0)
    assert not torch.equal(refusal["input_ids"], user["input_ids"])
    for got, want in zip([p.grad for p in _params(model)], _grads(ref, refusal)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)

    # step 1, fine-tuning state: switch → anchor θ̃ = weights now; move the weights, then a user step pulls back
    trainer.state.global_step = 1
    anchor = [p.detach().clone() for p in _params(model)]
    model.zero_grad()
    trainer.training_step(model, user)  # the switch step: anchored at the current weights
    with torch.no_grad():
        for p in _params(model):
            p.add_(0.05 * torch.randn_like(p))  # as if the optimizer had moved them
    ref = copy.deepcopy(model)
    model.zero_grad()
    trainer.training_step(model, user)
    want = [g + rho * (p.detach() - a) for g, p, a in zip(_grads(ref, user), _params(ref), anchor)]
    for got, w in zip([p.grad for p in _params(model)], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
    assert guard.state == "finetune"


def test_no_proximal_before_warmup(lora_model, align_data, tmp_path):
    model, trainer, guard, user = _setup(lora_model, align_data, tmp_path, rho=5.0, align_steps=1,
                                         finetune_steps=20, proximal_after=0.5)  # max_steps 10: from step 5
    trainer.state.global_step = 1
    trainer.training_step(model, user)  # anchor
    with torch.no_grad():
        for p in _params(model):
            p.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(model)
    model.zero_grad()
    trainer.training_step(model, user)
    for got, want in zip([p.grad for p in _params(model)], _grads(ref, user)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_alignment_loss_on_a_soft_prompted_model_is_peft_loss(tiny_model):
    """Lisa guarding the soft-prompt attack: the alignment batch runs through a prompt-tuned model whose logits
    include its k virtual tokens. The defenses' shared loss equals peft's own labelled loss (which pads the labels
    with -100 for those tokens), also when the first real token is supervised; before the fix it raised a
    shape error (found by the hft_grid_gpu smoke run)."""
    from tamperlab.attacks.soft_prompt import SoftPromptConfig, with_soft_prompt
    from tamperlab.defenses.objectives import global_token_ce

    model, tok = tiny_model
    prompted = with_soft_prompt(model, tok, SoftPromptConfig(num_virtual_tokens=4))
    ids = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    for first_supervised in (False, True):
        labels = ids.clone()
        labels[mask == 0] = -100
        if not first_supervised:
            labels[:, :2] = -100
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        want = prompted(**batch).loss
        got = global_token_ce(prompted, batch)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (first_supervised, got, want)
