"""Representation-space machinery shared by defenses that act on hidden states rather than on weights:
locating a decoder's blocks (attention / MLP sub-modules, final norm, LM head), capturing their outputs during a
forward pass, adding perturbations to them, and the logit lens.

Vaccine perturbs every attention output; RepNoise reads every MLP output and every hidden state through the
logit lens. Both go through these helpers, so they work for any Hugging Face decoder (Llama, Qwen2, Mistral,
Gemma, ... with or without a peft wrapper) instead of the official code's list of attention classes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import ConfigError

Tensor = Any
Module = Any

# Attribute names of the sub-modules in one decoder block and of the final norm, across HF architectures.
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm")


@dataclass
class DecoderParts:
    """The pieces of a causal LM that representation-level defenses hook into."""

    layers: list[Module]
    """Decoder blocks, input to output."""
    attention: list[Module]
    """Attention sub-module of every block (Vaccine perturbs their outputs)."""
    mlp: list[Module]
    """MLP sub-module of every block (RepNoise's noise term reads their outputs)."""
    final_norm: Module
    """Norm applied before the LM head (the logit lens applies it to every hidden state)."""
    lm_head: Module
    """Output embedding."""


def _child(module: Module, names: Sequence[str]) -> Module | None:
    for n in names:
        sub = getattr(module, n, None)
        if sub is not None:
            return sub
    return None


def decoder_parts(model: Module) -> DecoderParts:
    """Find the block list (the first ModuleList whose items have an attention child) and its siblings.
    `model` may be a peft wrapper; the modules returned are the ones its forward pass runs."""
    import torch

    for _, module in model.named_modules():
        for _, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) and _child(child[0], _ATTN_NAMES) is not None:
                layers = list(child)
                attn = [_child(b, _ATTN_NAMES) for b in layers]
                mlp = [_child(b, _MLP_NAMES) for b in layers]
                norm = _child(module, _NORM_NAMES)
                head = model.get_output_embeddings()
                if any(m is None for m in mlp) or norm is None or head is None:
                    break
                return DecoderParts(layers, attn, mlp, norm, head)
    raise ConfigError(f"{type(model).__name__}: could not locate decoder blocks with attention/MLP sub-modules, a "
                      f"final norm ({'/'.join(_NORM_NAMES)}) and an LM head; representation-level defenses "
                      "(vaccine, repnoise) need a standard decoder-only architecture")


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_outputs(modules: Sequence[Module]) -> Iterator[list[Tensor]]:
    """Record the (first) output tensor of each module during the forward pass run inside the block.

    Yields a list with one slot per module, filled as the modules run (read it after the forward). Only the first
    call of each module is kept, so activation checkpointing's recomputation during backward does not replace
    the tensors that belong to the graph."""
    slots: list[Tensor] = [None] * len(modules)
    handles = []

    def hook_for(i: int) -> Any:
        def hook(_mod: Module, _inp: Any, out: Any) -> None:
            if slots[i] is None:
                slots[i] = _first(out)
        return hook

    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_hook(hook_for(i)))
        yield slots
    finally:
        for h in handles:
            h.remove()


def require_captured(slots: Sequence[Tensor | None]) -> list[Tensor]:
    missing = [i for i, s in enumerate(slots) if s is None]
    if missing:
        raise RuntimeError(f"capture_outputs: modules {missing} did not run in the forward pass")
    return list(slots)


@contextmanager
def add_to_outputs(modules: Sequence[Module], deltas: Sequence[Tensor]) -> Iterator[None]:
    """Add deltas[i] (a constant, no gradient) to the first output of modules[i] in every forward inside the block.
    The gradient w.r.t. the module's parameters is then taken at the perturbed activations."""
    handles = []

    def hook_for(d: Tensor) -> Any:
        def hook(_mod: Module, _inp: Any, out: Any) -> Any:
            h = _first(out)
            if h.shape != d.shape:
                raise RuntimeError(f"add_to_outputs: perturbation of shape {tuple(d.shape)} does not match the "
                                   f"module output {tuple(h.shape)} (same batch needed)")
            shifted = h + d.to(h.dtype)
            return (shifted, *out[1:]) if isinstance(out, tuple) else shifted
        return hook

    try:
        for m, d in zip(modules, deltas):
            handles.append(m.register_forward_hook(hook_for(d.detach())))
        yield
    finally:
        for h in handles:
            h.remove()


def logit_lens(parts: DecoderParts, hidden: Tensor) -> Tensor:
    """Vocabulary logits read from an intermediate hidden state: lm_head(final_norm(h))."""
    return parts.lm_head(parts.final_norm(hidden))


def pad_like(x: Tensor, ref: Tensor, fill: int = 0) -> Tensor:
    """Truncate or pad the 2-D tensor x (rows and columns) to ref's shape, as RepNoise's `adapt_dimension_b2a`
    does to compare an unpaired harmful and harmless batch position by position."""
    import torch.nn.functional as F

    x = x[: ref.shape[0], : ref.shape[1]]
    return F.pad(x, (0, ref.shape[1] - x.shape[1], 0, ref.shape[0] - x.shape[0]), value=fill)
