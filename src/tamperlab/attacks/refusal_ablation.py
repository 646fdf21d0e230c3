"""Refusal-direction ablation (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction"):
no training — edit the released model's weights so that it can no longer represent the refusal direction.

1. Direction: r = normalise(μ_harmful − μ_harmless), the difference of the mean residual-stream activations at
   the last prompt token, at the input of decoder layer `layer` (transformers' `hidden_states[layer]`), over
   harmful prompts (the attack pool) and harmless prompts (the benign pool), each rendered as the model is
   prompted (chat template with the generation prompt).
2. Weight orthogonalisation: every weight that writes to the residual stream — the token embedding and, in every
   block, the attention output projection (o_proj) and the MLP down projection (down_proj) — is projected off r:
   W ← W − r rᵀ W for an output matrix (d_model × d_in), E ← E − (E r) rᵀ for the embedding (vocab × d_model),
   b ← b − (rᵀ b) r for a bias. The residual stream then has no component along r at any layer, for any input.

Applied to the released model (the aligned LoRA merged into the base first). Works for llama-style decoders
(Llama, SmolLM2, Qwen2, Mistral: `model.layers[i].self_attn.o_proj`, `.mlp.down_proj`); anything else is refused
with a TamperlabError naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Sequence

from ..config import PosInt, Range
from ..data.core import format_example
from ..errors import ConfigError
from ..registry import ATTACKS
from .base import Attack, AttackContext, AttackResult, AttackSpec
from .weights import released_model


@dataclass
class RefusalAblationConfig(AttackSpec):
    """Refusal-direction ablation by weight orthogonalisation (training-free)."""

    name: str = "refusal-ablation"
    n_harmful: PosInt = 128
    """Harmful prompts the direction is estimated from (paper: 128 harmful instructions)."""
    n_harmless: PosInt = 128
    """Harmless prompts the direction is estimated from (paper: 128 harmless instructions)."""
    layer: Annotated[int, Range(1, None)] | None = None
    """Decoder layer whose input (residual stream) the direction is read at, 1 … L−1 (the input of layer 0 is the
    last token's embedding, the same token for every rendered prompt). None: the middle layer, max(1, floor(L / 2))
    (the paper selects the layer per model on validation scores; its choices sit at 40–60 % of depth, e.g.
    Llama-2-7B 14 of 32, Gemma-2B 10 of 18)."""
    batch_size: PosInt = 16
    """Prompts per forward pass while collecting activations."""

    def default_label(self) -> str:
        return "refusal-ablation" if self.layer is None else f"refusal-ablation-l{self.layer}"

    def describe(self) -> dict[str, Any]:
        return {"label": self.key, "kind": "refusal-ablation", "n": self.n_harmful, "p": None, "task": None}


def decoder_layers(model: Any) -> list[Any]:
    """The decoder blocks of a llama-style causal LM, each with `self_attn.o_proj` and `mlp.down_proj`; a
    TamperlabError names the model class and what is missing otherwise."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    kind = type(model).__name__
    if layers is None:
        raise ConfigError(f"refusal-ablation: {kind} has no `model.layers` (supported: llama-style decoders — "
                          "Llama, SmolLM2, Qwen2, Mistral)")
    for i, block in enumerate(layers):
        for path in ("self_attn.o_proj", "mlp.down_proj"):
            mod = block
            for part in path.split("."):
                mod = getattr(mod, part, None)
            if mod is None or getattr(mod, "weight", None) is None:
                raise ConfigError(f"refusal-ablation: {kind} layer {i} has no `{path}` (supported: llama-style "
                                  "decoders — Llama, SmolLM2, Qwen2, Mistral)")
    return list(layers)


def residual_writers(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every module that writes to the residual stream: the input embedding, then each block's
    o_proj and down_proj."""
    out = [("embed_tokens", model.get_input_embeddings())]
    for i, block in enumerate(decoder_layers(model)):
        out += [(f"layers.{i}.self_attn.o_proj", block.self_attn.o_proj), (f"layers.{i}.mlp.down_proj",
                                                                            block.mlp.down_proj)]
    return out


def last_token_means(model: Any, tokenizer: Any, texts: Sequence[str], layer: int, batch_size: int = 16) -> Any:
    """Mean over `texts` of the residual stream at the input of decoder layer `layer` (hidden_states[layer]) at each
    text's last token. Right-padded batches: causal attention keeps real tokens independent of the padding."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = None
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for row, e in enumerate(enc):
                ids[row, :len(e)] = torch.tensor(e)
                mask[row, :len(e)] = 1
            hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                       use_cache=False).hidden_states[layer]
            last = torch.tensor([len(e) - 1 for e in enc], device=device)
            acts = hs[torch.arange(len(enc), device=device), last].double().sum(0)
            total = acts if total is None else total + acts
    return total / len(texts)


def refusal_direction(model: Any, tokenizer: Any, harmful: Sequence[str], harmless: Sequence[str], layer: int,
                      batch_size: int = 16) -> tuple[Any, float]:
    """(r, ‖μ_harmful − μ_harmless‖): the unit refusal direction (float64) and the norm of the mean difference."""
    diff = (last_token_means(model, tokenizer, harmful, layer, batch_size)
            - last_token_means(model, tokenizer, harmless, layer, batch_size))
    norm = float(diff.norm())
    if norm == 0.0:
        raise ConfigError("refusal-ablation: harmful and harmless prompts have the same mean activation; no "
                          "direction to ablate")
    return diff / norm, norm


def orthogonalize(model: Any, r: Any) -> list[str]:
    """Project every residual-stream writer off the unit vector r, in place (computed in float64, stored back in
    each weight's dtype). Returns the names of the edited modules."""
    import torch

    names = []
    with torch.no_grad():
        for name, mod in residual_writers(model):
            w = mod.weight
            rr = r.to(w.device, torch.float64)
            w64 = w.double()
            if isinstance(mod, torch.nn.Embedding):  # rows are the vectors written: E ← E − (E r) rᵀ
                w.copy_((w64 - torch.outer(w64 @ rr, rr)).to(w.dtype))
            else:  # nn.Linear, output = W x: W ← W − r (rᵀ W)
                w.copy_((w64 - torch.outer(rr, rr @ w64)).to(w.dtype))
                if getattr(mod, "bias", None) is not None:
                    b = mod.bias.double()
                    mod.bias.copy_((b - (rr @ b) * rr).to(mod.bias.dtype))
            names.append(name)
    return names


@ATTACKS.register("refusal-ablation", config=RefusalAblationConfig)
class RefusalAblationAttack(Attack):
    """Refusal-direction ablation (Arditi et al. 2024): orthogonalise residual-stream writers, no training."""

    config_cls = RefusalAblationConfig
    cfg: RefusalAblationConfig
    paper = "Arditi et al. 2024, Refusal in Language Models Is Mediated by a Single Direction (arXiv 2406.11717)"

    def run(self, ctx: AttackContext) -> AttackResult:
        from safetensors.torch import save as safetensors_bytes

        from ..runs import atomic_write_bytes

        cfg = self.cfg
        model = released_model(ctx.base_model, ctx.adapter_dir)
        n_layers = len(decoder_layers(model))
        layer = max(1, n_layers // 2) if cfg.layer is None else cfg.layer
        if not 1 <= layer < n_layers:
            raise ConfigError(f"attack {cfg.key}: layer {layer} out of range (the model has {n_layers} decoder "
                              f"layers; the direction is read at the input of layer 1 … {n_layers - 1})")
        harmful = [e for e in ctx.harmful_pool.examples[: cfg.n_harmful]]
        harmless = [e for e in ctx.benign_pool.examples[: cfg.n_harmless]]
        if not harmful or not harmless:
            raise ConfigError(f"attack {cfg.key}: needs harmful and harmless prompts (pools: {len(harmful)} "
                              f"harmful, {len(harmless)} harmless)")
        tok = ctx.tokenizer
        r, norm = refusal_direction(model, tok, [format_example(tok, e, ctx.prompt_format) for e in harmful],
                                    [format_example(tok, e, ctx.prompt_format) for e in harmless], layer,
                                    cfg.batch_size)
        edited = orthogonalize(model, r)
        model.eval()
        direction = {"direction": r.float().cpu().contiguous()}
        atomic_write_bytes(ctx.output_dir / "refusal_direction.safetensors",
                           lambda f: f.write(safetensors_bytes(direction)))
        data = {"harmful": len(harmful), "harmless": len(harmless), "harmful_source": ctx.harmful_pool.provenance,
                "harmless_source": ctx.benign_pool.provenance, "layer": layer, "n_layers": n_layers,
                "mean_diff_norm": round(norm, 6), "edited_modules": len(edited),
                "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False))}
        return AttackResult(model, data=data)
