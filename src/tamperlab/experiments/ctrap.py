"""The CTRAP experiment: align the base model with each defense → attack each aligned model with each
fine-tuning attack → measure HS / FA / collapse (also along the attack) → report.

Stages are cached in the run directory (`--resume` skips finished ones and continues a killed training stage
from its last checkpoint); aligned adapters are reused by every attack of that defense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from ..attacks.finetune import AttackConfig, FineTuneAttack
from ..config import Registered, from_dict
from ..data.core import DataSplit, Example
from ..data.packs import HarmfulData, HarmfulDataConfig, build_harmful_data
from ..defenses.base import AlignmentData, Defense
from ..errors import ConfigError
from ..metrics.hft import METRIC_DEFINITIONS
from ..metrics.lmeval import add_utility
from ..models import LoraSettings, ModelConfig, apply_lora, load_adapter, load_model, save_model
from ..registry import DEFENSES, EXPERIMENTS
from ..runs import RunDir
from ..training import StepHook, TrainConfig, build_trainer, run_training, steps_for
from .base import Experiment, RunConfig
from .hft_eval import EvalConfig, Evaluator, TrajectoryRecorder, fa_fields, make_panel, save_samples
from .hft_sweep import HFTSweepConfig, run_sweep

log = logging.getLogger("tamperlab")


@dataclass
class DefenseSpec:
    """One defense to align with."""

    name: Annotated[str, Registered("defenses")] = "sft"
    """Registered defense (tamperlab list defenses)."""
    label: str = ""
    """Row label in tables (default: name)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Defense hyper-parameters (validated against the defense's config)."""

    def __post_init__(self) -> None:
        self.config()  # unknown / bad params fail at load time, before any compute

    def config(self) -> Any:
        return from_dict(DEFENSES.config_for(self.name), self.params, f"defenses[{self.key}].params")

    def build(self) -> Defense:
        return DEFENSES.get(self.name)(self.config())

    @property
    def key(self) -> str:
        return self.label or self.name


def _alignment_train() -> TrainConfig:
    return TrainConfig(learning_rate=5e-4, max_steps=60, batch_size=4, save_steps=20)


def _default_lora() -> LoraSettings:
    return LoraSettings(r=16, alpha=32)


@dataclass
class HFTConfig(RunConfig):
    """Harmful-fine-tuning experiment: defenses × attacks on one base model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model (pre-alignment)."""
    lora: LoraSettings = field(default_factory=_default_lora)
    """Alignment LoRA (official: r=32, alpha=4, q/k/v; the attacker keeps training it)."""
    data: HarmfulDataConfig = field(default_factory=HarmfulDataConfig)
    """Alignment / attack / evaluation data."""
    alignment: TrainConfig = field(default_factory=_alignment_train)
    """Alignment optimizer (official: AdamW lr 5e-4, wd 0.1, constant, 20 epochs)."""
    defenses: list[DefenseSpec] = field(default_factory=lambda: [DefenseSpec("sft"), DefenseSpec("ctrap")])
    """Defenses to compare."""
    attacks: list[AttackConfig] = field(default_factory=lambda: [AttackConfig(kind="harmful", n=100),
                                                                 AttackConfig(kind="benign", n=200, task="sst2")])
    """Fine-tuning attacks applied to every aligned model."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Judge, decoding and trajectory settings."""
    evaluate_aligned: bool = True
    """Also measure each aligned model before any attack."""
    sweep: HFTSweepConfig = field(default_factory=HFTSweepConfig)
    """Attacker sweep around one of `attacks` (off by default; docs/methods/measurement.md, "Attacker sweeps")."""

    def __post_init__(self) -> None:
        if not self.defenses:
            raise ConfigError("defenses: empty; name at least one defense (e.g. [{name: sft}])")
        keys = [d.key for d in self.defenses]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"defenses: duplicate labels {keys}; give each a distinct `label`")
        labels = [a.label for a in self.attacks]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"attacks: duplicate labels {labels}; give each a distinct `name`")
        self.sweep.validate(self.attacks)


