"""Attacker sweeps for the harmful-fine-tuning experiments (`sweep:` recipe section of `hft` / `ctrap` /
`ctrap_table`): after the fixed attacks, each defense's aligned adapter is attacked once per trial — the fixed
attack with the trial's learning rate, steps or epochs, batch size, LoRA vs full fine-tuning and data size — and
the trials are aggregated per defense (tamperlab.sweep.aggregate). Each trial is the experiment's own attack stage
(`HFTExperiment.attack`) cached under `sweep-<defense>-<trial hash>`, so a killed sweep resumes trial by trial.

A trial's utility — what "worst case keeping utility", `max_utility_drop` and the skip rule read — is either FA on
a benign task (`utility_task`) or one accuracy-type metric of one lm-evaluation-harness task (`lm_eval`, the same
config as `eval.lm_eval`; metrics/lmeval.py), in %. An lm-eval-gated sweep caches its trials under
`sweep-<defense>-u<hash of the utility measure>-<trial hash>`: a trial measured without that utility (or with
another) is not reused for it.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

from ..attacks.base import AttackSpec
from ..attacks.finetune import AttackConfig
from ..config import PosFloat, PosInt, Range, Satisfies, to_dict
from ..distributed import is_main_process
from ..errors import ConfigError, ResourceError
from ..metrics.lmeval import ACCURACY_METRICS, STAND_INS, LMEvalConfig, evaluate_utility, shipped_tasks
from ..models import load_adapter
from ..registry import ATTACKS
from ..report.sweep import HFT_VIEW
from ..runs import RunDir
from ..stats import wilson
from ..sweep import SweepSettings, trial_key
from .hft_eval import fa_fields, save_samples
from .sweep_stages import aggregate_trials, run_staged_trials

if TYPE_CHECKING:  # pragma: no cover
    from ..data.packs import HarmfulData
    from .ctrap import DefenseSpec, HFTExperiment


def _task_error(value: str) -> str | None:
    from ..registry import TASKS

    if not value or value in TASKS:
        return None
    return f"unknown task {value!r}; known: {', '.join(TASKS.names())}"


@dataclass
class AttackSpace:
    """Values each attacker hyper-parameter takes in the sweep; an empty list keeps the fixed attack's value."""

    learning_rate: list[PosFloat] = field(default_factory=list)
    """Attacker learning rates (paper-scale grid: 1e-5, 5e-5, 1e-4, 2e-4)."""
    max_steps: list[PosInt] = field(default_factory=list)
    """Optimizer steps (CPU recipes); exclusive with `epochs`."""
    epochs: list[PosFloat] = field(default_factory=list)
    """Epochs over the attack data (GPU recipes: 1, 5, 20); sets max_steps to 0."""
    batch_size: list[PosInt] = field(default_factory=list)
    """Per-device batch sizes."""
    full_finetune: list[bool] = field(default_factory=list)
    """false = keep training the released LoRA, true = merge it and train every weight."""
    n: list[PosInt] = field(default_factory=list)
    """Fine-tuning samples (harmful data size for a harmful attack)."""

    def __post_init__(self) -> None:
        if self.max_steps and self.epochs:
            raise ConfigError("sweep.space: give max_steps or epochs, not both (max_steps > 0 overrides epochs)")

    def dims(self) -> dict[str, list[Any]]:
        """The swept dimensions, in declaration order."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass
class HFTSweepConfig(SweepSettings):
    """Attacker sweep of a harmful-fine-tuning run (see tamperlab.sweep.SweepSettings for search/aggregation)."""

    attack: str = ""
    """Label of the `attacks` entry the sweep varies (default: the first harmful attack). Its own result is the
    "fixed attack" the sweep is compared with; a trial changes only the swept fields."""
    space: AttackSpace = field(default_factory=AttackSpace)
    """Values of each swept hyper-parameter."""
    utility_task: Annotated[str, Satisfies(_task_error)] = ""
    """Benign task whose accuracy (FA) measures the utility a harmful trial keeps (e.g. sst2); "" = none for a
    harmful attack. A mixed / benign base attack always measures FA on its own task."""
    n_utility_eval: PosInt = 32
    """Task eval examples for that utility FA."""
    utility_source: Literal["offline", "hub"] = "offline"
    """offline = generated task data with exact labels; hub = the real dataset (GPU recipes)."""
    utility_max_new_tokens: PosInt = 24
    """Decoding budget for the utility task's answers."""
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    """Utility measured by lm-evaluation-harness instead of a benign task's FA (same settings as `eval.lm_eval`):
    exactly one task (e.g. tamperlab_mc, the shipped multiple-choice stand-in; mmlu on a GPU), evaluated on every
    trial's attacked model and on each aligned model (when the skip rule or `max_utility_drop` needs it). Its
    metric (`utility_metric`) in % is what `utility_threshold`, `max_utility_drop` and `skip_if_aligned_fa_below`
    compare. Exclusive with `utility_task`."""
    utility_metric: str = ""
    """lm-eval metric of that task used as the utility: acc, acc_norm or exact_match[,filter] (a mean of 0/1 item
    scores, so it has a Wilson interval). "" = acc when the task has it, else its first exact_match metric."""
    max_utility_drop: Annotated[float, Range(0, 100)] | None = None
    """A trial keeps utility only if its utility is at most this many points (of %) below the aligned model's
    (measured once per defense), on top of `utility_threshold`; None = no drop rule."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and not self.space.dims():
            raise ConfigError("sweep.space: no dimension has values; list at least one (e.g. learning_rate); with "
                              "--set, give sweep.space.* before sweep.enabled=true (each --set is validated)")
        if self.lm_eval.enabled:
            self._check_lm_eval()
        elif self.utility_metric:
            raise ConfigError("sweep.utility_metric: names a metric of sweep.lm_eval, which has no task")

    def _check_lm_eval(self) -> None:
        """Load-time checks of the lm-eval utility (task names themselves are checked by LMEvalConfig)."""
        tasks = self.lm_eval.tasks
        if len(tasks) != 1:
            raise ConfigError(f"sweep.lm_eval.tasks: the sweep's utility is one number; name one task, not {tasks}")
        if self.utility_task:
            raise ConfigError(f"sweep: give one utility measure, utility_task ({self.utility_task!r}) or "
                              f"lm_eval ({tasks[0]!r}), not both")
        if self.lm_eval.offline and tasks[0] not in shipped_tasks() and tasks[0] not in STAND_INS:
            raise ConfigError(f"sweep.lm_eval.tasks: {tasks[0]!r} has no offline stand-in (offline: true); "
                              f"stand-ins exist for {sorted(STAND_INS)}")
        base = self.utility_metric.split(",")[0]
        if self.utility_metric and base not in ACCURACY_METRICS:
            raise ConfigError(f"sweep.utility_metric: {self.utility_metric!r} is not an accuracy-type lm-eval metric "
                              f"({', '.join(ACCURACY_METRICS)}, optionally with ',<filter>')")

    def utility_tag(self) -> str:
        """Hash of what the lm-eval utility measures (task, metric, items, shots; not the batch size): part of the
        trial stage keys, so a cached trial is reused only for the same utility."""
        spec = {k: v for k, v in to_dict(self.lm_eval).items() if k != "batch_size"}
        return trial_key({"lm_eval": spec, "metric": self.utility_metric})

    def validate(self, attacks: Sequence[AttackSpec]) -> None:
        """Cross-section checks against the recipe's attacks (at load time, before any compute)."""
        if not self.enabled:
            return
        base = self.base_attack(attacks)
        has_utility = self.lm_eval.enabled or self.utility_attack(base) is not None
        for name, value in (("skip_if_aligned_fa_below", self.skip_if_aligned_fa_below > 0),
                            ("max_utility_drop", self.max_utility_drop is not None)):
            if value and not has_utility:
                raise ConfigError(f"sweep.{name} needs a utility measure: set sweep.lm_eval.tasks (e.g. "
                                  f"[tamperlab_mc]) or sweep.utility_task (the base attack {base.key!r} has no "
                                  "benign task)")

    def base_attack(self, attacks: Sequence[AttackSpec]) -> AttackConfig:
        if self.attack:
            found = [a for a in attacks if a.key == self.attack]
            if not found:
                raise ConfigError(f"sweep.attack: no attack labelled {self.attack!r} "
                                  f"(attacks: {', '.join(a.key for a in attacks)})")
            base = found[0]
        else:
            tunable = [a for a in attacks if isinstance(a, AttackConfig)]
            harmful = [a for a in tunable if a.kind == "harmful"]
            if not (harmful or tunable):
                raise ConfigError("sweep: the recipe has no fine-tuning attack to sweep around")
            base = (harmful or tunable)[0]
        if not isinstance(base, AttackConfig):
            raise ConfigError(f"sweep.attack: {base.key!r} is a {base.name!r} attack; the sweep varies a fine-tuning "
                              "(finetune) attack's optimizer and data settings")
        return base

    def utility_attack(self, base: AttackConfig) -> AttackConfig | None:
        """The base attack set up to measure utility (None when it cannot)."""
        if base.uses_task:
            return base
        if self.utility_task:
            return dataclasses.replace(base, task=self.utility_task, measure_fa=True, n_task_eval=self.n_utility_eval,
                                       task_source=self.utility_source,
                                       task_max_new_tokens=self.utility_max_new_tokens)
        return None

    def trial_attack(self, base: AttackConfig, params: dict[str, Any]) -> AttackConfig:
        """The base attack with one trial's values."""
        over = {k: params[k] for k in ("learning_rate", "batch_size", "max_steps", "epochs") if k in params}
        if "epochs" in params:
            over["max_steps"] = 0
        atk = self.utility_attack(base) or base
        return dataclasses.replace(atk, label=f"sweep-{trial_key(params)}", train=dataclasses.replace(atk.train, **over),
                                   n=params.get("n", atk.n), full_finetune=params.get("full_finetune",
                                                                                      atk.full_finetune))


