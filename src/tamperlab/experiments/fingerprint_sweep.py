"""Attacker sweep of fingerprint removal (`sweep:` section of a `fingerprints` recipe): one removal of the recipe —
incremental fine-tuning or MEraser (erase / recover, transfer) — re-run on every fingerprinted model with the
trial's learning rate and epochs. The attacker wants verification to fail: it *minimises* the fingerprint success
rate (FSR) while keeping utility (the experiment's multiple-choice accuracy, fingerprints/utility.py).

Aggregated per fingerprint (tamperlab.sweep.aggregate, minimising): the owner's worst case (lowest FSR, Wilson
interval over its triggers), the mean of the n lowest, the lowest among trials that keep accuracy ≥ a threshold.
Each trial is the experiment's own removal stage (`FingerprintExperiment.apply_removal`) cached under
`sweep-<fingerprint>-<trial hash>`, so a killed sweep resumes trial by trial.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

from ..config import Fraction, PosFloat
from ..errors import ConfigError
from ..fingerprints.base import deep_merge
from ..report.sweep import FSR_VIEW
from ..runs import RunDir
from ..sweep import SweepSettings
from .sweep_stages import aggregate_trials, run_staged_trials

if TYPE_CHECKING:  # pragma: no cover
    from ..fingerprints.base import Fingerprint, FingerprintSet
    from ..fingerprints.cleandata import CleanData
    from .fingerprints import FingerprintExperiment, RemovalSpec

OFFICIAL = "official"


@dataclass
class RemovalSpace:
    """Values each remover hyper-parameter takes in the sweep; an empty list keeps the removal's own value."""

    learning_rate: list[PosFloat] = field(default_factory=list)
    """Learning rates (MEraser: of the phases in `sweep.phases`; fine-tuning: its optimizer's)."""
    epochs: list[PosFloat] = field(default_factory=list)
    """Epochs over the removal's data (sets the phase's / fine-tune's max_steps to 0 so epochs count)."""

    def dims(self) -> dict[str, list[Any]]:
        """The swept dimensions, in declaration order."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass
class FingerprintSweepConfig(SweepSettings):
    """Attacker sweep of a fingerprint removal (see tamperlab.sweep.SweepSettings for search / aggregation)."""

    removal: str = ""
    """Label of the `removals` entry the sweep varies (default: the first that trains: meraser,
    meraser_transfer or finetune). Its own result is the "fixed attack" the sweep is compared with."""
    space: RemovalSpace = field(default_factory=RemovalSpace)
    """Values of each swept hyper-parameter."""
    phases: list[Literal["erase", "recover"]] = field(default_factory=lambda: ["erase"])
    """MEraser only: the phases whose learning rate / epochs a trial sets (erase = the phase that removes the
    fingerprint; recover restores utility)."""
    stage: str = ""
    """Removal stage whose FSR is the attacker's score (MEraser: erase | recover; transfer: transfer |
    transfer_recover; fine-tuning: after). "" = the removal's last stage (what the thief ships)."""
    variant: str = OFFICIAL
    """FSR definition scored (official = each method's own; see the report's FSR variants)."""
    utility_threshold: Fraction = 0.0
    """Multiple-choice accuracy (fraction, 0–1) a trial must keep to count for "worst case keeping utility"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and not self.space.dims():
            raise ConfigError("sweep.space: no dimension has values; list learning_rate and/or epochs (with --set, "
                              "give sweep.space.* before sweep.enabled=true)")
        if self.skip_if_aligned_fa_below:
            raise ConfigError("sweep.skip_if_aligned_fa_below: not used by fingerprint sweeps (there is no aligned "
                              "model); use sweep.utility_threshold")

    def validate(self, removals: Sequence["RemovalSpec"], fingerprints: Sequence[Any] = ()) -> None:
        """Cross-section checks against the recipe's removals and fingerprints (at load time, before any compute)."""
        if not self.enabled:
            return
        # The scored FSR variant must exist for every fingerprint (was: a KeyError after every trial had trained).
        variants = {f.name: type(f.build()).fsr_variants for f in fingerprints}
        missing = {name: v for name, v in variants.items() if self.variant not in v}
        if missing:
            have = "; ".join(f"{name}: {', '.join(v)}" for name, v in variants.items())
            raise ConfigError(f"sweep.variant: {self.variant!r} is not an FSR variant of "
                              f"{', '.join(missing)} ({have})")
        spec = self.base_removal(removals)
        cfg = spec.build().cfg
        if not hasattr(cfg, "erase") and self.phases != ["erase"]:
            raise ConfigError(f"sweep.phases: only MEraser removals have phases ({spec.key!r} is {spec.name})")
        stages = removal_stages(spec.name, cfg)
        if self.stage and self.stage not in stages:
            raise ConfigError(f"sweep.stage: {spec.key!r} ({spec.name}) yields {', '.join(stages)}, not "
                              f"{self.stage!r}")

    def base_removal(self, removals: Sequence["RemovalSpec"]) -> "RemovalSpec":
        trainable = [r for r in removals if _kind(r) is not None]
        if self.removal:
            match = [r for r in removals if r.key == self.removal]
            if not match:
                raise ConfigError(f"sweep.removal: no removal labelled {self.removal!r} "
                                  f"(removals: {', '.join(r.key for r in removals)})")
            if _kind(match[0]) is None:
                raise ConfigError(f"sweep.removal: {self.removal!r} ({match[0].name}) has no learning rate or "
                                  "epochs to sweep; sweep finetune, meraser or meraser_transfer")
            return match[0]
        if not trainable:
            raise ConfigError("sweep: the recipe has no removal with a learning rate to sweep (finetune, meraser, "
                              "meraser_transfer)")
        return trainable[0]

    def trial_params(self, spec: "RemovalSpec", params: dict[str, Any]) -> dict[str, Any]:
        """The removal's params with one trial's learning rate / epochs written where that removal reads them."""
        train: dict[str, Any] = {}
        if "learning_rate" in params:
            train["learning_rate"] = params["learning_rate"]
        if "epochs" in params:
            train["max_steps"] = 0  # max_steps > 0 would override the epochs
        if _kind(spec) == "phases":
            over: dict[str, Any] = {}
            for ph in self.phases:
                over[ph] = {"train": dict(train), **({"epochs": params["epochs"]} if "epochs" in params else {})}
        else:
            over = {"train": {**train, **({"epochs": params["epochs"]} if "epochs" in params else {})}}
        return deep_merge(spec.params, over)


