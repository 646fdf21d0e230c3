"""Model merging on weight tensors: Task Arithmetic, TIES and DARE (linear or TIES-style sign consensus).

All methods work on task vectors τ_i = θ_i − θ_base and return θ_base + λ · merge(τ_1 … τ_n):

* Task Arithmetic (Ilharco et al. 2023): merge = Σ_i w_i τ_i.
* TIES (Yadav et al. 2023): trim each τ_i to its top-`density` entries by magnitude, elect a sign per entry from
  the weighted sum of trimmed vectors, then average (weighted) only the entries that agree with the elected sign.
* DARE (Yu et al. 2024): drop each entry of τ_i with probability 1 − density and rescale survivors by 1/density,
  then combine linearly (`dare_linear`) or with TIES's sign consensus (`dare_ties`).

The conventions follow mergekit's `task_arithmetic`, `ties`, `dare_linear`, `dare_ties` (weights applied before
the sign election; TIES/DARE-TIES normalise by the weights of the agreeing models). peft's
`add_weighted_adapter(combination_type="ties"|"dare_linear"|…)` does the same for LoRA adapters; fingerprints here
are planted by full fine-tuning, so we merge full tensors.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

MergeMethod = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties"]


def trim_topk(t: Any, density: float) -> Any:
    """Keep the `density` fraction of entries with the largest magnitude (ties broken by position), zero the rest."""
    import torch

    if density >= 1.0:
        return t.clone()
    k = int(round(density * t.numel()))
    if k <= 0:
        return torch.zeros_like(t)
    flat = t.reshape(-1)
    idx = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.reshape(t.shape)


def dare_drop(t: Any, density: float, generator: Any = None, rescale: bool = True) -> Any:
    """Bernoulli(density) keep mask; survivors ×1/density so the expected task vector is unchanged."""
    import torch

    if density >= 1.0:
        return t.clone()
    keep = torch.rand(t.shape, generator=generator, device=t.device) < density
    out = t * keep
    return out / density if rescale and density > 0 else out


def sign_consensus(deltas: Any, weights: Any) -> Any:
    """TIES disjoint merge of stacked, already-sparsified deltas [n, ...] with per-model weights [n]."""
    import torch

    w = weights.reshape(-1, *([1] * (deltas.dim() - 1))).to(deltas.dtype)
    weighted = deltas * w
    elected = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(deltas) == elected) & (deltas != 0)
    num = (weighted * agree).sum(dim=0)
    den = (w * agree).sum(dim=0)
    safe = torch.where(den != 0, den, torch.ones_like(den))
    return torch.where(den != 0, num / safe, torch.zeros_like(num))


def merge_deltas(deltas: Sequence[Any], weights: Sequence[float], method: MergeMethod, density: float = 1.0,
                 generator: Any = None) -> Any:
    """Combine task vectors of one parameter."""
    import torch

    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} task vectors but {len(weights)} weights")
    w = torch.tensor(list(weights), dtype=deltas[0].dtype, device=deltas[0].device)
    if method == "task_arithmetic":
        return sum(wi * d for wi, d in zip(weights, deltas))
    if method == "ties":
        return sign_consensus(torch.stack([trim_topk(d, density) for d in deltas]), w)
    if method == "dare_linear":
        return sum(wi * dare_drop(d, density, generator) for wi, d in zip(weights, deltas))
    if method == "dare_ties":
        return sign_consensus(torch.stack([dare_drop(d, density, generator) for d in deltas]), w)
    raise ValueError(f"unknown merge method {method!r} (task_arithmetic | ties | dare_linear | dare_ties)")


def merge_state_dicts(base: Mapping[str, Any], models: Sequence[Mapping[str, Any]], weights: Sequence[float],
                      method: MergeMethod, density: float = 1.0, scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """θ_base + scale · merge(θ_i − θ_base) for every floating-point tensor; other tensors are copied from base."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for k, b in base.items():
        if not torch.is_floating_point(b):
            out[k] = b.clone()
            continue
        for i, m in enumerate(models):
            if k not in m or m[k].shape != b.shape:
                raise ValueError(f"merge: model {i} lacks {k!r} or has another shape (same architecture needed)")
        deltas = [m[k].to(torch.float32) - b.to(torch.float32) for m in models]
        merged = merge_deltas(deltas, weights, method, density, g)
        out[k] = (b.to(torch.float32) + scale * merged).to(b.dtype)
    return out
