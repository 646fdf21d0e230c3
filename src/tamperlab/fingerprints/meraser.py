"""MEraser: Mismatched Eraser (Zhang et al., ACL 2025, arXiv 2506.12551), and its transferable mode.

Two LoRA phases on the stolen model, each merged into the weights afterwards (`merge.py`: merge_and_unload):

1. **Erase** (`cf.py`): fine-tune on 300 *mismatched* pairs — a question followed by the answer to another
   question of a different type — so the model's learned trigger→response associations are overwritten by
   catastrophic forgetting. LoRA r=8, α=16, q_proj/v_proj, dropout 0.05; 5 epochs, lr 5e-4 constant (warm-up
   0.1), clip 0.5, batch 1 per device on 8 GPUs (effective 8), fp16.
2. **Recover** (`recover.py`): fine-tune on 600 clean pairs to restore utility. LoRA r=16, α=32, q_proj/v_proj,
   dropout 0.05; 2 epochs, lr 5e-4 cosine, no warm-up, clip 1, batch 1 × accumulation 4 on 9 GPUs (effective 36).

Data format, as the official scripts build it: raw `question + answer` (recover: `question + "\\n" + answer`),
no chat template, no special tokens, each part truncated to 256 tokens. The scripts mask the question in
`labels`, but `DataCollatorForLanguageModeling(mlm=False)` then *overwrites* the labels with the input ids
(pads → −100), so the official runs train on question and answer tokens alike: `loss_on_prompt=True`
reproduces that. `data_format: chat` (our variant) renders the pairs with the model's chat template instead —
the format the fingerprints were planted in; see docs/results/fingerprints_demo.md for why that matters at 135M.

**Transfer** (`meraser_transfer`): the erase LoRA is trained once on the clean *base* model and plugged, unchanged,
into any fingerprinted model of the same base (optionally followed by the recover phase).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from .. import distributed
from ..config import PosInt, Seed
from ..data.core import Example
from ..models import LoraSettings, load_adapter, save_model
from ..registry import REMOVALS
from ..runs import atomic_write_json
from ..training import StepHook, TokenizedDataset, TrainConfig, steps_for, train_sft
from .cleandata import build_mismatched
from .removal import Removal, RemovalConfig, RemovalContext, RemovalStage

log = logging.getLogger("tamperlab")


@dataclass
class MEraserPhase:
    """One LoRA phase (erase or recover)."""

    n_examples: PosInt = 300
    """Training pairs (erase: 300 mismatched; recover: 600 clean)."""
    epochs: float = 5.0
    """Epochs over the pairs (used when train.max_steps is 0)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=8, alpha=16, dropout=0.05,
                                                                    target_modules=["q_proj", "v_proj"]))
    """Adapter settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer and schedule (epochs are taken from `epochs`)."""
    data_format: Literal["raw", "chat"] = "raw"
    """raw = question + separator + answer as plain text (official); chat = the model's chat template."""
    separator: str = ""
    """raw only: text between question and answer (erase: none; recover: a newline)."""
    loss_on_prompt: bool = True
    """Train on question tokens too — what the official collator effectively does (see module docstring)."""
    add_eos: bool = False
    """Append EOS to the answer (the official raw data has none; chat rows get the template's end token)."""
    part_max_tokens: PosInt = 256
    """Each of question and answer truncated to this many tokens (official: 256)."""


def _erase_phase() -> MEraserPhase:
    return MEraserPhase(
        n_examples=300, epochs=5.0,
        lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]),
        train=TrainConfig(learning_rate=5e-4, max_steps=0, batch_size=8, grad_accum=1, weight_decay=0.0,
                          lr_scheduler="constant", warmup_ratio=0.1, max_grad_norm=0.5,
                          save_steps=500, logging_steps=10),
        data_format="raw", separator="")


def _recover_phase() -> MEraserPhase:
    return MEraserPhase(
        n_examples=600, epochs=2.0,
        lora=LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"]),
        train=TrainConfig(learning_rate=5e-4, max_steps=0, batch_size=4, grad_accum=9, weight_decay=0.0,
                          lr_scheduler="cosine", warmup_ratio=0.0, max_grad_norm=1.0, save_steps=500,
                          logging_steps=10),
        data_format="raw", separator="\n")


