"""Defense contract and the alignment trainer every defense builds on.

An alignment step sees three batch streams, as in the official CTRAP/Booster code:
  * alignment batch (refusals to harmful prompts) — the Trainer's own dataset;
  * helpful batch (UltraChat / offline helpful pairs), concatenated to it → the *retain* batch;
  * harmful batch (harmful prompt → harmful answer), for defenses that simulate the attacker.
`AlignmentTrainer.training_step` draws the auxiliary batches deterministically per micro-step (resumable) and
delegates to `Defense.step`, which must put the update direction into `.grad` and return the loss to log.
The default step is SFT on the retain batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..data.core import Example
from ..config import PosInt
from ..errors import ConfigError
from .objectives import global_token_ce
from ..training import (CycledLoader, PadCollator, TokenizedDataset, TrainConfig, build_trainer, concat_batches,
                        run_training)

log = logging.getLogger("tamperlab")


@dataclass
class DefenseConfig:
    """Fields shared by all defenses."""

    helpful_batch_size: int = 4
    """Helpful rows appended to each alignment batch (official: 5); 0 disables the helpful/retain data."""
    harmful_batch_size: PosInt = 8
    """Harmful rows per step for defenses that use harmful data (official: 10)."""


@dataclass
class AlignmentData:
    refusal: Sequence[Example]
    harmful: Sequence[Example]
    helpful: Sequence[Example]


def _trainer_base() -> type:
    from transformers import Trainer

    return Trainer


class AlignmentTrainer(_trainer_base()):  # type: ignore[misc]
    """transformers.Trainer whose `training_step` is the defense's step (resume/DDP/mixed precision inherited)."""

    def __init__(self, *args: Any, defense: "Defense", aux: dict[str, CycledLoader], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.defense = defense
        self.aux = aux
        self._micro: int | None = None

    def aux_batch(self, name: str, device: Any) -> dict[str, Any]:
        return self.aux[name].batch(self._micro or 0, device)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if self._micro is None:  # fresh start or resume: continue the auxiliary streams where step k left them
            self._micro = self.state.global_step * self.args.gradient_accumulation_steps
        model.train()
        inputs = self._prepare_inputs(inputs)
        raw = self.accelerator.unwrap_model(model)
        loss = self.defense.step(self, model, raw, inputs)
        self._micro += 1
        return loss.detach() / self.args.gradient_accumulation_steps

    # -- helpers for defense steps ---------------------------------------------------------------------------
    def retain_batch(self, inputs: dict[str, Any], device: Any) -> dict[str, Any]:
        if "helpful" not in self.aux:
            return inputs
        return concat_batches(inputs, self.aux_batch("helpful", device), self.processing_class.pad_token_id)

    def backward(self, loss: Any) -> None:
        """Main backward through the (possibly DDP-wrapped) model, scaled for gradient accumulation."""
        self.accelerator.backward(loss / self.args.gradient_accumulation_steps)


class Defense:
    """A registered alignment-stage defense. Subclasses set `config_cls`, `uses_harmful`, and override `step`."""

    config_cls: ClassVar[type[DefenseConfig]] = DefenseConfig
    uses_harmful: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    """Citation shown in reports."""
    passes_per_step: ClassVar[int] = 1
    """Forward+backward passes per optimizer step (cost relative to SFT, documented in docs/methods)."""
    lookahead: ClassVar[bool] = False
    """Adds gradients taken on the full parameters to `.grad` after the main backward (CTRAP, Booster): needs
    DDP or one process — FSDP shards the parameters and DeepSpeed keeps gradients in its own buffers."""

    per_rank_terms: ClassVar[str] = ""
    """Non-empty for a defense whose objective has terms computed over each rank's shard (not decomposable into a
    global mean): it says which, and a multi-process run logs it, since N processes then differ from one."""

    def __init__(self, cfg: DefenseConfig | None = None, tokenizer: Any = None):
        self.cfg = cfg or self.config_cls()
        self.tokenizer = tokenizer

    def step(self, trainer: AlignmentTrainer, model: Any, raw: Any, inputs: dict[str, Any]) -> Any:
        """Default: SFT on the retain (alignment ∪ helpful) batch."""
        device = inputs["input_ids"].device
        retain = trainer.retain_batch(inputs, device)
        loss = global_token_ce(model, retain)
        trainer.backward(loss)
        return loss

    def make_trainer(self, model: Any, tok: Any, data: AlignmentData, train: TrainConfig, out_dir: str | Path,
                     fmt: str = "auto", max_length: int = 256, seed: int = 0, callbacks: Sequence[Any] = ()) -> Any:
        self.tokenizer = tok
        collator = PadCollator(tok.pad_token_id)
        aux: dict[str, CycledLoader] = {}
        if self.cfg.helpful_batch_size > 0:
            if not data.helpful:
                raise ConfigError("defense needs helpful data (set helpful_batch_size: 0 to disable)")
            aux["helpful"] = CycledLoader(TokenizedDataset(tok, data.helpful, fmt, max_length),
                                          self.cfg.helpful_batch_size, collator, seed + 1)
        if self.uses_harmful:
            if not data.harmful:
                raise ConfigError(f"{type(self).__name__} needs harmful alignment data")
            aux["harmful"] = CycledLoader(TokenizedDataset(tok, data.harmful, fmt, max_length),
                                          self.cfg.harmful_batch_size, collator, seed + 2)
        trainer = build_trainer(model, tok, data.refusal, train, out_dir, fmt, max_length, seed,
                                trainer_cls=AlignmentTrainer, callbacks=callbacks,
                                trainer_kwargs={"defense": self, "aux": aux})
        kind = str(getattr(trainer.accelerator.distributed_type, "value", trainer.accelerator.distributed_type))
        if self.lookahead and kind in ("FSDP", "DEEPSPEED"):
            raise ConfigError(f"{type(self).__name__} composes look-ahead gradients on full parameters and "
                              f"cannot run under {kind}: launch it with DDP (accelerate_configs/multi_gpu.yaml) "
                              "or one process")
        if self.per_rank_terms and trainer.args.world_size > 1:
            log.warning("%s on %d processes: %s — the run is not equal to a 1-process run at the same global batch",
                        type(self).__name__, trainer.args.world_size, self.per_rank_terms)
        return trainer

    def align(self, model: Any, tok: Any, data: AlignmentData, train: TrainConfig, out_dir: str | Path,
              fmt: str = "auto", max_length: int = 256, seed: int = 0, resume: bool = True,
              callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        trainer = self.make_trainer(model, tok, data, train, out_dir, fmt, max_length, seed, callbacks)
        stats = run_training(trainer, out_dir, resume)
        model.eval()
        return stats


def relabel_all(batch: dict[str, Any], token_id: int) -> dict[str, Any]:
    """Every supervised label → token_id (prompt positions stay -100): the collapse targets of Eq. (1)."""
    import torch

    labels = batch["labels"]
    return {**batch, "labels": torch.where(labels != -100, torch.full_like(labels, token_id), labels)}


TRAP_TEXT = "an error"
"""Default collapse-trap text: the trap token e is its last token (the word-initial " error"). A defense that plants
a trap has a `trap_text` config field (CTRAPConfig); the harmful-fine-tuning evaluation measures collapse to that
defense's trap (experiments/ctrap.py), so the text is set in one place."""


def trap_token_id(tokenizer: Any, trap_text: str = TRAP_TEXT) -> int:
    """The collapse token e: the last piece of tokenizer(trap_text), i.e. the word-initial " error"."""
    ids = tokenizer(trap_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"trap_text {trap_text!r} tokenizes to nothing")
    return ids[-1]