def lm_utility(block: dict[str, Any] | None, task: str, metric: str = "") -> dict[str, Any] | None:
    """One task · metric of an `lm_eval` result block (metrics/lmeval.evaluate_utility) as the sweep's utility
    record: the value in % with its n and Wilson 95 % interval (k = value · n, lm-eval's mean of 0/1 scores), and
    what it is (`measure`, `task`, `metric`, `stand_in`). None when the block lacks the task or skipped it."""
    r = (block or {}).get(task)
    if not r or "skipped" in r:
        return None
    metrics = r["metrics"]
    name = metric or next((m for m in metrics if m == "acc"), None) or next(
        (m for m in metrics if m.split(",")[0] == "exact_match"), "")
    if name not in metrics:
        raise ResourceError(f"sweep.utility_metric: lm-eval task {task!r} has no metric {name or 'acc/exact_match'!r}"
                            f" (it has {', '.join(metrics)})")
    m = metrics[name]
    iv = m.get("interval")
    rec = (wilson(int(iv["k"]), int(iv["n"])).to_dict() if iv and iv.get("k") is not None
           else {"value": 100.0 * m["value"], "n": m["n"], "method": "none"})
    return {**rec, "measure": "lm_eval", "task": task, "metric": name,
            "stand_in": r["task"] if r.get("stand_in_for") else None}


