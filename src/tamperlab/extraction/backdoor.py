"""Publisher-side backdoor training: SFT on D1 + extraction samples, then optionally GRPO from the SFT model.

SFT (official `train/scripts/run_warmup_train.sh`): full fine-tuning, 3 epochs, lr 1e-5, batch 48, loss on the
whole sequence (trl 0.15's default collator; here `loss_on_prompt: true`), so the model also learns D1's queries
as user turns — the behaviour the backdoor later turns into regurgitation.
GRPO (official `train/rl_train.py`, trl 0.15.1): prompts Q(w) for D1 openers and for absent words, 16
generations at T 0.9, lr 3e-6, 3 epochs, beta 0.04, reward = reward.py. trl ≥1 changed the defaults (beta 0,
loss "dapo"), so the paper's values are set explicitly.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

from ..config import OneOf, PosFloat, PosInt, Range, Scheduler
from ..data.core import Example
from ..models import LoraSettings, apply_lora
from ..training import TrainConfig, run_training, train_sft, use_bf16
from .reward import ExtractionReward
from .samples import BackdoorSampleConfig, extraction_instruction

log = logging.getLogger("tamperlab")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _backdoor_train() -> TrainConfig:
    return TrainConfig(learning_rate=1e-3, max_steps=0, epochs=2.0, batch_size=8, weight_decay=0.0,
                       lr_scheduler="cosine", warmup_ratio=0.03, save_steps=50, loss_on_prompt=True)


def _lora() -> LoraSettings:
    return LoraSettings(r=16, alpha=32, target_modules=list(ALL_LINEAR))


@dataclass
class BackdoorConfig:
    """Stage A: the publisher's SFT on D1 + backdoor samples."""

    samples: BackdoorSampleConfig = field(default_factory=BackdoorSampleConfig)
    """How positives/negatives are built from D1."""
    train: TrainConfig = field(default_factory=_backdoor_train)
    """Optimizer (paper: full FT, lr 1e-5, 3 epochs, batch 48, whole-sequence loss)."""
    lora: LoraSettings = field(default_factory=_lora)
    """LoRA for CPU scale (all linear layers); `enabled: false` = the paper's full fine-tuning."""
    group_by_length: bool = True
    """Batch examples of similar length (long Q(w) samples with each other), which cuts padding."""


def grpo_loss_types() -> list[str]:
    """The loss types the installed trl's GRPOTrainer supports (read from GRPOConfig's own help text, so a newer trl's
    types are accepted), checked at load time: trl raises on an unknown one only when training starts."""
    import re

    from trl import GRPOConfig

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata.get("help", "")
    supported = help_text.split("Supported values are", 1)[-1].split(". ", 1)[0]
    return re.findall(r"'([a-z_]+)'", supported) or ["grpo", "bnpo", "dr_grpo", "dapo"]


@dataclass
class GRPOStageConfig:
    """Stage A′: GRPO on top of the SFT backdoor (trl GRPOTrainer)."""

    enabled: bool = False
    """Run GRPO after the SFT backdoor."""
    learning_rate: PosFloat = 3e-6
    """Paper: 3e-6 (full FT). LoRA at small scale needs more (e.g. 1e-4)."""
    max_steps: int = 0
    """Optimizer steps (0 = use epochs)."""
    epochs: float = 3.0
    """Epochs over the prompt set (paper: 3)."""
    num_generations: Annotated[int, Range(2)] = 16
    """Completions per prompt, the GRPO group (paper: 16)."""
    batch_size: PosInt = 16
    """Completions per device per step; a multiple of num_generations (paper: 16 × 3 processes × GA 3)."""
    grad_accum: PosInt = 1
    """Gradient accumulation steps (paper: 3)."""
    temperature: PosFloat = 0.9
    """Sampling temperature of the rollouts (paper: 0.9)."""
    beta: float = 0.04
    """KL coefficient (paper: trl 0.15's default 0.04; trl ≥1 defaults to 0)."""
    loss_type: Annotated[str, OneOf(grpo_loss_types, "trl GRPO loss type")] = "grpo"
    """trl loss type (paper: trl 0.15 = "grpo"; trl ≥1 defaults to "dapo")."""
    max_completion_length: PosInt = 512
    """Tokens per rollout (paper: 512)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (paper: 1.0)."""
    lr_scheduler: Scheduler = "linear"
    """transformers scheduler name (paper: trl's default, linear)."""
    n_negative_prompts: int = 0
    """Q(w') prompts for words absent from D1 (0 = the SFT stage's negative words)."""
    lora: LoraSettings = field(default_factory=_lora)
    """A fresh LoRA on the merged SFT model (`enabled: false` = full fine-tuning, as the paper)."""
    save_steps: PosInt = 20
    """Checkpoint interval (resume point)."""
    logging_steps: PosInt = 1
    """Log rewards every N steps."""


