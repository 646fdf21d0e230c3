"""Model merging baselines through mergekit (the field's tool, used as a library): Task Arithmetic, TIES, DARE.

`merge_state_dicts` hands every floating-point tensor to mergekit 0.1.5's in-memory API
(`mergekit.merge_methods.api.merge_state_dicts`) with the clean base as mergekit's `base_model`, so the numbers
are mergekit's by construction. mergekit's conventions (0.1.5, `merge_methods/generalized_task_arithmetic.py`,
`sparsify.py`), with τ_i = θ_i − θ_base, w_i the per-model weights, λ = `scale` (mergekit's `lambda`):

* task_arithmetic: θ_base + λ·Σ w_i τ_i (normalize default false).
* ties: trim each τ_i to its k = max(1, floor(density·numel)) largest-|·| entries (`sparsify.magnitude`),
  multiply by w_i, elect a sign per entry = sign of the weighted sum (a zero sum elects +), keep the entries that
  agree with it, and divide their sum by the sum of the agreeing models' weights (normalize default **true**).
* dare_linear / dare_ties: drop each entry with probability 1 − density (`torch.bernoulli`) and rescale the
  survivors so the tensor keeps its **L1 norm** (`rescale_norm=l1`; not 1/density as in the DARE paper and peft),
  then combine linearly (dare_linear) or with TIES's sign election (dare_ties); normalize default **false** for
  both, i.e. the weighted sum is not divided by the agreeing weights.

`normalize=None` keeps mergekit's per-method default; True/False overrides it. DARE's random masks come from
torch's global generator, seeded with `seed` inside `torch.random.fork_rng`, so a merge is reproducible and the
caller's random state is untouched. Non-floating tensors (buffers, step counters) are copied from the base.
Fingerprints here are planted by full fine-tuning, so full tensors are merged (peft's `add_weighted_adapter`
would merge LoRA adapters instead).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

MergeMethod = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties"]
_SPARSIFYING = {"ties", "dare_linear", "dare_ties"}


def merge_state_dicts(base: Mapping[str, Any], models: Sequence[Mapping[str, Any]], weights: Sequence[float],
                      method: MergeMethod, density: float = 1.0, scale: float = 1.0, seed: int = 0,
                      normalize: bool | None = None) -> dict[str, Any]:
    """θ_base + scale · merge(θ_i − θ_base) for every floating-point tensor (mergekit `method`), in float32,
    cast back to the base's dtype; other tensors are copied from base. `density` applies to every model."""
    import torch
    from mergekit.merge_methods.api import merge_state_dicts as mk_merge

    if method not in ("task_arithmetic", *_SPARSIFYING):
        raise ValueError(f"unknown merge method {method!r} (task_arithmetic | ties | dare_linear | dare_ties)")
    if len(models) != len(weights):
        raise ValueError(f"{len(models)} models but {len(weights)} weights")
    floats = [k for k, b in base.items() if torch.is_floating_point(b)]
    for i, m in enumerate(models):
        for k in floats:
            if k not in m or m[k].shape != base[k].shape:
                raise ValueError(f"merge: model {i} lacks {k!r} or has another shape (same architecture needed)")
    ids = [f"model_{i}" for i in range(len(models))]
    inputs = {"base": {k: base[k] for k in floats}, **{n: {k: m[k] for k in floats} for n, m in zip(ids, models)}}
    params: dict[str, Any] = {"weight": dict(zip(ids, map(float, weights))), "lambda": float(scale)}
    if method in _SPARSIFYING:
        params["density"] = {n: float(density) for n in ids}
    if normalize is not None:
        params["normalize"] = bool(normalize)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        merged = mk_merge(inputs, method, base="base", parameters=params, dtype=torch.float32)
    return {k: (merged[k].to(b.dtype) if k in merged else b.clone()) for k, b in base.items()}
