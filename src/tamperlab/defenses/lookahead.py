"""The shared mechanism of look-ahead defenses (CTRAP, Booster, ...): gradients that leave `.grad` alone,
a normalised simulated step θ' = θ − α·g/‖g‖, evaluation at θ', exact restore, and gradient composition.

First-order throughout, like the official code: gradients of terms evaluated at θ' are applied at θ without
back-propagating through θ' (no Hessian-vector products).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

Tensor = Any


def trainable(model: Any) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Under DDP, auxiliary gradients must be identical on every rank, or the replicas drift apart."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for t in tensors:
            dist.all_reduce(t)
            t.div_(world)


def loss_and_grads(model: Any, batch: dict[str, Tensor], params: Sequence[Tensor],
                   loss_fn: Callable[[Any, dict[str, Tensor]], Tensor] | None = None) -> tuple[float, list[Tensor]]:
    """Loss and d loss / d params via autograd.grad: `.grad` (the optimizer's accumulator) is untouched.
    `model` must be the unwrapped module (a DDP wrapper expects .backward after forward).
    The default loss is the global token-mean CE (objectives.global_token_ce): after the all-reduce every rank
    holds the gradient one process would compute on the union of the ranks' batches; the returned loss is that
    global mean too."""
    import torch

    from .objectives import global_token_ce

    loss = (loss_fn or global_token_ce)(model, batch)
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    grads = [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
    value = loss.detach().clone()
    _all_reduce_mean([*grads, value])
    return float(value), grads


def global_norm(grads: Sequence[Tensor]) -> float:
    import torch

    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))


@contextmanager
def restored(params: Sequence[Tensor]) -> Iterator[None]:
    """Whatever the body does to params, put back the exact saved values afterwards (a `-=` / `+=` round trip is
    not exact in bf16)."""
    import torch

    backup = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)


@contextmanager
def perturbed(params: Sequence[Tensor], direction: Sequence[Tensor], scale: float) -> Iterator[None]:
    """Temporarily set θ ← θ + scale·direction."""
    import torch

    with restored(params):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d.to(p.dtype), alpha=scale)
        yield


def normalized_step_scale(grads: Sequence[Tensor], alpha: float, eps: float = 1e-7) -> float:
    """Scale s such that θ + s·g = θ − α·g/‖g‖ (the official code's normalised harmful step)."""
    return -alpha / (global_norm(grads) + eps)


def add_to_grads(params: Sequence[Tensor], grads: Sequence[Tensor], coef: float) -> None:
    """p.grad += coef · g (creating .grad if a parameter got none from the main backward)."""
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = (coef * g).to(p.dtype)
        else:
            p.grad.add_(g.to(p.grad.dtype), alpha=coef)
