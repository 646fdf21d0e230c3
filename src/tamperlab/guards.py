"""Training guards: stop a training stage with a clear error instead of letting it produce a meaningless result.

A diverged run (NaN/inf loss, e.g. from a learning rate far too high) otherwise goes on to "measure" a model whose
weights are NaN — its generations are empty, and the report shows HS 0 as if the defense worked.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from .errors import TamperlabError


class TrainingDiverged(TamperlabError):
    """The training loss (or gradient norm) became NaN or infinite."""


class NonFiniteLossGuard(TrainerCallback):
    """Raises TrainingDiverged at the first logged non-finite loss or gradient norm.

    transformers hides NaN/inf step losses by default (`logging_nan_inf_filter` replaces them with the running
    mean), so the guard turns that filter off when training begins: a diverged step then shows in the next log.
    """

    WATCHED = ("loss", "grad_norm")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        args.logging_nan_inf_filter = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        for key in self.WATCHED:
            v = (logs or {}).get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise TrainingDiverged(
                    f"training diverged: {key} is {v} at step {state.global_step} (output {args.output_dir}); "
                    f"lower the learning rate (now {args.learning_rate:g}) or max_grad_norm, or check the data")
