"""The CTRAP experiment: align the base model with each defense → attack each aligned model with each
fine-tuning attack → measure HS / FA / collapse (also along the attack) → report.

Stages are cached in the run directory (`--resume` skips finished ones and continues a killed training stage
from its last checkpoint); aligned adapters are reused by every attack of that defense. Every stage is versioned
by the config slice it depends on (`HFTExperiment.stage_inputs`), so a resumed run whose recipe grew (another
defense or attack) or changed computes only the new and changed cells.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

from ..attacks.base import Attack, AttackContext, AttackSpec
from ..attacks.finetune import AttackConfig
from ..config import ByName, Registered, to_dict
from ..data.core import DataSplit, Example
from ..data.packs import HarmfulData, HarmfulDataConfig, build_harmful_data
from ..defenses.base import TRAP_TEXT, AlignmentData, Defense
from ..errors import ConfigError
from ..metrics.hft import METRIC_DEFINITIONS
from ..metrics.lmeval import add_utility, evaluate_utility
from ..models import LoraSettings, ModelConfig, apply_lora, load_adapter, load_model, save_model
from ..registry import ATTACKS, DEFENSES, EXPERIMENTS
from ..runs import RunDir, inputs_hash
from ..training import StepHook, TrainConfig, steps_for
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
        return DEFENSES.config(self.name, self.params, f"defenses[{self.key}].params")

    def build(self) -> Defense:
        return DEFENSES.build(self.name, self.config())

    @property
    def key(self) -> str:
        return self.label or self.name


RecipeAttack = Annotated[AttackSpec, ByName(
    "attacks", default="finetune",
    hint=" (`name` picks the attack; a fine-tuning attack's table label is `label`)")]
"""One `attacks` entry: the config of the registered attack its `name` picks."""


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
    attacks: list[RecipeAttack] = field(default_factory=lambda: [AttackConfig(kind="harmful", n=100),
                                                                 AttackConfig(kind="benign", n=200, task="sst2")])
    """Attacks applied to every aligned model: each entry's `name` picks a registered attack (default `finetune`,
    harmful / mixed / benign fine-tuning) and the rest of the entry is that attack's config."""
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
        labels = [a.key for a in self.attacks]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"attacks: duplicate labels {labels}; give each a distinct `label`")
        self.sweep.validate(self.attacks)
        self.eval.trap_text = self._trap_text()

    def _trap_text(self) -> str:
        """The one collapse-trap text of the run: the `trap_text` of the trap-planting defenses (one value), else
        eval.trap_text, else the default. eval.trap_text may repeat the defenses' value, not contradict it."""
        traps = {d.key: t for d in self.defenses if (t := getattr(d.config(), "trap_text", None)) is not None}
        if len(set(traps.values())) > 1:
            raise ConfigError(f"defenses set different trap_text values {traps}; the evaluation measures one trap")
        if not traps:
            return self.eval.trap_text or TRAP_TEXT
        trap = next(iter(traps.values()))
        if self.eval.trap_text and self.eval.trap_text != trap:
            raise ConfigError(f"eval.trap_text {self.eval.trap_text!r} differs from the defenses' trap_text {trap!r}: "
                              "set it once, in the defense's params (the evaluation follows it)")
        return trap


def _data_to_json(d: HarmfulData) -> dict[str, Any]:
    return {k: {"name": v.name, "provenance": v.provenance, "examples": [e.to_dict() for e in v.examples]}
            for k, v in vars(d).items()}


def data_digest(data: HarmfulData) -> str:
    """sha256 of the data's canonical JSON: the identity of the examples every later stage trains and measures on."""
    return inputs_hash(_data_to_json(data))


def _data_from_json(j: dict[str, Any]) -> HarmfulData:
    return HarmfulData(**{k: DataSplit(v["name"], [Example.from_dict(e) for e in v["examples"]], v["provenance"])
                          for k, v in j.items()})


