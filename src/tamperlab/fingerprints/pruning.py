"""Unstructured pruning of a causal LM's decoder linear layers at a ratio: magnitude, Wanda, random.

* magnitude (L1): per weight matrix, zero the `ratio` fraction of entries with the smallest |W|
  (`torch.nn.utils.prune.L1Unstructured`);
* Wanda (Sun et al. 2024): score |W_ij| · ‖X_j‖₂ with X the layer's inputs on calibration text, and zero the
  `ratio` lowest-scoring entries *within each output row* (Wanda's per-output comparison group);
* random: zero a uniformly random `ratio` fraction (`prune.RandomUnstructured`; the MEraser baseline table's
  "Random 20%").
Wanda's per-row comparison of |W|·‖X‖ has no torch pruning class, so its mask is a row-wise topk here.
Embeddings and the LM head are left intact, as in both papers.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Sequence

log = logging.getLogger("tamperlab")

PruneMethod = Literal["magnitude", "wanda", "random"]


def _k(n: int, ratio: float) -> int:
    """Entries pruned: round(ratio·n), the count torch.nn.utils.prune uses for a float `amount`."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    return int(round(ratio * n))


def _torch_mask(method: Any, w: Any) -> Any:
    import torch

    return method.compute_mask(w.detach(), default_mask=torch.ones_like(w, dtype=w.dtype)).to(torch.bool)


def magnitude_mask(w: Any, ratio: float) -> Any:
    """Boolean keep-mask from torch's `prune.L1Unstructured`: False on the round(ratio·numel) smallest |w|."""
    from torch.nn.utils import prune

    _k(w.numel(), ratio)
    return _torch_mask(prune.L1Unstructured(amount=float(ratio)), w)


def wanda_mask(w: Any, input_norm: Any, ratio: float) -> Any:
    """Keep-mask from |W|·‖X_j‖ with W [out, in] and input_norm [in]; prunes round(ratio·in) per output row."""
    import torch

    if w.dim() != 2 or input_norm.shape[0] != w.shape[1]:
        raise ValueError(f"wanda: weight {tuple(w.shape)} and input norms {tuple(input_norm.shape)} do not match")
    score = w.abs() * input_norm.reshape(1, -1).to(w.dtype)
    k = _k(w.shape[1], ratio)
    keep = torch.ones_like(w, dtype=torch.bool)
    if k:
        idx = score.topk(k, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    return keep


def random_mask(w: Any, ratio: float, generator: Any = None) -> Any:
    """Keep-mask from torch's `prune.RandomUnstructured` (round(ratio·numel) uniformly random entries pruned).
    torch draws from the global generator: with `generator`, its next seed seeds a forked global state."""
    import torch
    from torch.nn.utils import prune

    _k(w.numel(), ratio)
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return _torch_mask(prune.RandomUnstructured(amount=float(ratio)), w)


def prunable_linears(model: Any) -> dict[str, Any]:
    """Linear layers inside the transformer blocks (not the embeddings / LM head)."""
    import torch

    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and "lm_head" not in n}


def input_norms(model: Any, tok: Any, texts: Sequence[str], max_length: int = 128) -> dict[str, Any]:
    """‖X_j‖₂ over all calibration tokens for each prunable linear's input feature j (forward hooks)."""
    import torch

    layers = prunable_linears(model)
    sq: dict[str, Any] = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in layers.items()}
    handles = []

    def hook(name: str):  # noqa: ANN202
        def fn(_mod: Any, inp: tuple[Any, ...], _out: Any) -> None:
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).to(torch.float64)
            sq[name] += (x * x).sum(dim=0).cpu()
        return fn

    for n, m in layers.items():
        handles.append(m.register_forward_hook(hook(n)))
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.inference_mode():
            # One unpadded row at a time: pad positions would add activations that are not real inputs.
            for text in texts:
                ids = tok(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
                if ids:
                    model(input_ids=torch.tensor([ids], device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: v.sqrt().to(torch.float32) for n, v in sq.items()}


def prune_model(model: Any, method: PruneMethod, ratio: float, norms: dict[str, Any] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Zero weights in place; returns the achieved sparsity of the pruned layers."""
    import torch

    g = torch.Generator().manual_seed(seed)
    zeroed = total = 0
    with torch.no_grad():
        for n, m in prunable_linears(model).items():
            w = m.weight
            if method == "magnitude":
                keep = magnitude_mask(w, ratio)
            elif method == "wanda":
                if norms is None or n not in norms:
                    raise ValueError("wanda pruning needs calibration input norms (input_norms)")
                keep = wanda_mask(w, norms[n].to(w.device), ratio)
            elif method == "random":
                keep = random_mask(w, ratio, g)
            else:
                raise ValueError(f"unknown pruning method {method!r} (magnitude | wanda | random)")
            w.mul_(keep.to(w.dtype))
            zeroed += int((~keep).sum())
            total += keep.numel()
    return {"method": method, "ratio": ratio, "sparsity": zeroed / max(total, 1), "layers": len(prunable_linears(model))}
