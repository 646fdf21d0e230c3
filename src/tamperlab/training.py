"""Shared training plumbing: tokenized datasets, padding collator, TrainingArguments, cycled auxiliary loaders,
checkpoint resume, and per-step logging/evaluation callbacks.

Every training stage in tamperlab (alignment defenses, fine-tuning attacks, backdoor/victim fine-tuning,
fingerprint embedding, MEraser) is a transformers `Trainer` (or subclass) built from these pieces, so resume,
mixed precision and `accelerate launch` (DDP/FSDP/DeepSpeed) come from transformers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

from .config import Fraction, OneOf, Optimizer, PosFloat, PosInt, Scheduler
from .data.core import Example, tokenize_example
from .errors import ConfigError

log = logging.getLogger("tamperlab")


@dataclass
class TrainConfig:
    """Optimizer and schedule of one training stage."""

    learning_rate: PosFloat = 5e-4
    """AdamW learning rate."""
    max_steps: int = 60
    """Optimizer steps (takes precedence over epochs when > 0); 0 = train for `epochs` instead (negative values
    are errors, not transformers' -1)."""
    epochs: float = 1.0
    """Epochs over the training data, used when max_steps is 0."""
    batch_size: PosInt = 8
    """Per-device batch size of the main dataset."""
    grad_accum: PosInt = 1
    """Gradient accumulation steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (official code: 0.1)."""
    lr_scheduler: Scheduler = "constant"
    """transformers scheduler name (official code: constant)."""
    warmup_ratio: Fraction = 0.0
    """Warm-up fraction (ignored by `constant`)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (HF default)."""
    logging_steps: PosInt = 5
    """Log the loss every N steps."""
    save_steps: PosInt = 20
    """Checkpoint every N steps (resume point for killed runs)."""
    bf16: Annotated[str, OneOf(("auto", "true", "false"), "bf16 setting", case_insensitive=True)] = "auto"
    """auto = bf16 mixed precision on a CUDA GPU that supports it; "true"/"false" to force."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on large models."""
    loss_on_prompt: bool = False
    """Also train on prompt tokens (the extraction paper's victim setting); default response-only."""
    optim: Optimizer = "adamw_torch"
    """transformers optimizer name (adamw_torch, sgd, adafactor, ...)."""

    def __post_init__(self) -> None:
        self.epochs = float(self.epochs)  # `epochs: 20` and `20.0` are one recipe (resume compares them)
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("max_steps is 0 and epochs is 0: nothing to train (set one of them > 0)")


class TokenizedDataset:
    """A torch-style dataset of tokenized (prompt, response) examples (data.core.tokenize_example: format,
    labels, EOS and truncation options are documented there)."""

    def __init__(self, tokenizer: Any, examples: Sequence[Example], fmt: str = "auto", max_length: int = 256,
                 loss_on_prompt: bool = False, add_eos: bool = True, part_max: int | None = None):
        if not examples:
            raise ValueError("empty training set")
        self.items = [tokenize_example(tokenizer, ex, fmt, max_length, loss_on_prompt, add_eos, part_max)
                      for ex in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


class PadCollator:
    """Right-pads input_ids (pad id), labels (-100) and attention_mask (0) to the longest row."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def concat_batches(a: dict[str, Any], b: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """Row-concatenate two padded batches, right-padding the shorter one (CTRAP's retain = align ∪ helpful)."""
    import torch

    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    fills = {"input_ids": pad_token_id, "labels": -100, "attention_mask": 0}
    out = {}
    for k, fill in fills.items():
        parts = []
        for x in (a[k], b[k]):
            if x.shape[1] < width:
                pad = torch.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype, device=x.device)
                x = torch.cat([x, pad], dim=1)
            parts.append(x)
        out[k] = torch.cat(parts, dim=0)
    return out


class CycledLoader:
    """Endless stream of shuffled mini-batches of an auxiliary dataset (harmful / helpful batches drawn next to
    the main batch, as the official trainers do with try/next/except StopIteration).

    Sharded like the Trainer's own data: global batch k is a slice of one seeded permutation, `batch_size` rows
    per rank times the world size, and rank r takes the r-th block — so 2 processes × batch b draw exactly the rows
    1 process × batch 2b draws. Batch k is a pure function of (seed, world size, rank, k): a killed run resumed
    from a checkpoint draws exactly the batches the uninterrupted run would have drawn. The rank is read at the
    first batch, when the Trainer has created the process group (at construction it may not exist yet)."""

    def __init__(self, dataset: TokenizedDataset, batch_size: int, collator: PadCollator, seed: int = 0):
        self.dataset, self.collator, self.seed = dataset, collator, seed
        self.requested = batch_size
        self._shard: tuple[int, int] | None = None
        self._perm_epoch, self._perm = -1, None

    def _layout(self) -> tuple[int, int, int]:
        """(rank, world size, rows per rank), fixed at the first batch."""
        from . import distributed

        if self._shard is None:
            self._shard = (distributed.rank(), distributed.world_size())
        rank, world = self._shard
        return rank, world, max(1, min(self.requested, len(self.dataset) // world))

    @property
    def batch_size(self) -> int:
        return self._layout()[2]

    def batch(self, k: int, device: Any = None) -> dict[str, Any]:
        import torch

        rank, world, b = self._layout()
        per_epoch = max(1, len(self.dataset) // (b * world))
        epoch, j = divmod(k, per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.dataset), generator=g).tolist(), epoch
        start = (j * world + rank) * b
        idx = self._perm[start:start + b]
        out = self.collator([self.dataset[i] for i in idx])
        if device is not None:
            out = {k2: v.to(device) for k2, v in out.items()}
        return out


def use_bf16(flag: str) -> bool:
    import torch

    if flag == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return flag.lower() in ("true", "1", "yes")


def training_arguments(cfg: TrainConfig, out_dir: str | Path, seed: int = 0, **overrides: Any) -> Any:
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir), learning_rate=cfg.learning_rate, max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        bf16=use_bf16(cfg.bf16), gradient_checkpointing=cfg.gradient_checkpointing, report_to=[], seed=seed,
        data_seed=seed, remove_unused_columns=False, optim=cfg.optim, disable_tqdm=False,
        dataloader_num_workers=0, logging_first_step=True, dataloader_pin_memory=_cuda(),
        # Without a GPU, use_cpu makes a torchrun/accelerate launch on CPU a real gloo DDP job.
        use_cpu=not _cuda(),
    )
    # transformers ≥5 folds warmup_ratio into warmup_steps (a float < 1 is a ratio); older versions have both.
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "activation_checkpointing" in fields:  # transformers >= 5.x name; the old one warns (FutureWarning)
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    if "warmup_ratio" in fields:
        kwargs["warmup_ratio"] = cfg.warmup_ratio
    elif cfg.warmup_ratio > 0:
        kwargs["warmup_steps"] = cfg.warmup_ratio
    kwargs.update(overrides)
    return TrainingArguments(**{k: v for k, v in kwargs.items() if k in fields})


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def checkpoint_complete(ckpt: str | Path) -> bool:
    """A Trainer checkpoint is complete when its trainer_state.json — written last, after weights, optimizer,
    scheduler and RNG states — parses. A process killed while saving leaves a folder without it (or with a cut
    one)."""
    import json

    try:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_checkpoint(out_dir: str | Path) -> str | None:
    """The newest *complete* checkpoint in out_dir. Incomplete ones (a kill during a save) are deleted by the main
    process, so the Trainer's checkpoint rotation never counts them.

    Multi-process: the main process decides and every rank takes its answer. Each rank looking for itself could
    disagree (the folder made by one rank a moment before another looks) and desynchronise the collectives."""
    from . import distributed

    return distributed.run_collectively(lambda: _newest_complete_checkpoint(Path(out_dir)))


def _newest_complete_checkpoint(p: Path) -> str | None:
    import re
    import shutil

    if not p.is_dir():
        return None
    ckpts = sorted((c for c in p.glob("checkpoint-*") if c.is_dir() and re.fullmatch(r"checkpoint-\d+", c.name)),
                   key=lambda c: int(c.name.split("-")[1]), reverse=True)
    found = None
    for c in ckpts:
        if found is None and checkpoint_complete(c):
            found = str(c)
        elif found is None:
            log.warning("skipping incomplete checkpoint %s (killed while saving?)", c)
            shutil.rmtree(c, ignore_errors=True)
    return found


class LogAtSaves(_trainer_callback_base()):  # type: ignore[misc]
    """Log the running loss at every checkpoint and at the last step, so that the Trainer's log history (saved in
    each checkpoint's trainer_state.json and restored on resume) covers every step: `train_loss` can then be
    computed over the whole training, across any number of resumes."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True


def loss_over_history(log_history: Sequence[dict[str, Any]], global_step: int) -> float | None:
    """Step-weighted mean of the logged training losses (each log's `loss` is the mean since the previous log);
    None when the logs do not cover steps 1..global_step."""
    total, last = 0.0, 0
    for rec in log_history:
        if "loss" in rec and "step" in rec and rec["step"] > last:
            total += float(rec["loss"]) * (rec["step"] - last)
            last = rec["step"]
    if global_step <= 0 or last != global_step:
        return None
    return total / global_step


def run_training(trainer: Any, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """trainer.train(), resuming from the newest complete checkpoint in out_dir when there is one.

    `train_loss` is the mean loss over all steps of the stage, including those done before a resume (the
    Trainer's own `training_loss` covers only the steps of the last session)."""
    ckpt = last_checkpoint(out_dir) if resume else None
    if ckpt:
        log.info("resuming training from %s", ckpt)
    if not any(isinstance(cb, LogAtSaves) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(LogAtSaves())
    result = trainer.train(resume_from_checkpoint=ckpt)
    loss = loss_over_history(trainer.state.log_history, int(result.global_step))
    return {"train_loss": float(result.training_loss if loss is None else loss), "steps": int(result.global_step),
            "resumed_from": ckpt}


class StepHook(_trainer_callback_base()):  # type: ignore[misc]
    """Calls fn(step, model) at the listed global steps (and step 0 before training), e.g. to measure
    collapse/HS over attack steps, and forwards Trainer logs to a RunDir's log.jsonl."""

    def __init__(self, steps: Sequence[int], fn: Callable[[int, Any], None] | None = None,
                 log_fn: Callable[[dict[str, Any]], None] | None = None):
        self.steps = set(steps)
        self.fn = fn
        self.log_fn = log_fn

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if self.fn and 0 in self.steps and state.global_step == 0:
            self.fn(0, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if self.fn and state.global_step in self.steps:
            self.fn(state.global_step, model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if self.log_fn and logs:
            self.log_fn({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})


def build_trainer(model: Any, tokenizer: Any, examples: "Sequence[Example] | TokenizedDataset", cfg: TrainConfig,
                  out_dir: str | Path,
                  fmt: str = "auto", max_length: int = 256, seed: int = 0, trainer_cls: Any = None,
                  callbacks: Sequence[Any] = (), trainer_kwargs: dict[str, Any] | None = None,
                  add_eos: bool = True, part_max: int | None = None, **arg_overrides: Any) -> Any:
    """A (subclass of) transformers.Trainer on tokenized examples: response-only labels unless
    `cfg.loss_on_prompt` (whole sequence); `fmt`, `add_eos` and `part_max` as in data.core.tokenize_example.
    `examples` may also be a TokenizedDataset built by the caller (then it is used as it is). Every trainer gets
    the NaN guard and a progress bar labelled with `out_dir`'s name."""
    from transformers import Trainer

    ds = examples if isinstance(examples, TokenizedDataset) else TokenizedDataset(
        tokenizer, examples, fmt, max_length, cfg.loss_on_prompt, add_eos, part_max)
    args = training_arguments(cfg, out_dir, seed=seed, **arg_overrides)
    cls = trainer_cls or Trainer
    model.train()
    from .guards import NonFiniteLossGuard

    trainer = cls(model=model, args=args, train_dataset=ds, data_collator=PadCollator(tokenizer.pad_token_id),
                  processing_class=tokenizer, callbacks=[*callbacks, NonFiniteLossGuard()], **(trainer_kwargs or {}))
    label_progress(trainer, Path(out_dir).name)
    return trainer


def label_progress(trainer: Any, label: str) -> None:
    """Replace the Trainer's anonymous progress bar by one labelled with the stage (its checkpoint folder name,
    e.g. `align-sft`, `attack-ctrap-harmful-n100`), so a log of several trainings says which bar is which."""
    from transformers.trainer_callback import ProgressCallback

    class LabelledProgress(ProgressCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(label)

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LabelledProgress())


def train_sft(model: Any, tokenizer: Any, examples: "Sequence[Example] | TokenizedDataset", cfg: TrainConfig,
              out_dir: str | Path,
              fmt: str = "auto", max_length: int = 256, seed: int = 0, resume: bool = True,
              callbacks: Sequence[Any] = (), *, add_eos: bool = True, part_max: int | None = None,
              log_fn: Callable[[dict[str, Any]], None] | None = None, loss_history: bool = False,
              keep_checkpoints: bool = True, **arg_overrides: Any) -> dict[str, Any]:
    """Supervised fine-tuning of `model` (all its trainable parameters: wrap it with LoRA first for an adapter),
    cross-entropy on response tokens (whole sequence with `cfg.loss_on_prompt`). Returns training stats.

    Resumes from the newest complete checkpoint in out_dir. `log_fn` receives every Trainer log record;
    `loss_history` adds the logged losses to the stats; `keep_checkpoints=False` deletes the Trainer checkpoints
    afterwards (for callers that save what they need themselves). `arg_overrides` go to TrainingArguments (e.g.
    train_sampling_strategy="group_by_length")."""
    callbacks = ([StepHook([], log_fn=log_fn)] if log_fn else []) + list(callbacks)
    trainer = build_trainer(model, tokenizer, examples, cfg, out_dir, fmt, max_length, seed, callbacks=callbacks,
                            add_eos=add_eos, part_max=part_max, **arg_overrides)
    stats = run_training(trainer, out_dir, resume)
    if loss_history:
        stats["loss_history"] = [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]
    model.eval()
    if not keep_checkpoints:
        import shutil

        for ck in Path(out_dir).glob("checkpoint-*"):
            shutil.rmtree(ck, ignore_errors=True)
    return stats


def steps_for(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum) * cfg.epochs))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