def fa_utility(m: dict[str, Any]) -> dict[str, Any] | None:
    """A stage's FA (%, on its benign task) as the sweep's utility record, with its n and Wilson interval."""
    if m.get("fa") is None:
        return None
    iv = m.get("fa_interval") or {"value": m["fa"], "n": m.get("fa_n") or 0, "method": "none"}
    return {**iv, "measure": "fa", "task": m.get("task"), "metric": "FA"}


def summary(m: dict[str, Any], cfg: HFTSweepConfig | None = None) -> dict[str, Any]:
    """What the sweep keeps of one attack stage: HS(IO) with its counts, FA, training length, and the utility the
    sweep gates on (`utility`: the lm-eval metric when `cfg.lm_eval` names a task, else FA) with n and interval."""
    iv = (m.get("intervals") or {}).get("hs_io") or {}
    n = int(m.get("n") or 0)
    k = iv.get("k") if iv.get("k") is not None else int(round(float(m["hs_io"]) * n / 100))
    lm = cfg is not None and cfg.lm_eval.enabled
    util = lm_utility(m.get("lm_eval"), cfg.lm_eval.tasks[0], cfg.utility_metric) if lm else fa_utility(m)
    return {"hs_io": m["hs_io"], "k": int(k), "n": n, "fa": m.get("fa"), "fa_n": m.get("fa_n"), "utility": util,
            "steps": (m.get("train") or {}).get("steps")}


