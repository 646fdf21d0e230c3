"""Attacker sweeps for the harmful-fine-tuning experiments (`sweep:` recipe section of `hft` / `ctrap` /
`ctrap_table`): after the fixed attacks, each defense's aligned adapter is attacked once per trial — the fixed
attack with the trial's learning rate, steps or epochs, batch size, LoRA vs full fine-tuning and data size — and
the trials are aggregated per defense (tamperlab.sweep.aggregate). Each trial is the experiment's own attack stage
(`HFTExperiment.attack`) cached under `sweep-<defense>-<trial hash>`, so a killed sweep resumes trial by trial.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Sequence

from ..attacks.base import AttackSpec
from ..attacks.finetune import AttackConfig
from ..config import PosFloat, PosInt, Satisfies
from ..distributed import is_main_process
from ..errors import ConfigError
from ..models import load_adapter
from ..registry import ATTACKS
from ..report.render import Report
from ..runs import RunDir
from ..sweep import SweepSettings, TrialScore, trial_key
from .hft_eval import fa_fields, save_samples
from .sweep_stages import SweepView, aggregate_trials, run_staged_trials
from .sweep_stages import sweep_rows as stage_rows
from .sweep_stages import sweep_section as stage_section

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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and not self.space.dims():
            raise ConfigError("sweep.space: no dimension has values; list at least one (e.g. learning_rate); with "
                              "--set, give sweep.space.* before sweep.enabled=true (each --set is validated)")

    def validate(self, attacks: Sequence[AttackSpec]) -> None:
        """Cross-section checks against the recipe's attacks (at load time, before any compute)."""
        if not self.enabled:
            return
        base = self.base_attack(attacks)
        if self.skip_if_aligned_fa_below > 0 and self.utility_attack(base) is None:
            raise ConfigError("sweep.skip_if_aligned_fa_below needs a utility measure: set sweep.utility_task "
                              f"(the base attack {base.key!r} has no benign task)")

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


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """What the sweep keeps of one attack stage: HS(IO) with its counts, FA, training length."""
    iv = (m.get("intervals") or {}).get("hs_io") or {}
    n = int(m.get("n") or 0)
    k = iv.get("k") if iv.get("k") is not None else int(round(float(m["hs_io"]) * n / 100))
    return {"hs_io": m["hs_io"], "k": int(k), "n": n, "fa": m.get("fa"), "fa_n": m.get("fa_n"),
            "steps": (m.get("train") or {}).get("steps")}


def _drop_checkpoints(folder: Path) -> None:
    """A finished trial is cached as a stage; its Trainer checkpoints (a full model each for full fine-tuning)
    are only a resume point, so they are removed — by the main process only, which owns the run's files."""
    if not is_main_process():
        return
    for ckpt in folder.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)


def aligned_fa(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path,
               atk: AttackConfig) -> dict[str, Any]:
    """FA of the aligned (not yet attacked) model on the sweep's utility task, cached."""

    def do() -> dict[str, Any]:
        base, tok = exp._base()
        model = load_adapter(base, adapter, trainable=False)
        util = ATTACKS.build(atk.name, atk).utility_task(exp.cfg.seed)
        fa, samples = exp.evaluator((model, tok)).task_accuracy(model, util.task, util.examples, util.max_new_tokens)
        save_samples(run, f"samples-fa-{spec.key}-aligned", samples)
        return {"fa": fa, "task": atk.task, **fa_fields(samples)}

    return run.cached(f"sweep-{spec.key}-aligned-fa", do)


def run_sweep(exp: "HFTExperiment", run: RunDir, spec: "DefenseSpec", adapter: Path, data: "HarmfulData",
              fixed: dict[str, Any]) -> dict[str, Any]:
    """Sweep the attacker against one defense's aligned adapter; `fixed` = that defense's fixed-attack results
    (by label). Returns the JSON block stored as the row's "sweep"."""
    cfg: HFTSweepConfig = exp.cfg.sweep
    base = cfg.base_attack(exp.cfg.attacks)
    out: dict[str, Any] = {"attack": base.key, "method": cfg.method, "space": cfg.space.dims(),
                           "fixed": summary(fixed[base.key]) if base.key in fixed else None, "skipped": None}
    util = cfg.utility_attack(base)
    if cfg.skip_if_aligned_fa_below > 0 and util is not None:
        fa = aligned_fa(exp, run, spec, adapter, util)["fa"]
        out["aligned_fa"] = fa
        if fa < cfg.skip_if_aligned_fa_below:
            out["skipped"] = f"aligned FA {fa:.1f} % < {cfg.skip_if_aligned_fa_below:g} %"
            return out
    # Trials record no mid-attack trajectory (one generation pass per trial, not one per measured step).
    trial_exp = type(exp)(dataclasses.replace(exp.cfg, eval=dataclasses.replace(exp.cfg.eval, eval_steps=[])))
    trial_exp.judge = exp.judge

    def trial(params: dict[str, Any], key: str) -> dict[str, Any]:
        fresh = not run.has_stage(key)
        m = trial_exp.attack(run, spec, adapter, cfg.trial_attack(base, params), data, key=key)
        if fresh:
            _drop_checkpoints(run.path / "checkpoints" / key)
        return summary(m)

    out["trials"] = run_staged_trials(cfg.space.dims(), cfg, exp.cfg.seed, f"sweep-{spec.key}", trial, VIEW)
    out["aggregate"] = aggregate_trials(out["trials"], cfg, VIEW)
    return out


# -- report ------------------------------------------------------------------------------------------------------
VIEW = SweepView(score=lambda t: TrialScore("", t["k"], t["n"], t.get("fa")), objective=lambda t: t["hs_io"])
"""Harmful fine-tuning: the attacker maximises HS(IO) (%), keeping FA (%)."""


def sweep_rows(sweeps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per defense: the fixed attack's HS(IO) next to the sweep's worst case, mean of the top n and
    worst case keeping utility (each value [Wilson 95 %])."""
    return stage_rows(sweeps, VIEW)


def sweep_section(rep: Report, sweeps: dict[str, dict[str, Any]], plots: Path) -> None:
    """The sweep's table and best-attack-so-far plot, appended to a harmful-fine-tuning report."""
    stage_section(rep, sweeps, plots, VIEW)
