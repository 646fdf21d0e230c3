"""The representation hooks (Vaccine, RepNoise) find the decoder blocks of the architectures the paper uses
(Llama-2, Qwen2, Gemma2) and of Mistral — tiny random configs, real forward/backward — and of a Llama-2-7B-shaped
model on the meta device (no memory), the shape the GPU table recipes load."""

from __future__ import annotations

import pytest
import torch
import transformers

from tamperlab.defenses.lookahead import global_norm
from tamperlab.defenses.representations import decoder_parts
from tamperlab.defenses.repnoise import RepNoiseConfig, RepNoiseDefense
from tamperlab.defenses.vaccine import VaccineConfig, VaccineDefense

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, {"head_dim": 8}),
}


def _batch(rows, width, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (rows, width), generator=g)
    labels = ids.clone()
    labels[:, : width // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_hooks_on_architecture(arch):
    conf_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    model = model_cls(conf_cls(**SMALL, **extra)).train()
    parts = decoder_parts(model)
    assert len(parts.attention) == len(parts.mlp) == 2
    batch = _batch(2, 12, 0)
    loss, eps = VaccineDefense(VaccineConfig(rho=1.0)).perturbation(model, batch)
    assert global_norm(eps) == pytest.approx(1.0, rel=1e-4) and loss > 0
    t = RepNoiseDefense(RepNoiseConfig()).terms(model, model, batch, _batch(2, 10, 1), pad_token_id=0)
    assert all(torch.isfinite(v) for v in t.values())
    t["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_llama2_7b_shape_on_meta_device():
    conf = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(conf)
    parts = decoder_parts(model)
    assert len(parts.attention) == len(parts.mlp) == 32 and parts.lm_head.weight.shape == (32000, 4096)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj"} <= names  # the recipes' LoRA targets
