"""Refusal-direction ablation (`refusal-ablation`, Arditi et al. 2024), checked against independent computations:
the direction equals the normalised difference of last-token mean activations computed here prompt by prompt
(unpadded, from `hidden_states`); after orthogonalisation every residual-stream writer has no component along r,
and — the consequence the paper relies on — the residual stream itself has none, at every layer, for any input.

Why no "raises HS" test: the attack removes *one* direction; it raises harmfulness only where refusal is mediated
by a single direction, which Arditi et al. find in 1.8B–72B chat models. The tiny released model here (2 layers ×
32 dims, refusal taught by a LoRA) spreads its refusal over many directions: measured, the ablation at layer 1
moves the complying-minus-refusing log-likelihood margin on held-out harmful prompts from −0.98 to −1.27 (at the
final residual: −0.87), and greedy answers stay refusals. What can be shown at this size is the strongest premise of
the effect: after the attack the model cannot represent the harmful/harmless difference along r — the two prompt
sets' mean activations coincide along r (test_ablated_model_no_longer_separates_along_r)."""

from __future__ import annotations

import pytest
import torch

from tamperlab.attacks.refusal_ablation import refusal_direction, residual_writers
from tamperlab.data.core import format_example
from tamperlab.errors import ConfigError
from tamperlab.registry import ATTACKS

from .helpers import FMT, HELD_OUT, benign, run_attack


def _texts(tok, examples):
    return [format_example(tok, e, FMT) for e in examples]


def _by_hand(model, tok, texts, layer):
    """Mean last-token activation at the input of `layer`, one unpadded prompt at a time."""
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False, return_tensors="pt")["input_ids"]
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0, -1].double())
    return torch.stack(rows).mean(0)


def _residuals(model, tok, texts):
    """Every position's residual stream at the input of every decoder layer and of the final norm."""
    seen = []
    mods = [*model.model.layers, model.model.norm]
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().double())) for m in mods]
    with torch.no_grad():
        for t in texts:
            model(input_ids=tok(t, add_special_tokens=False, return_tensors="pt")["input_ids"])
    for h in hooks:
        h.remove()
    return seen


def test_direction_matches_the_mean_difference_by_hand(released):
    model, tok = released.released(), released.tok
    harm, harmless = _texts(tok, released.harmful_pool.examples[:12]), _texts(tok, released.benign_pool.examples[:12])
    r, norm = refusal_direction(model, tok, harm, harmless, layer=1, batch_size=5)  # padded batches of 5
    d = _by_hand(model, tok, harm, 1) - _by_hand(model, tok, harmless, 1)
    assert norm == pytest.approx(float(d.norm()), rel=1e-4)
    assert float(r @ (d / d.norm())) > 1 - 1e-6 and float(r.norm()) == pytest.approx(1.0)


def test_orthogonalised_weights_and_residual_stream(released, tmp_path):
    res = run_attack(released, "refusal-ablation", {"n_harmful": 12, "n_harmless": 12}, tmp_path)
    assert res.train is None and res.data["layer"] == 1 and res.data["edited_modules"] == 1 + 2 * 2
    from safetensors.torch import load_file

    r = load_file(str(tmp_path / "refusal_direction.safetensors"))["direction"].double()
    model, tok = res.model, released.tok
    for name, mod in residual_writers(model):
        w = mod.weight.detach().double()
        along = w @ r if name == "embed_tokens" else r @ w  # rows written (embedding) / columns of W x
        assert float(along.abs().max()) < 1e-5 * float(w.abs().max()), name
    # untouched: the readers (q/k/v, gate/up) and the unembedding (untied here)
    ref = released.released()
    for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"):
        assert torch.equal(dict(model.named_parameters())[n], dict(ref.named_parameters())[n])
    texts = _texts(tok, HELD_OUT[:3] + benign(3, offset=300))
    before = _residuals(ref, tok, texts)
    after = _residuals(model, tok, texts)
    assert max(float((h @ r).abs().max()) for h in before) > 0.1  # the direction was present
    assert max(float((h @ r).abs().max()) for h in after) < 1e-4  # and can no longer be written


def test_ablated_model_no_longer_separates_along_r(released, tmp_path):
    res = run_attack(released, "refusal-ablation", {"n_harmful": 24, "n_harmless": 24}, tmp_path)
    from safetensors.torch import load_file

    r = load_file(str(tmp_path / "refusal_direction.safetensors"))["direction"].double()
    tok = released.tok
    harm, harmless = _texts(tok, HELD_OUT), _texts(tok, benign(8, offset=300))  # held out from the estimate
    ref = released.released()
    gap_before = float((_by_hand(ref, tok, harm, 1) - _by_hand(ref, tok, harmless, 1)) @ r)
    gap_after = float((_by_hand(res.model, tok, harm, 1) - _by_hand(res.model, tok, harmless, 1)) @ r)
    assert gap_before > 1.0 and abs(gap_after) < 1e-4, (gap_before, gap_after)


def test_unsupported_architecture_and_layer_are_user_errors(released, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tamperlab.attacks.refusal_ablation import decoder_layers

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel has no `model.layers`"):
        decoder_layers(gpt2)
    with pytest.raises(ConfigError, match="layer 5 out of range"):
        run_attack(released, "refusal-ablation", {"layer": 5}, tmp_path)
    with pytest.raises(ConfigError, match="refusal-ablation.*layer"):
        ATTACKS.config("refusal-ablation", {"layer": 0})
