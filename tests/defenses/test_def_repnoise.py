"""RepNoise: the MMD noise term measures distance to Gaussian noise and falls when the defense trains with it
(and not without it, from the same start); the logit-lens term covers every hidden state; token masks exclude
what the unpaired harmful and harmless batches share."""

from __future__ import annotations

import torch

from tamperlab.defenses.repnoise import RepNoiseConfig, RepNoiseDefense, differing_tokens, mmd
from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model

from .conftest import first_batch, trainer_for


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    assert float(mmd(x, x)) == 0.0
    assert float(mmd(x, y)) < float(mmd(x + 2.0, y)) < float(mmd(x + 5.0, y))


def test_differing_tokens_mask():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 0]])
    b = torch.tensor([[1, 2, 5], [1, 7, 9]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert differing_tokens(a, b, att).tolist() == [[False, False, True, True], [False, True, False, False]]


def _model(tokenizer):
    model, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    # A random-init tiny model's MLP outputs are ~1e-3, a collapsed point where the MMD gradient vanishes;
    # scale them to O(1), as in a trained model, so the representations can move.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(200.0)
    return apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])), tok


def _noise_after_training(beta, tokenizer, data, out, steps=6):
    model, tok = _model(tokenizer)
    defense = RepNoiseDefense(RepNoiseConfig(beta=beta, harmful_batch_size=2))
    trainer = trainer_for(defense, model, tok, data, out, learning_rate=1e-2, max_steps=steps, logging_steps=1)
    batch = first_batch(trainer)
    probe = trainer.aux["harmful"].batch(0)

    def noise():
        with torch.no_grad():
            t = defense.terms(model, model, batch, probe, tok.pad_token_id, torch.Generator().manual_seed(0))
        return float(t["noise"]), float(t["harmful_lens_loss"])

    start = noise()
    trainer.train()
    logged = [r["repnoise/noise"] for r in trainer.state.log_history if "repnoise/noise" in r]
    return start, noise(), logged


def test_noise_term_decreases_over_training(tokenizer, align_data, tmp_path):
    (n0, _), (n_with, _), logged = _noise_after_training(1.0, tokenizer, align_data, tmp_path / "with")
    (m0, _), (n_without, _), _ = _noise_after_training(0.0, tokenizer, align_data, tmp_path / "without")
    assert n0 == m0  # same start
    assert n_with < n0 - 0.02
    assert n_with < n_without  # the decrease comes from the noise term, not from the other two
    assert len(logged) >= 5 and logged[-1] < logged[0]  # and it shows in the training log


def test_lens_loss_covers_every_hidden_state(lora_model, align_data, tmp_path):
    model, tok = lora_model
    defense = RepNoiseDefense(RepNoiseConfig())
    trainer = trainer_for(defense, model, tok, align_data, tmp_path)
    batch, harmful = first_batch(trainer), trainer.aux["harmful"].batch(0)
    seen = []
    head = model.get_output_embeddings()
    h = head.register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        t = defense.terms(model, model, batch, harmful, tok.pad_token_id)
    h.remove()
    n_hidden = model.config.num_hidden_layers + 1
    assert len(seen) == 1 + n_hidden  # model output + logit lens at every hidden state
    a, b = RepNoiseConfig().alpha, RepNoiseConfig().beta
    expected = t["harmless_loss"] + b * t["noise"] - a * torch.log(t["harmful_lens_loss"] + 1)
    torch.testing.assert_close(t["loss"], expected)