def _data_to_json(d: HarmfulData) -> dict[str, Any]:
    return {k: {"name": v.name, "provenance": v.provenance, "examples": [e.to_dict() for e in v.examples]}
            for k, v in vars(d).items()}


def _data_from_json(j: dict[str, Any]) -> HarmfulData:
    return HarmfulData(**{k: DataSplit(v["name"], [Example.from_dict(e) for e in v["examples"]], v["provenance"])
                          for k, v in j.items()})


@EXPERIMENTS.register("hft")
class HFTExperiment(Experiment):
    """Harmful fine-tuning: defenses (SFT, CTRAP, ...) × attacks (harmful / mixed / benign) → HS, FA, collapse."""

    config_cls = HFTConfig
    cfg: HFTConfig

    # -- stages ---------------------------------------------------------------------------------------------
    def _base(self) -> tuple[Any, Any]:
        return load_model(self.cfg.model, self.cfg.seed)

    def data(self, run: RunDir) -> HarmfulData:
        def build() -> dict[str, Any]:
            model, tok = (None, None) if self.cfg.data.source == "hub" else self._base()
            return _data_to_json(build_harmful_data(self.cfg.data, model, tok, self.cfg.model.name_or_path))

        return _data_from_json(run.cached("data", build))

    def align(self, run: RunDir, spec: DefenseSpec, data: HarmfulData) -> Path:
        adapter = run.path / "models" / spec.key

        def do() -> dict[str, Any]:
            model, tok = self._base()
            model = apply_lora(model, self.cfg.lora)
            defense = spec.build()
            stats = defense.align(model, tok, AlignmentData(data.align_refusal.examples, data.align_harmful.examples,
                                                            data.helpful.examples),
                                  self.cfg.alignment, run.sub("checkpoints", f"align-{spec.key}"),
                                  self.cfg.model.prompt_format, self.cfg.model.max_length, self.cfg.seed,
                                  callbacks=[StepHook([], log_fn=lambda r: run.log("align_log", defense=spec.key,
                                                                                   **r))])
            save_model(model, None, adapter)
            return stats

        run.cached(f"align-{spec.key}", do)
        return adapter

    def evaluator(self, tok_model: tuple[Any, Any]) -> Evaluator:
        return Evaluator(tok_model, self.judge, self.cfg.eval, self.cfg.model.prompt_format,
                         self.cfg.model.max_length)

    def eval_aligned(self, run: RunDir, spec: DefenseSpec, adapter: Path, data: HarmfulData) -> dict[str, Any]:
        def do() -> dict[str, Any]:
            base, tok = self._base()
            model = load_adapter(base, adapter, trainable=False)
            ev = self.evaluator((model, tok))
            m, samples = ev.harm(model, data.eval_prompts.examples, desc=f"HS {spec.key} aligned")
            save_samples(run, f"samples-aligned-{spec.key}", samples)
            add_utility(m, model, tok, self.cfg.eval.lm_eval)
            return m

        return run.cached(f"eval-aligned-{spec.key}", do)

    def attack(self, run: RunDir, spec: DefenseSpec, adapter: Path, atk: AttackConfig,
               data: HarmfulData, key: str | None = None) -> dict[str, Any]:
        """One attack on one aligned adapter, cached as stage `key` (default `attack-<defense>-<attack>`; attacker
        sweeps pass one key per trial)."""
        key = key or f"attack-{spec.key}-{atk.label}"

        def do() -> dict[str, Any]:
            base, tok = self._base()
            attack = FineTuneAttack(atk)
            model = attack.prepare(base, adapter)
            train_set = attack.dataset(data.attack_harmful, self.cfg.seed)
            ev = self.evaluator((model, tok))
            ckpt = run.sub("checkpoints", key)
            harmful_probe = [e for e in train_set.examples if e.response and e in data.attack_harmful.examples]
            rec = TrajectoryRecorder(ev, data.eval_prompts.examples[: self.cfg.eval.n_trajectory_prompts],
                                     ev.probes(data.helpful.examples, harmful_probe or data.attack_harmful.examples),
                                     ckpt / "trajectory.json")
            total = steps_for(len(train_set), atk.train)
            hook = StepHook([s for s in self.cfg.eval.eval_steps if s <= total], rec,
                            log_fn=lambda r: run.log("attack_log", defense=spec.key, attack=atk.label, **r))
            trainer = build_trainer(model, tok, train_set.examples, atk.train, ckpt, self.cfg.model.prompt_format,
                                    self.cfg.model.max_length, self.cfg.seed, callbacks=[hook])
            self.guard(spec, trainer, data)
            stats = run_training(trainer, ckpt, resume=True)
            model.eval()
            repair = self.repair(spec, model, tok, adapter, data)
            m, samples = ev.harm(model, data.eval_prompts.examples, desc=f"HS {spec.key}/{atk.label}")
            out: dict[str, Any] = {**m, "train": stats, "data": train_set.provenance,
                                   "trajectory": {str(k): v for k, v in sorted(rec.points.items())}}
            if repair is not None:
                out["repair"] = repair
            evalset = attack.task_eval(self.cfg.seed)
            if evalset is not None:
                out["fa"], fa_samples = ev.task_accuracy(model, atk.task, evalset, atk.task_max_new_tokens)
                out["task"] = atk.task
                out.update(fa_fields(fa_samples))
                save_samples(run, f"samples-fa-{spec.key}-{atk.label}", fa_samples)
            save_samples(run, f"samples-{key}", samples)
            if key == f"attack-{spec.key}-{atk.label}":  # a fixed attack, not an attacker-sweep trial
                add_utility(out, model, tok, self.cfg.eval.lm_eval)
            return out

        return run.cached(key, do)

    def guard(self, spec: DefenseSpec, trainer: Any, data: HarmfulData) -> None:
        """Fine-tuning-stage defenses (Lisa) take part in the attacker's fine-tuning (defenses/lisa.py)."""
        from ..defenses.lisa import guard_finetuning

        guard_finetuning(spec.build(), trainer, data.align_refusal.examples, self.cfg.model.prompt_format,
                         self.cfg.model.max_length, self.cfg.seed)

    def repair(self, spec: DefenseSpec, model: Any, tok: Any, adapter: Path,
               data: HarmfulData) -> dict[str, Any] | None:
        """Post-fine-tuning defenses (SafeLoRA, Antidote) repair the attacked model before it is measured; None for
        the others (defenses/post.py)."""
        from ..defenses.post import RepairContext, repair_attacked

        ctx = RepairContext(adapter, data.align_harmful.examples, tok, self.cfg.model.prompt_format,
                            self.cfg.model.max_length)
        return repair_attacked(spec.build(), model, ctx)

    # -- orchestration --------------------------------------------------------------------------------------
    def run(self, run: RunDir) -> dict[str, Any]:
        self.judge = make_panel(self.cfg.eval)
        data = self.data(run)
        results: dict[str, Any] = {}
        for spec in self.cfg.defenses:
            spec.build()  # validate every defense before spending time on any
        for spec in self.cfg.defenses:
            adapter = self.align(run, spec, data)
            row: dict[str, Any] = {"alignment": run.load_stage(f"align-{spec.key}")}
            if self.cfg.evaluate_aligned:
                row["aligned"] = self.eval_aligned(run, spec, adapter, data)
            row["attacks"] = {atk.label: self.attack(run, spec, adapter, atk, data) for atk in self.cfg.attacks}
            if self.cfg.sweep.enabled:
                row["sweep"] = run_sweep(self, run, spec, adapter, data, row["attacks"])
            results[spec.key] = row
        return run.save_metrics(
            results,
            judge=self.judge.describe(),
            data=data.describe(),
            metric_definitions=METRIC_DEFINITIONS)

    def report(self, run: RunDir) -> list[Path]:
        from .hft_report import write_hft_report

        return write_hft_report(run)


# The issue and the docs call the single-table CTRAP experiment "ctrap"; it is the same experiment.
EXPERIMENTS.register("ctrap")(HFTExperiment)
