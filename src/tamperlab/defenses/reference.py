"""A frozen reference model that costs one copy of the *trainable* parameters, not of the whole model.

Preference-style objectives (NPO; DPO-like terms) compare the model being trained with its own initial state.
The official NPO trainer keeps `copy.deepcopy(model)`, which doubles memory for a 7B model; here the reference
is the same module with its trainable tensors temporarily set back to their values at `snapshot()` (LoRA
matrices for a LoRA alignment), evaluated in eval mode without gradients, then restored bit-exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .lookahead import restored, trainable

Tensor = Any


@contextmanager
def assigned(params: Sequence[Tensor], values: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily overwrite params with values; restore the saved originals exactly afterwards."""
    import torch

    with restored(params):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        yield


class FrozenReference:
    """The model as it was when `snapshot` was called, evaluated on demand.

    Must be called before the policy's forward pass of the same step: swapping tensors in place after a forward
    would invalidate the activations autograd saved for backward."""

    def __init__(self) -> None:
        self.values: list[Tensor] | None = None

    def snapshot(self, model: Any) -> None:
        self.values = [p.detach().clone() for p in trainable(model)]

    @contextmanager
    def active(self, model: Any) -> Iterator[Any]:
        """Inside the block `model` computes as the reference (eval mode, no grad)."""
        import torch

        if self.values is None:
            raise RuntimeError("FrozenReference.snapshot(model) was never called")
        params = trainable(model)
        if len(params) != len(self.values):
            raise RuntimeError("FrozenReference: the set of trainable parameters changed since the snapshot")
        was_training = model.training
        model.eval()
        try:
            with assigned(params, self.values), torch.no_grad():
                yield model
        finally:
            model.train(was_training)
