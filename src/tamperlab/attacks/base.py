"""The attack interface: what the harmful-fine-tuning experiments ask of every registered attack.

An attack receives the released model (the base weights + the defender's aligned LoRA) and whatever an attacker
has (a pool of harmful examples, benign examples, a seed, a scratch folder) in an `AttackContext`, and returns the
attacked model in an `AttackResult`; the experiment then measures it exactly as it measures every other attack
(HS with the judge panel, collapse, and fine-tune accuracy when the attack names a utility task). The interface
covers

* **training attacks** (`TrainingAttack`): build a dataset, then train through the project's Trainer plumbing
  (resume, NaN guard, accelerate) — harmful / mixed / benign fine-tuning (`finetune`, also with the attacker's own
  LoRA rank or every weight: attacks/weights.py), identity shifting (`aoa`), a universal soft prompt on the input
  embeddings (`soft-prompt`); the experiment's step hooks (`AttackContext.measure`) record HS / collapse / losses
  along the attack;
* **training-free attacks** (subclass `Attack`, override `run`): change weights directly (`refusal-ablation`:
  estimate the direction from `harmful_pool` vs `benign_pool` activations, orthogonalise the weights that write to
  the residual stream) or change generation (return a model whose `generate` applies the attack).

A new attack is one file in this package with one decorator (docs/methods/attacks.md, "Writing an attack")::

    @dataclass
    class MyAttackConfig(AttackSpec):
        name: str = "myattack"
        strength: float = 1.0
        \"\"\"What it does.\"\"\"

    @ATTACKS.register("myattack", config=MyAttackConfig)
    class MyAttack(Attack):
        \"\"\"One line for `tamperlab list attacks`.\"\"\"

        def run(self, ctx: AttackContext) -> AttackResult: ...

and a recipe names it: ``attacks: [{name: myattack, strength: 2.0}]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar

from ..config import Registered
from ..data.core import DataSplit, Example


@dataclass
class AttackSpec:
    """Fields every attack entry of a recipe has; an attack's config subclasses it (and sets `name`'s default to
    its registered name)."""

    name: Annotated[str, Registered("attacks")] = "finetune"
    """Registered attack (tamperlab list attacks); picks the config class of the rest of the entry."""
    label: str = ""
    """Column label in tables and stage keys (default: derived from the attack's settings)."""

    @property
    def key(self) -> str:
        """The attack's label: `label`, or one derived from its settings."""
        return self.label or self.default_label()

    def default_label(self) -> str:
        return self.name

    def describe(self) -> dict[str, Any]:
        """What report tables need to place this attack in a column (label, kind, data size n, harmful ratio p,
        benign task); an attack without these gives None."""
        return {"label": self.key, "kind": self.name, "n": None, "p": None, "task": None}


@dataclass
class UtilityTask:
    """A benign task whose accuracy (FA) is measured on the attacked model."""

    task: str
    """Registered benign task (tamperlab list tasks)."""
    examples: DataSplit
    """Its evaluation examples."""
    max_new_tokens: int
    """Decoding budget for the answers."""


def _no_measurement(model: Any, dataset: DataSplit, train: Any) -> list[Any]:
    return []


def _no_guard(trainer: Any) -> None:
    return None


@dataclass
class AttackContext:
    """What the attacker has. The experiment fills it; an attack reads what it needs."""

    base_model: Any
    """The pre-alignment base model, freshly loaded for this attack (the attack may modify it)."""
    tokenizer: Any
    """Its tokenizer."""
    adapter_dir: Path
    """The released aligned LoRA adapter (peft folder)."""
    harmful_pool: DataSplit
    """Harmful (prompt, response) pairs the attacker owns; disjoint from alignment data and evaluation prompts."""
    benign_pool: DataSplit
    """Benign (prompt, response) pairs, e.g. for contrasting activations with `harmful_pool`."""
    seed: int
    """Seed of this attack (its data order, sampling)."""
    output_dir: Path
    """Scratch / checkpoint folder of this attack; a killed training attack resumes from its checkpoints here."""
    prompt_format: str = "auto"
    """How prompts are formatted for this model (data.core.format_example)."""
    max_length: int = 256
    """Token budget of one training example."""
    measure: Callable[[Any, DataSplit, Any], list[Any]] = _no_measurement
    """`measure(model, dataset, train_config)` → Trainer callbacks that record HS / collapse / losses along a
    training attack (the experiment's step hooks); a training-free attack does not call it."""
    guard: Callable[[Any], None] = _no_guard
    """`guard(trainer)`: fine-tuning-stage defenses (Lisa) attach themselves to the attacker's Trainer; a training
    attack calls it once its Trainer is built."""


@dataclass
class AttackResult:
    """The attacked model and what the attack used."""

    model: Any
    """The attacked model, ready for generation (eval mode). A generation-time attack returns a wrapper whose
    `generate` applies it."""
    data: dict[str, Any] = field(default_factory=dict)
    """Provenance of the data the attack used (recorded in the attack's stage)."""
    train: dict[str, Any] | None = None
    """Training statistics (steps, losses, seconds) of a training attack; None for a training-free one."""
    dataset: DataSplit | None = None
    """The training set of a training attack."""


class Attack:
    """Base class of every registered attack: `run(context) → AttackResult`."""

    config_cls: ClassVar[type[AttackSpec]] = AttackSpec
    paper: ClassVar[str] = ""
    """Where the attack is published (shown by reports)."""

    def __init__(self, cfg: AttackSpec):
        self.cfg = cfg

    def run(self, ctx: AttackContext) -> AttackResult:
        raise NotImplementedError

    def utility_task(self, seed: int = 0) -> UtilityTask | None:
        """The benign task whose accuracy (FA) the experiment measures on the attacked model, if any."""
        return None

    def eval_prompt(self, prompt: Example) -> Example:
        """One harmful evaluation prompt as this attack's user poses it to the attacked model (default: unchanged).
        The experiment generates and judges HS — final and along the attack — and builds the harmful-loss probe
        from these; an attack whose threat includes how the model is invoked overrides it (`aoa`: the persona's
        system turn and instruction prefix)."""
        return prompt


class TrainingAttack(Attack):
    """An attack that fine-tunes the released model: `prepare` the model, build the `dataset`, train it through the
    shared Trainer plumbing (tamperlab.training) with the experiment's step hooks. Its config has a `train`
    (TrainConfig) field."""

    def prepare(self, base: Any, adapter_dir: str | Path) -> Any:
        """The model the attacker trains (default: the released LoRA, kept trainable)."""
        from ..models import load_adapter

        return load_adapter(base, adapter_dir, trainable=True)

    def trained_model(self, ctx: AttackContext) -> Any:
        """The model to train from the context (default: `prepare(base_model, adapter_dir)`; an attack whose
        preparation needs more, e.g. the tokenizer, overrides this)."""
        return self.prepare(ctx.base_model, ctx.adapter_dir)

    def dataset(self, harmful_pool: DataSplit, seed: int = 0) -> DataSplit:
        raise NotImplementedError

    def training_set(self, ctx: AttackContext) -> DataSplit:
        """The training set from what the attacker has (default: `dataset(harmful_pool, seed)`; an attack that
        needs more of the context, e.g. the benign pool, overrides this)."""
        return self.dataset(ctx.harmful_pool, ctx.seed)

    def run(self, ctx: AttackContext) -> AttackResult:
        from ..training import build_trainer, run_training

        model = self.trained_model(ctx)
        train_set = self.training_set(ctx)
        train_cfg = self.cfg.train  # type: ignore[attr-defined]
        callbacks = ctx.measure(model, train_set, train_cfg)
        trainer = build_trainer(model, ctx.tokenizer, train_set.examples, train_cfg, ctx.output_dir, ctx.prompt_format,
                                ctx.max_length, ctx.seed, callbacks=callbacks)
        ctx.guard(trainer)
        stats = run_training(trainer, ctx.output_dir, resume=True)
        model.eval()
        return AttackResult(model, data=train_set.provenance, train=stats, dataset=train_set)