def removal_stages(name: str, cfg: Any) -> list[str]:
    """The stages a sweepable removal yields, in order (MEraser.apply, MEraserTransfer.apply, fine-tuning)."""
    recover = bool(getattr(cfg, "do_recover", False))
    if name == "meraser_transfer":
        return ["transfer"] + (["transfer_recover"] if recover else [])
    if hasattr(cfg, "erase"):
        return ["erase"] + (["recover"] if recover else [])
    return ["after"]


def _kind(spec: "RemovalSpec") -> str | None:
    """phases = MEraser-like (erase / recover phases), train = one fine-tuning TrainConfig, None = nothing to
    sweep."""
    cfg = spec.build().cfg
    if hasattr(cfg, "erase"):
        return "phases"
    if hasattr(cfg, "train"):
        return "train"
    return None


def summary(entry: dict[str, Any], stage: str, variant: str) -> dict[str, Any]:
    """What the sweep keeps of one removal's result: the scored stage's FSR (hits / triggers) and utility, and
    every stage's FSR / accuracy / PPL."""
    stages = entry["stages"]
    name = stage or list(stages)[-1]
    if name not in stages:
        raise ConfigError(f"sweep.stage: the removal has no stage {name!r} (stages: {', '.join(stages)})")

    def one(ev: dict[str, Any]) -> dict[str, Any]:
        v = ev["fsr"][variant]
        u = ev.get("utility") or {}
        return {"fsr": v["fsr"], "hits": int(v["hits"]), "n": int(v["n"]), "acc": u.get("acc"),
                "acc_n": u.get("acc_n"), "ppl": u.get("ppl")}

    return {"stage": name, **one(stages[name]), "stages": {k: one(ev) for k, ev in stages.items()},
            "seconds": entry.get("seconds")}


def run_sweep(exp: "FingerprintExperiment", run: RunDir, name: str, fp: "Fingerprint", fps: "FingerprintSet",
              clean: "CleanData", tok: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """Sweep the remover against one fingerprinted model; `row` = that fingerprint's results so far (its fixed
    removals). Returns the JSON block stored as the fingerprint's "sweep" (None when the removal skips it)."""
    from .fingerprints import RemovalSpec

    cfg: FingerprintSweepConfig = exp.cfg.sweep
    spec = cfg.base_removal(exp.cfg.removals)
    if spec.targets and name not in spec.targets:
        return None
    fixed = row["removals"].get(spec.key)
    out: dict[str, Any] = {"attack": spec.key, "method": cfg.method, "space": cfg.space.dims(),
                           "variant": cfg.variant, "phases": list(cfg.phases) if _kind(spec) == "phases" else None,
                           "fixed": summary(fixed, cfg.stage, cfg.variant) if fixed else None, "skipped": None}

    def trial(params: dict[str, Any], key: str) -> dict[str, Any]:
        removal = RemovalSpec(spec.name, spec.label, cfg.trial_params(spec, params)).build()
        work = run.path / "removals" / key

        def compute() -> dict[str, Any]:
            return exp.apply_removal(run, removal, name, fp, fps, clean, tok, work, key)

        # versioned like the fixed removals: the trial's removal on this fingerprinted model, verified and measured
        entry = run.cached(key, compute, inputs=exp.removal_inputs(name, fp, spec.name, removal), outputs=[work])
        return summary(entry, cfg.stage, cfg.variant)

    out["trials"] = run_staged_trials(cfg.space.dims(), cfg, exp.cfg.seed, f"sweep-{name}", trial, FSR_VIEW)
    out["stage"] = out["trials"][0]["stage"] if out["trials"] else cfg.stage
    out["aggregate"] = aggregate_trials(out["trials"], cfg, FSR_VIEW, utility_key="acc")
    return out