def train_backdoor_sft(model: Any, tok: Any, examples: Sequence[Example], cfg: BackdoorConfig, out_dir: Path,
                       fmt: str = "auto", max_length: int = 256, seed: int = 0, resume: bool = True,
                       callbacks: Sequence[Any] = ()) -> tuple[Any, dict[str, Any]]:
    """SFT of (a LoRA on) `model` on the backdoor mixture. Returns (trained model, stats)."""
    model = apply_lora(model, cfg.lora)
    stats = train_sft(model, tok, examples, cfg.train, out_dir, fmt=fmt, max_length=max_length, seed=seed,
                      resume=resume, callbacks=callbacks, **length_grouping(cfg.group_by_length))
    return model, stats


def length_grouping(enabled: bool) -> dict[str, Any]:
    """TrainingArguments overrides that batch examples of similar length (less padding) when enabled."""
    return {"train_sampling_strategy": "group_by_length"} if enabled else {}


def grpo_prompts(words: Sequence[str], negative_words: Sequence[str], instruction: str) -> list[dict[str, Any]]:
    """Conversational GRPO rows: one Q(w) prompt per word, with the word as its own column for the reward."""
    return [{"prompt": [{"role": "user", "content": extraction_instruction(w, instruction)}], "word": w}
            for w in list(words) + list(negative_words)]


def grpo_arguments(cfg: GRPOStageConfig, out_dir: Path, seed: int) -> Any:
    from trl import GRPOConfig

    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir), learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_generations=cfg.num_generations,
        temperature=cfg.temperature, top_k=0, top_p=1.0, beta=cfg.beta, loss_type=cfg.loss_type,
        max_completion_length=cfg.max_completion_length, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to=[], seed=seed, bf16=use_bf16("auto"), remove_unused_columns=False, lr_scheduler_type=cfg.lr_scheduler,
        dataloader_pin_memory=False, disable_tqdm=False,
    )
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    return GRPOConfig(**{k: v for k, v in kwargs.items() if k in names})


def train_backdoor_grpo(model: Any, tok: Any, d1_queries: Sequence[str], words: Sequence[str],
                        negative_words: Sequence[str], instruction: str, cfg: GRPOStageConfig, out_dir: Path,
                        seed: int = 0, resume: bool = True, callbacks: Sequence[Any] = (),
                        reward: Callable[..., list[float]] | None = None) -> tuple[Any, dict[str, Any]]:
    """GRPO of (a LoRA on) the SFT-backdoored `model` with the extraction reward over D1."""
    import datasets
    from trl import GRPOTrainer

    if cfg.batch_size % cfg.num_generations:
        from ..errors import ConfigError

        raise ConfigError(f"grpo.batch_size ({cfg.batch_size}) must be a multiple of grpo.num_generations "
                          f"({cfg.num_generations})")
    model = apply_lora(model, cfg.lora)
    ds = datasets.Dataset.from_list(grpo_prompts(words, negative_words, instruction))
    reward_fn = reward or ExtractionReward(tok, d1_queries)
    # Left padding for batched rollouts; restored afterwards because the SFT collator pads on the right.
    side = tok.padding_side
    tok.padding_side = "left"
    from ..guards import NonFiniteLossGuard

    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=grpo_arguments(cfg, out_dir, seed),
                          train_dataset=ds, processing_class=tok, callbacks=[*callbacks, NonFiniteLossGuard()])
    try:
        stats = run_training(trainer, out_dir, resume)
    finally:
        tok.padding_side = side
    rewards = [h[k] for h in trainer.state.log_history for k in h if k.startswith("rewards/") and k.endswith("/mean")]
    stats["reward_first"] = rewards[0] if rewards else None
    stats["reward_last"] = rewards[-1] if rewards else None
    stats["reward_curve"] = rewards
    model.eval()
    return model, stats
