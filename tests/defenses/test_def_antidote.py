"""Antidote: the pruned weights are exactly the top-scoring ones under an independent Wanda score (|W| times the
L2 norm of the layer's input features over the non-padding calibration tokens, collected here with plain hooks),
pruning a fraction zeroes exactly floor(ratio · numel) weights per layer, and a LoRA adapter is merged first so the
fine-tuned (effective) weights are the ones pruned."""

from __future__ import annotations

import copy

import pytest
import torch

from tamperlab.defenses.antidote import AntidoteConfig, AntidoteDefense, prune_mask
from tamperlab.defenses.post import RepairContext, repair_attacked, lora_layers
from tamperlab.training import PadCollator, TokenizedDataset


def _linears(model):
    """Decoder-block linears holding effective weights, found independently of the code under test."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n and "lora_" not in n}


def _expected(model, tok, rows, ratio, soft_prompt=None):
    """(name → effective weight, name → expected prune mask) from an independent computation. With `soft_prompt`
    (k × d virtual-token embeddings) the frozen model is run on [P; embed(ids)] with P attended, by hand."""
    ref = copy.deepcopy(model)
    layers = lora_layers(ref)
    effective = {}
    for n, m in _linears(ref).items():
        w = m.weight.detach().float().clone()
        owner = n[: -len(".base_layer")] if n.endswith(".base_layer") else None
        if owner in layers:
            l = layers[owner]
            w += l.scaling["default"] * (l.lora_B["default"].weight @ l.lora_A["default"].weight).detach()
        effective[n] = w
    data = TokenizedDataset(tok, rows, "auto", 256)
    batch = PadCollator(tok.pad_token_id)([data[i] for i in range(len(data))])
    inputs = {}
    hooks = [m.register_forward_hook(lambda _m, a, _o, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in _linears(ref).items()]
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        if soft_prompt is None:
            ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        else:
            base = ref.get_base_model()
            embeds = base.get_input_embeddings()(batch["input_ids"])
            n, k = embeds.shape[0], soft_prompt.shape[0]
            keep = torch.cat([torch.ones(n, k, dtype=torch.bool), keep], dim=1)
            base(inputs_embeds=torch.cat([soft_prompt.expand(n, -1, -1).to(embeds.dtype), embeds], dim=1),
                 attention_mask=keep.long())
    for h in hooks:
        h.remove()
    masks = {}
    for n, w in effective.items():
        feats = inputs[n][keep]  # (tokens, in)
        score = w.abs() * feats.norm(dim=0)
        k = int(ratio * score.numel())
        m = torch.zeros(score.numel(), dtype=torch.bool)
        m[torch.argsort(score.flatten(), descending=True)[:k]] = True
        masks[n] = m.view_as(score)
    return effective, masks


@pytest.mark.parametrize("use_lora", [False, True])
def test_prunes_exactly_the_top_scoring_weights(use_lora, request, align_data, tmp_path):
    model, tok = request.getfixturevalue("lora_model" if use_lora else "tiny_model")
    if use_lora:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))  # a non-zero fine-tuning update to merge
    ratio = 0.1
    rows = list(align_data.harmful)[:5]
    effective, masks = _expected(model, tok, rows, ratio)
    # one calibration batch of 5 rows = the same tokens as the reference's single forward
    defense = AntidoteDefense(AntidoteConfig(ratio=ratio, n_calibration=5, calibration_batch_size=2))
    stats = repair_attacked(defense, model, RepairContext(tmp_path, rows, tok))
    after = _linears(model)
    assert set(after) == set(masks) and len(after) == 2 * 7  # q k v o gate up down × 2 blocks
    total = 0
    for n, m in after.items():
        w = m.weight.detach().float()
        assert int(masks[n].sum()) == int(ratio * w.numel())
        assert torch.equal(w == 0, masks[n])  # zero exactly where the independent top-k says
        torch.testing.assert_close(w[~masks[n]], effective[n][~masks[n]], rtol=1e-5, atol=1e-6)
        total += int(masks[n].sum())
    assert stats["pruned"] == total and stats["calibration_rows"] == 5


def test_prune_mask_counts():
    score = torch.arange(20.0).view(4, 5)
    m = prune_mask(score, 0.25, "layer")
    assert int(m.sum()) == 5 and bool(m.view(-1)[15:].all())
    r = prune_mask(score, 0.4, "row")
    assert r.sum(1).tolist() == [2, 2, 2, 2] and bool(r[:, 3:].all())
    assert int(prune_mask(score, 0.0, "layer").sum()) == 0


def test_soft_prompted_model_counts_its_virtual_tokens(tiny_model, align_data, tmp_path):
    """A soft-prompt attack leaves the weights alone and prepends k attended virtual tokens inside peft's forward:
    Antidote's calibration must see them (the grid crashed here on a mask of the un-prompted length), and the pruned
    weights are the top-k of an independent score computed on [P; embed(ids)] by hand."""
    from tamperlab.attacks.soft_prompt import SoftPromptConfig, soft_prompt_table, with_soft_prompt

    model, tok = tiny_model
    prompted = with_soft_prompt(model, tok, SoftPromptConfig(num_virtual_tokens=3), seed=0)
    with torch.no_grad():
        soft_prompt_table(prompted).add_(0.5 * torch.randn_like(soft_prompt_table(prompted)))
    ratio, rows = 0.1, list(align_data.harmful)[:5]
    table = soft_prompt_table(prompted).detach().clone()
    effective, masks = _expected(prompted, tok, rows, ratio, soft_prompt=table)
    defense = AntidoteDefense(AntidoteConfig(ratio=ratio, n_calibration=5, calibration_batch_size=5))
    stats = repair_attacked(defense, prompted, RepairContext(tmp_path, rows, tok))
    after = _linears(prompted)
    assert set(after) == set(masks) and stats["pruned"] == sum(int(m.sum()) for m in masks.values())
    for n, m in after.items():
        assert torch.equal(m.weight.detach() == 0, masks[n])
