"""Fine-tuning attacks: the attacker keeps training the released model on a dataset of n samples of which a
fraction p is harmful.

* `harmful`: p = 1 (paper: n ∈ {100..500});
* `mixed`:   harmful ratio p ∈ (0, 1) mixed into a benign task (paper: p ∈ 5–25%, n = 1000);
* `benign`:  p = 0, a benign task (paper: SST2, AG News, GSM8K, n = 1000).
Harmful samples come from the attack pool (disjoint from alignment data and from evaluation prompts).

What is trained (attacks/weights.py): the released alignment LoRA itself ("single_lora", as in the CTRAP code;
default), every weight (`full_finetune: true`), or a fresh LoRA of the attacker's rank on chosen modules
(`lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}`) on top of the merged released model.
"""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ..config import Fraction, PosInt, Registered
from ..data.core import DataSplit, Example
from ..errors import ConfigError
from ..registry import ATTACKS, TASKS
from ..training import TrainConfig
from .base import TrainingAttack, UtilityTask
from .weights import AttackerWeights, attacker_model


def _attack_train() -> TrainConfig:
    # The attacker of the paper (CTRAP/Booster scripts): AdamW lr 1e-5, 20 epochs, batch 10, wd 0.1, constant
    # schedule (their warmup_ratio 0.1 is ignored by `constant`). A 135M model with a few dozen CPU steps needs
    # a larger step to move at all: demo recipes set e.g. lr 1e-4 and max_steps explicitly.
    return TrainConfig(learning_rate=1e-5, max_steps=0, epochs=20, batch_size=10, weight_decay=0.1,
                       lr_scheduler="constant", save_steps=200)


@dataclass
class AttackConfig(AttackerWeights):
    """One fine-tuning attack (`name: finetune`, the default attack of a recipe's `attacks` entry)."""

    kind: Literal["harmful", "mixed", "benign"] = "harmful"
    """harmful (p=1), mixed (0<p<1 with a task), benign (p=0, a task)."""
    n: PosInt = 100
    """Fine-tuning samples."""
    harmful_ratio: Fraction = 0.1
    """p for `mixed` (ignored otherwise)."""
    task: Annotated[str, Registered("tasks")] = "sst2"
    """Benign task for mixed / benign (sst2, agnews, gsm8k)."""
    task_source: Literal["offline", "hub"] = "offline"
    """offline = generated task data with exact labels; hub = the real dataset."""
    n_task_eval: PosInt = 100
    """Task eval examples for fine-tune accuracy (paper: up to 1000)."""
    task_max_new_tokens: PosInt = 24
    """Decoding budget for task answers (paper: 200)."""
    train: TrainConfig = field(default_factory=_attack_train)
    """Attacker's optimizer settings (default: the paper's)."""
    measure_fa: bool = False
    """Also measure fine-tune accuracy on `task` after a harmful attack (p = 1): a utility check on the attacked
    model, used by attacker sweeps to tell attacks that keep the model useful from ones that wreck it."""

    @property
    def p(self) -> float:
        return {"harmful": 1.0, "benign": 0.0}.get(self.kind, self.harmful_ratio)

    def default_label(self) -> str:
        if self.kind == "harmful":
            label = f"harmful-n{self.n}"
        elif self.kind == "benign":
            label = f"benign-{self.task}"
        else:
            label = f"mixed-p{int(round(self.p * 100))}-{self.task}"
        # Only the attacker's own LoRA is named (`harmful-n100-lora-r8`): labels of existing runs (released LoRA,
        # full_finetune) stay as they were, so their cached stages are found again on --resume.
        lora = self.attacker_lora
        return label + (f"-lora-r{lora.r}" if lora is not None and not self.full_finetune else "")

    @property
    def uses_task(self) -> bool:
        return self.p < 1.0

    def describe(self) -> dict[str, Any]:
        return {"label": self.key, "kind": self.kind, "n": self.n, "p": self.p,
                "task": self.task if self.uses_task else None, "weights": self.weights_label}


@ATTACKS.register("finetune", config=AttackConfig)
class FineTuneAttack(TrainingAttack):
    """Harmful / mixed / benign fine-tuning of the protected model."""

    config_cls = AttackConfig
    cfg: AttackConfig

    def __init__(self, cfg: AttackConfig):
        super().__init__(cfg)
        if (cfg.uses_task or cfg.measure_fa) and cfg.task not in TASKS:
            TASKS.get(cfg.task)  # raises with suggestions

    def dataset(self, harmful_pool: DataSplit, seed: int = 0) -> DataSplit:
        n_harm = int(self.cfg.p * self.cfg.n)
        n_task = int((1 - self.cfg.p) * self.cfg.n)
        if n_harm > len(harmful_pool):
            raise ConfigError(f"attack {self.cfg.key}: needs {n_harm} harmful samples, the attack pool has "
                              f"{len(harmful_pool)} (raise data.n_attack)")
        examples: list[Example] = list(harmful_pool.examples[:n_harm])
        prov: dict[str, Any] = {"harmful": n_harm, "harmful_source": harmful_pool.provenance}
        if n_task:
            task = TASKS.get(self.cfg.task).load("train", n_task, self.cfg.task_source, seed)
            examples += task.examples
            prov.update(task=self.cfg.task, task_samples=len(task), task_source=task.provenance)
        random.Random(seed).shuffle(examples)
        return DataSplit(f"attack-{self.cfg.key}", examples, prov)

    def prepare(self, base: Any, adapter_dir: str | Path) -> Any:
        """The model the attacker trains: the released LoRA kept trainable, every weight (full_finetune), or a
        fresh LoRA of the attacker's rank on the merged model (lora) — attacks/weights.py."""
        return attacker_model(base, adapter_dir, self.cfg)

    def utility_task(self, seed: int = 0) -> UtilityTask | None:
        """FA on the attack's benign task (mixed / benign), or on `task` after a harmful attack with measure_fa."""
        if not (self.cfg.uses_task or self.cfg.measure_fa):
            return None
        evalset = TASKS.get(self.cfg.task).load("eval", self.cfg.n_task_eval, self.cfg.task_source, seed)
        return UtilityTask(self.cfg.task, evalset, self.cfg.task_max_new_tokens)