@EXPERIMENTS.register("hft")
class HFTExperiment(Experiment):
    """Harmful fine-tuning: defenses (SFT, CTRAP, ...) × attacks (harmful / mixed / benign) → HS, FA, collapse."""

    config_cls = HFTConfig
    cfg: HFTConfig
    versioned_stages = True

    # -- stage inputs (what each cached stage depends on; runs.RunDir.cached) -------------------------------
    def data_inputs(self) -> dict[str, Any]:
        """The data stage: the data settings, and the model and seed that generate the offline packs."""
        return {"model": to_dict(self.cfg.model), "data": to_dict(self.cfg.data), "seed": self.cfg.seed}

    def stage_inputs(self, spec: DefenseSpec, data: HarmfulData, evaluation: bool = False,
                     atk: AttackSpec | None = None) -> dict[str, Any]:
        """An alignment stage: base model, LoRA, the data (by content: a data stage rebuilt to the same examples
        changes nothing), seed, the defense (resolved params) and the alignment optimizer; an evaluation adds the
        eval settings (judge, decoding, trajectory), an attack also the attack's config. Everything downstream of
        the aligned adapter includes the alignment inputs, so a re-aligned defense re-runs its evaluations."""
        out: dict[str, Any] = {
            "model": to_dict(self.cfg.model), "lora": to_dict(self.cfg.lora), "data": data_digest(data),
            "seed": self.cfg.seed, "defense": {"name": spec.name, "params": to_dict(spec.config())},
            "alignment": to_dict(self.cfg.alignment)}
        if evaluation or atk is not None:
            out["eval"] = to_dict(self.cfg.eval)
        if atk is not None:
            out["attack"] = to_dict(atk)
        return out

    # -- stages ---------------------------------------------------------------------------------------------
    def _base(self) -> tuple[Any, Any]:
        return load_model(self.cfg.model, self.cfg.seed)

    def data(self, run: RunDir) -> HarmfulData:
        def build() -> dict[str, Any]:
            model, tok = (None, None) if self.cfg.data.source == "hub" else self._base()
            return _data_to_json(build_harmful_data(self.cfg.data, model, tok, self.cfg.model.name_or_path))

        return _data_from_json(run.cached("data", build, inputs=self.data_inputs()))

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

        run.cached(f"align-{spec.key}", do, inputs=self.stage_inputs(spec, data))
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

        return run.cached(f"eval-aligned-{spec.key}", do, inputs=self.stage_inputs(spec, data, evaluation=True))

    def attack(self, run: RunDir, spec: DefenseSpec, adapter: Path, atk: AttackSpec,
               data: HarmfulData, key: str | None = None,
               utility: Callable[[Any, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """One attack on one aligned adapter, cached as stage `key` (default `attack-<defense>-<attack>`; attacker
        sweeps pass one key per trial). The attack is the registered component its `name` picks. `utility(model,
        tok)` measures the attacked (and repaired) model's utility, stored under "lm_eval" unless empty; default:
        lm-eval's `eval.lm_eval` for a fixed attack, nothing for a sweep trial (the sweep passes the utility it
        gates on)."""
        if utility is None and key is None:
            utility = functools.partial(evaluate_utility, cfg=self.cfg.eval.lm_eval)  # {} when it names no task
        key = key or f"attack-{spec.key}-{atk.key}"

        def do() -> dict[str, Any]:
            base, tok = self._base()
            attack: Attack = ATTACKS.build(atk.name, atk)
            ckpt = run.sub("checkpoints", key)
            recorders: list[TrajectoryRecorder] = []
            prompts = [attack.eval_prompt(e) for e in data.eval_prompts.examples]  # as this attack's user poses them

            def measure(model: Any, train_set: Any, train: TrainConfig) -> list[Any]:
                """Step hooks of a training attack: HS / collapse / losses at `eval.eval_steps`."""
                ev = self.evaluator((model, tok))
                harmful_probe = [e for e in train_set.examples if e.response and e in data.attack_harmful.examples]
                probe = [attack.eval_prompt(e) for e in harmful_probe or data.attack_harmful.examples]
                rec = TrajectoryRecorder(ev, prompts[: self.cfg.eval.n_trajectory_prompts],
                                         ev.probes(data.helpful.examples, probe), ckpt / "trajectory.json")
                total = steps_for(len(train_set), train)
                hook = StepHook([s for s in self.cfg.eval.eval_steps if s <= total], rec,
                                log_fn=lambda r: run.log("attack_log", defense=spec.key, attack=atk.key, **r))
                recorders.append(rec)
                return [hook]

            res = attack.run(AttackContext(base, tok, adapter, data.attack_harmful, data.helpful, self.cfg.seed, ckpt,
                                           self.cfg.model.prompt_format, self.cfg.model.max_length, measure,
                                           lambda trainer: self.guard(spec, trainer, data)))
            model = res.model
            repair = self.repair(spec, model, tok, adapter, data)
            ev = recorders[0].ev if recorders else self.evaluator((model, tok))
            points = recorders[0].points if recorders else {}
            m, samples = ev.harm(model, prompts, desc=f"HS {spec.key}/{atk.key}")
            out: dict[str, Any] = {**m, "train": res.train, "data": res.data,
                                   "trajectory": {str(k): v for k, v in sorted(points.items())}}
            if repair is not None:
                out["repair"] = repair
            util = attack.utility_task(self.cfg.seed)
            if util is not None:
                out["fa"], fa_samples = ev.task_accuracy(model, util.task, util.examples, util.max_new_tokens)
                out["task"] = util.task
                out.update(fa_fields(fa_samples))
                save_samples(run, f"samples-fa-{spec.key}-{atk.key}", fa_samples)
            save_samples(run, f"samples-{key}", samples)
            if utility is not None and (block := utility(model, tok)):
                out["lm_eval"] = block
            return out

        return run.cached(key, do, inputs=self.stage_inputs(spec, data, atk=atk))

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
            row["attacks"] = {atk.key: self.attack(run, spec, adapter, atk, data) for atk in self.cfg.attacks}
            if self.cfg.sweep.enabled:
                row["sweep"] = run_sweep(self, run, spec, adapter, data, row["attacks"])
            results[spec.key] = row
        extra: dict[str, Any] = {}
        if self.cfg.eval.trap_diagnostics:
            from ..metrics.trap_diagnostics import DEFINITIONS
            from .trap_diagnosis import diagnose_run

            keys = [spec.key for spec in self.cfg.defenses]
            extra["trap_diagnostics"] = run.cached(
                "trap-diagnostics", lambda: diagnose_run(self.cfg, run.path, results, keys),
                inputs={"config": self.recorded_config()})
            extra["trap_diagnostics_definitions"] = DEFINITIONS
        return run.save_metrics(
            results,
            judge=self.judge.describe(),
            data=data.describe(),
            metric_definitions=METRIC_DEFINITIONS, **extra)

    def report(self, run: RunDir) -> list[Path]:
        from ..report.hft import write_hft_report

        return write_hft_report(run)


# Recipes and run directories written before the experiment was named `hft` say `experiment: ctrap` (also a
# defense's name): they keep loading, with a one-line deprecation warning.
EXPERIMENTS.alias("ctrap", "hft")