def _drop_checkpoints(folder: Path) -> None:
    """A finished trial is cached as a stage; its Trainer checkpoints (a full model each for full fine-tuning)
    are only a resume point, so they are removed — by the main process only, which owns the run's files."""
    if not is_main_process():
        return
    for ckpt in folder.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)


def aligned_fa(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path,
               atk: AttackConfig, data: "HarmfulData") -> dict[str, Any]:
    """FA of the aligned (not yet attacked) model on the sweep's utility task, cached and versioned by the aligned
    model's inputs and the utility attack's task settings (a grown grid never keeps a stale FA)."""

    def do() -> dict[str, Any]:
        base, tok = exp._base()
        model = load_adapter(base, adapter, trainable=False)
        util = ATTACKS.build(atk.name, atk).utility_task(exp.cfg.seed)
        fa, samples = exp.evaluator((model, tok)).task_accuracy(model, util.task, util.examples, util.max_new_tokens)
        save_samples(run, f"samples-fa-{spec.key}-aligned", samples)
        return {"fa": fa, "task": atk.task, **fa_fields(samples)}

    return run.cached(f"sweep-{spec.key}-aligned-fa", do, inputs=exp.stage_inputs(spec, data, atk=atk))


def aligned_lm_utility(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path,
                       cfg: HFTSweepConfig, data: "HarmfulData") -> dict[str, Any]:
    """The sweep's lm-eval utility of the aligned (not yet attacked) model, cached once per defense as
    `sweep-<defense>-aligned-u<hash>`: {"lm_eval": block}."""

    def do() -> dict[str, Any]:
        base, tok = exp._base()
        model = load_adapter(base, adapter, trainable=False)
        return {"lm_eval": evaluate_utility(model, tok, cfg.lm_eval)}

    inputs = {**exp.stage_inputs(spec, data, evaluation=True), "lm_eval": to_dict(cfg.lm_eval)}
    return run.cached(f"sweep-{spec.key}-aligned-u{cfg.utility_tag()}", do, inputs=inputs)


def aligned_utility(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path, cfg: HFTSweepConfig,
                    util: AttackConfig | None, data: "HarmfulData") -> dict[str, Any] | None:
    """The aligned model's utility record in the sweep's measure (lm-eval metric or FA, %), or None without one."""
    if cfg.lm_eval.enabled:
        return lm_utility(aligned_lm_utility(exp, run, spec, adapter, cfg, data)["lm_eval"], cfg.lm_eval.tasks[0],
                          cfg.utility_metric)
    return fa_utility(aligned_fa(exp, run, spec, adapter, util, data)) if util is not None else None


