"""Stage B: the victim fine-tunes the released model M1 on its private data D2 (→ M2).

Official: the same script as clean post-training (5 epochs, lr 1e-5, full fine-tuning) with trl 0.15's default
collator, i.e. the loss covers the query tokens too — the paper's main enabler. `loss: response_only` is the
ablation the paper leaves open (labels only on the response, as most chat fine-tuning recipes do now).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ..data.core import Example
from ..models import LoraSettings, apply_lora
from ..training import TrainConfig, train_sft
from .backdoor import ALL_LINEAR, length_grouping

log = logging.getLogger("tamperlab")


def _victim_train() -> TrainConfig:
    return TrainConfig(learning_rate=1e-3, max_steps=0, epochs=3.0, batch_size=8, weight_decay=0.0,
                       lr_scheduler="cosine", warmup_ratio=0.03, save_steps=50)


def _victim_lora() -> LoraSettings:
    return LoraSettings(r=16, alpha=32, target_modules=list(ALL_LINEAR))


@dataclass
class VictimConfig:
    """The victim's fine-tuning of the released model on D2."""

    loss: Literal["full", "response_only"] = "full"
    """full = loss on query and response tokens (the paper's victim, trl's default then); response_only =
    labels on the response only (ablation)."""
    train: TrainConfig = field(default_factory=_victim_train)
    """Optimizer (paper: full FT, lr 1e-5, 5 epochs). `train.loss_on_prompt` is set from `loss`."""
    lora: LoraSettings = field(default_factory=_victim_lora)
    """The victim's LoRA (`enabled: false` = full fine-tuning, as the paper)."""
    group_by_length: bool = True
    """Batch examples of similar length (less padding)."""


def victim_finetune(model: Any, tok: Any, d2: Sequence[Example], cfg: VictimConfig, out_dir: Path,
                    fmt: str = "auto", max_length: int = 256, seed: int = 0, resume: bool = True,
                    callbacks: Sequence[Any] = ()) -> tuple[Any, dict[str, Any]]:
    """Fine-tune (a LoRA on) the released model on D2. Returns (M2, stats)."""
    train = dataclasses.replace(cfg.train, loss_on_prompt=cfg.loss == "full")
    model = apply_lora(model, cfg.lora)
    stats = train_sft(model, tok, d2, train, out_dir, fmt=fmt, max_length=max_length, seed=seed, resume=resume,
                      callbacks=callbacks, **length_grouping(cfg.group_by_length))
    return model, {**stats, "loss": cfg.loss}