@dataclass
class MEraserConfig(RemovalConfig):
    """MEraser erase + recover (defaults: the official scripts; effective batch sizes on one device)."""

    erase: MEraserPhase = field(default_factory=_erase_phase)
    """Erase phase on mismatched pairs."""
    recover: MEraserPhase = field(default_factory=_recover_phase)
    """Recover phase on clean pairs."""
    do_recover: bool = True
    """Run the recover phase after erasing."""
    mismatch_seed: Seed = 0
    """Seed of the question/answer re-pairing (offline and hub data)."""


def phase_rows(tok: Any, pairs: Sequence[Any], ph: MEraserPhase) -> TokenizedDataset:
    """A phase's training rows. raw: question + separator as plain text, EOS only with `add_eos` (the official
    data has none); chat: the question in the chat template, always with EOS. Question and answer are each cut
    to part_max_tokens; `loss_on_prompt` trains on the whole sequence."""
    chat = ph.data_format == "chat"
    examples = [Example(e.prompt if chat else e.prompt + ph.separator, e.response) for e in pairs]
    return TokenizedDataset(tok, examples, ph.data_format, 2 * ph.part_max_tokens, ph.loss_on_prompt,
                            add_eos=chat or ph.add_eos, part_max=ph.part_max_tokens)


def mismatched_pairs(ctx: RemovalContext, n: int, seed: int) -> list[Any]:
    if ctx.clean.mismatched is not None:  # the published file
        return ctx.clean.mismatched.examples[:n]
    return build_mismatched(ctx.clean.train.examples, n, seed)


def _train_cfg(ph: MEraserPhase) -> TrainConfig:
    return TrainConfig(**{**asdict(ph.train), "epochs": ph.epochs if ph.train.max_steps <= 0 else ph.train.epochs})


def train_phase(model: Any, tok: Any, pairs: Sequence[Any], ph: MEraserPhase, adapter_dir: Path,
                ctx: RemovalContext) -> tuple[Any, dict[str, Any]]:
    """Train (or reload) one LoRA phase, save the adapter as safetensors, and merge it into `model`."""
    from ..models import apply_lora

    done = adapter_dir / "adapter_config.json"
    stats_file = adapter_dir.parent / f"{adapter_dir.name}.stats.json"
    # Multi-process: the main process decides (each rank looking for itself could see a file another rank has just
    # written, and the ranks would part ways: one training with DDP, one reloading).
    if distributed.run_collectively(done.exists) and ctx.resume:
        log.info("MEraser: reusing adapter %s", adapter_dir)
        peft_model = load_adapter(model, adapter_dir, trainable=False)
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {"reused": True}
    else:
        peft_model = apply_lora(model, LoraSettings(**{**asdict(ph.lora), "enabled": True}))
        rows = phase_rows(tok, pairs, ph)
        cfg = _train_cfg(ph)
        trajectory: list[dict[str, Any]] = []
        hooks = []
        if ctx.monitor is not None and ctx.monitor_every > 0:
            total = steps_for(len(rows), cfg)
            marks = sorted(set(range(0, total + 1, ctx.monitor_every)) | {total})
            hooks.append(StepHook(marks, fn=lambda step, m: trajectory.append({"step": step, **ctx.monitor(m)})))
        stats = train_sft(peft_model, tok, rows, cfg, adapter_dir.parent / f"{adapter_dir.name}.train",
                          seed=ctx.seed, resume=ctx.resume, callbacks=hooks, log_fn=ctx.log_fn, loss_history=True,
                          keep_checkpoints=False)
        if trajectory:
            stats["trajectory"] = trajectory
        stats["rows"] = len(rows)
        stats["tokens"] = sum(len(r["input_ids"]) for r in rows)
        save_model(peft_model, None, adapter_dir)
        # only the main process writes, and no rank goes on (to read the adapter) before it has
        distributed.run_collectively(lambda: atomic_write_json(stats_file, stats))
    return peft_model.merge_and_unload(), stats