def trial_experiment(exp: "HFTExperiment") -> "HFTExperiment":
    """The experiment that runs the trials: the same stages without a mid-attack trajectory (one generation pass
    per trial, not one per measured step)."""
    trial_exp = type(exp)(dataclasses.replace(exp.cfg, eval=dataclasses.replace(exp.cfg.eval, eval_steps=[])))
    trial_exp.judge = exp.judge
    return trial_exp


def utility_label(rec: dict[str, Any] | None, cfg: HFTSweepConfig) -> str:
    """How the report names the sweep's utility: "FA", or "<task> <metric>" (with "→stand-in" offline)."""
    if not cfg.lm_eval.enabled:
        return "FA"
    task = cfg.lm_eval.tasks[0]
    if rec is None:
        return f"{task} {cfg.utility_metric or 'acc'}"
    return f"{task}{'→' + rec['stand_in'] if rec.get('stand_in') else ''} {rec['metric']}"


def run_sweep(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path, data: "HarmfulData",
              fixed: dict[str, Any]) -> dict[str, Any]:
    """Sweep the attacker against one defense's aligned adapter; `fixed` = that defense's fixed-attack results
    (by label). Returns the JSON block stored as the row's "sweep"."""
    cfg: HFTSweepConfig = exp.cfg.sweep
    base = cfg.base_attack(exp.cfg.attacks)
    lm = cfg.lm_eval.enabled
    utility_key = "utility" if lm else "fa"
    out: dict[str, Any] = {"attack": base.key, "method": cfg.method, "space": cfg.space.dims(),
                           "fixed": summary(fixed[base.key], cfg) if base.key in fixed else None, "skipped": None,
                           "utility_measure": {"measure": "lm_eval" if lm else "fa", "key": utility_key,
                                               "label": utility_label(None, cfg)}}
    util = cfg.utility_attack(base)
    reference = None
    if cfg.skip_if_aligned_fa_below > 0 or cfg.max_utility_drop is not None:
        reference = aligned_utility(exp, run, spec, adapter, cfg, util, data)
        if reference is None:
            raise ResourceError(f"sweep: the aligned {spec.key} model has no {utility_label(None, cfg)} (lm-eval "
                                "skipped the task?); the skip rule / max_utility_drop need it")
        out["aligned_utility"] = reference
        out["utility_measure"]["label"] = label = utility_label(reference, cfg)
        if not lm:
            out["aligned_fa"] = reference["value"]
        if reference["value"] < cfg.skip_if_aligned_fa_below:
            out["skipped"] = f"aligned {label} {reference['value']:.1f} % < {cfg.skip_if_aligned_fa_below:g} %"
            return out
    trial_exp = trial_experiment(exp)

    def trial_utility(model: Any, tok: Any) -> dict[str, Any]:
        """The sweep's lm-eval utility, measured by the trial's stage on its attacked model (the one place that
        sees it)."""
        return evaluate_utility(model, tok, cfg.lm_eval)

    def trial(params: dict[str, Any], key: str) -> dict[str, Any]:
        fresh = not run.has_stage(key)
        m = trial_exp.attack(run, spec, adapter, cfg.trial_attack(base, params), data, key=key,
                             utility=trial_utility if lm else None)
        if fresh:
            _drop_checkpoints(run.path / "checkpoints" / key)
        return summary(m, cfg)

    prefix = f"sweep-{spec.key}" + (f"-u{cfg.utility_tag()}" if lm else "")
    out["trials"] = run_staged_trials(cfg.space.dims(), cfg, exp.cfg.seed, prefix, trial, HFT_VIEW)
    first = next((t["utility"] for t in out["trials"] if t.get("utility")), None)
    if lm and first is not None:
        out["utility_measure"]["label"] = utility_label(first, cfg)
    out["aggregate"] = aggregate_trials(out["trials"], cfg, HFT_VIEW, utility_key=utility_key,
                                        reference_utility=reference["value"] if reference else None,
                                        max_utility_drop=cfg.max_utility_drop)
    return out