@REMOVALS.register("meraser", config=MEraserConfig)
class MEraser(Removal):
    """MEraser: erase with a LoRA on mismatched pairs, then recover with a LoRA on clean pairs (ACL 2025)."""

    config_cls = MEraserConfig
    paper = "Zhang et al., MEraser: An Effective Fingerprint Erasure Approach for LLMs, ACL 2025 (arXiv 2506.12551)"
    reference = {"llama2_7b": {"instructional": {"fingerprinted": [1.0, 4.80], "erased": [0.0, 17.33],
                                                 "recovered": [0.0, 7.31]},
                               "utf": {"fingerprinted": [1.0, 9.31], "erased": [0.0, 5.35], "recovered": [0.0, 4.48]},
                               "hashchain": {"fingerprinted": [1.0, 6.71], "erased": [0.0, 5.53],
                                             "recovered": [0.0, 4.65]},
                               "format": "[FSR, PPL]; third-party note on the paper, unverified"}}
    cfg: MEraserConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        c = self.cfg
        mis = mismatched_pairs(ctx, c.erase.n_examples, c.mismatch_seed)
        model, st = train_phase(model, ctx.tok, mis, c.erase, ctx.work_dir / "erase_adapter", ctx)
        yield RemovalStage("erase", model, {"train": st, "n_mismatched": len(mis), "format": c.erase.data_format})
        if c.do_recover:
            clean = ctx.clean.train.examples[: c.recover.n_examples]
            model, st = train_phase(model, ctx.tok, clean, c.recover, ctx.work_dir / "recover_adapter", ctx)
            yield RemovalStage("recover", model, {"train": st, "n_clean": len(clean),
                                                  "format": c.recover.data_format})


@dataclass
class MEraserTransferConfig(MEraserConfig):
    """Transferable MEraser: the erase LoRA comes from the clean base model (trained once per run)."""

    do_recover: bool = False
    """Also run the recover phase on each target model (the paper's transfer results use the erase LoRA alone)."""


def transfer_adapter(ctx: RemovalContext, c: MEraserConfig) -> tuple[Path, dict[str, Any]]:
    """Train the erase LoRA on the clean base once per (config) and return its folder."""
    key = hashlib.sha256(json.dumps({"erase": asdict(c.erase), "seed": c.mismatch_seed}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:10]
    adapter_dir = ctx.shared_dir / f"meraser-transfer-{key}" / "erase_adapter"
    stats_file = adapter_dir.parent / "erase_adapter.stats.json"
    if distributed.run_collectively((adapter_dir / "adapter_config.json").exists):
        return adapter_dir, json.loads(stats_file.read_text()) if stats_file.exists() else {}
    base = ctx.load_base()
    mis = mismatched_pairs(ctx, c.erase.n_examples, c.mismatch_seed)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    _, st = train_phase(base, ctx.tok, mis, c.erase, adapter_dir, ctx)
    return adapter_dir, st


@REMOVALS.register("meraser_transfer", config=MEraserTransferConfig)
class MEraserTransfer(Removal):
    """Transferable MEraser: an erase LoRA trained once on the clean base, plugged into fingerprinted models."""

    config_cls = MEraserTransferConfig
    paper = MEraser.paper
    reference = {"fsr": "0% in most cases, 37.5% residue on UTF (third-party note, unverified)"}
    cfg: MEraserTransferConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        c = self.cfg
        adapter_dir, st = transfer_adapter(ctx, c)
        # Same architecture → the base-trained LoRA's A/B matrices load onto the stolen model's q/v projections.
        model = load_adapter(model, adapter_dir, trainable=False).merge_and_unload()
        yield RemovalStage("transfer", model, {"adapter": str(adapter_dir), "trained_on": "clean base model",
                                               "train": st})
        if c.do_recover:
            clean = ctx.clean.train.examples[: c.recover.n_examples]
            model, st2 = train_phase(model, ctx.tok, clean, c.recover, ctx.work_dir / "recover_adapter", ctx)
            yield RemovalStage("transfer_recover", model, {"train": st2, "n_clean": len(clean)})
