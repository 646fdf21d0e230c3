"""Attacker sweep of the Semantic Perturbation Attack (`sweep:` section of an `eaas` recipe): for every stolen
scenario, SPA's deletion re-run over the fraction of the corpus deleted, the tightness score that ranks the
texts (pca / cos / l2) and the number of perturbations per text — then a copy trained on the purified set,
verified and measured, exactly as the experiment's fixed `after_spa` copy. The attacker wants verification to
fail: it *minimises* the watermark evidence Δ (Δcos; SAW: Δ proj_u) of its copy while keeping the copy's
downstream accuracy.

No trial queries the service again: the stolen embeddings and the perturbed queries are the run's cached arrays
(`n_suffixes` below the recipe's uses the first j of each text's searched suffixes, which is what a search for j
returns — the search keeps the least similar first). Each trial is cached as the stage `sweep-<scenario>-<trial
hash>`, so a killed sweep resumes trial by trial.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..config import Fraction, PosInt
from ..distributed import is_main_process
from ..errors import ConfigError
from ..report.sweep import SPA_VIEW
from ..runs import RunDir
from ..stats import bits
from ..sweep import SweepSettings
from .sweep_stages import aggregate_trials, run_staged_trials

if TYPE_CHECKING:  # pragma: no cover
    from ..eaas.spa import SPAConfig
    from .eaas import EaaSConfig, ScenarioConfig


@dataclass
class SPASpace:
    """Values each SPA knob takes in the sweep; an empty list keeps the recipe's `spa` value."""

    remove_fraction: list[Fraction] = field(default_factory=list)
    """Fractions of the stolen corpus deleted, lowest scores first (sets spa.removal = fraction; the official
    stealing script deletes 1478 / 5000 = 0.296)."""
    score: list[Literal["pca", "cos", "l2"]] = field(default_factory=list)
    """Tightness score that ranks the texts for deletion (the paper compares all three; official: pca)."""
    n_suffixes: list[PosInt] = field(default_factory=list)
    """Perturbations per text scored (≤ spa.n_suffixes: the queries the run already made)."""

    def dims(self) -> dict[str, list[Any]]:
        """The swept dimensions, in declaration order."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass
class EaaSSweepConfig(SweepSettings):
    """Attacker sweep of SPA (see tamperlab.sweep.SweepSettings for search / aggregation)."""

    scenarios: list[str] = field(default_factory=list)
    """Scenarios swept (default: every scenario with `steal: true`)."""
    space: SPASpace = field(default_factory=SPASpace)
    """Values of each swept SPA knob."""
    utility_threshold: Fraction = 0.0
    """Downstream accuracy (fraction, main task) the copy must keep to count for "worst case keeping utility"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and not self.space.dims():
            raise ConfigError("sweep.space: no dimension has values; list remove_fraction, score and/or n_suffixes "
                              "(with --set, give sweep.space.* before sweep.enabled=true)")
        if self.skip_if_aligned_fa_below:
            raise ConfigError("sweep.skip_if_aligned_fa_below: not used by SPA sweeps (there is no aligned model); "
                              "use sweep.utility_threshold")

    def validate(self, scenarios: Sequence["ScenarioConfig"], spa: "SPAConfig") -> None:
        """Cross-section checks against the recipe's scenarios and SPA (at load time, before any compute)."""
        if not self.enabled:
            return
        names = {s.name: s for s in scenarios}
        for name in self.scenarios:
            if name not in names:
                raise ConfigError(f"sweep.scenarios: no scenario named {name!r} (scenarios: {', '.join(names)})")
            if not names[name].steal:
                raise ConfigError(f"sweep.scenarios: {name!r} has steal: false; a trial trains and verifies a copy")
        if not self.targets(scenarios):
            raise ConfigError("sweep: no scenario steals a copy (steal: true) to sweep SPA against")
        too_many = [k for k in self.space.n_suffixes if k > spa.n_suffixes]
        if too_many:
            raise ConfigError(f"sweep.space.n_suffixes: {too_many} > spa.n_suffixes={spa.n_suffixes} (a trial "
                              "scores the perturbed queries the run made)")

    def targets(self, scenarios: Sequence["ScenarioConfig"]) -> list[str]:
        return list(self.scenarios) or [s.name for s in scenarios if s.steal]

    def trial_spa(self, spa: "SPAConfig", params: dict[str, Any]) -> "SPAConfig":
        """The recipe's SPA with one trial's values."""
        over = {k: params[k] for k in ("score", "n_suffixes") if k in params}
        if "remove_fraction" in params:
            over.update(removal="fraction", remove_fraction=params["remove_fraction"])
        return dataclasses.replace(spa, **over)


@dataclass
class SPAInputs:
    """What a trial needs from the run, all of it already computed (cached arrays) by the fixed pipeline."""

    texts: list[str]
    """The stolen corpus."""
    stolen: np.ndarray
    """(N, d) the API's embeddings of the corpus."""
    perturbed: np.ndarray
    """(N, K, d) the API's embeddings of each text with its K searched suffixes."""
    counts: np.ndarray
    """Trigger words per text (ground truth of the detection rates)."""
    watermark: Any
    """The scenario's watermark (its verify is the provider's check)."""
    utility_sets: dict[str, tuple[list[str], np.ndarray, list[str], np.ndarray]]
    """Task → (train texts, labels, test texts, labels); the first is the main task."""


def copy_after_spa(inputs: SPAInputs, spa: "SPAConfig", cfg: "EaaSConfig", folder: Path) -> dict[str, Any]:
    """SPA's deletion under `spa`, a copy trained on the purified set, verified and measured — the experiment's
    `after_spa` copy, computed from the run's arrays."""
    from ..eaas import spa as S
    from ..eaas.downstream import classify_correct
    from ..eaas.stealer import copier_encode, load_copier, train_copier

    scores = S.tightness_scores(inputs.stolen, inputs.perturbed[:, :spa.n_suffixes], spa.pca_components)
    deleted, thr = S.select_for_deletion(scores, spa)
    det = S.detection_report(scores, inputs.counts, deleted)
    keep = ~deleted
    texts = [t for t, k in zip(inputs.texts, keep) if k]
    train_copier(texts, inputs.stolen[keep], cfg.stealer, folder, cfg.seed)
    model = load_copier(folder)
    ver = inputs.watermark.verify(lambda t: copier_encode(model, t), cfg.verify.size, cfg.verify.seed,
                                  cfg.verify.alpha, cfg.verify.target_source)
    utility = {}
    for task, (tr, y_tr, te, y_te) in inputs.utility_sets.items():
        ok = classify_correct(copier_encode(model, tr), np.asarray(y_tr), copier_encode(model, te), np.asarray(y_te),
                              cfg.downstream, cfg.seed)
        utility[task] = {"acc": float(ok.mean()), "correct": bits(ok)}
    return {"spa": {k: det[k] for k in ("tpr", "fpr", "n_deleted", "n_triggered", "n", "precision")},
            "threshold": thr, "spa_intervals": S.spa_records(inputs.counts, deleted, inputs.texts)["intervals"],
            "n_train": len(texts), "verify": ver, "utility": utility}


def summary(verify: dict[str, Any], utility: dict[str, Any], spa: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the sweep keeps of one copy: its watermark evidence (Δ with the per-sentence values, p, detected),
    the main task's accuracy, and the deletion's TPR / FPR."""
    main = next(iter(utility))
    acc = utility[main]
    acc = acc["acc"] if isinstance(acc, dict) else acc
    out = {"delta": verify["delta"], "p_value": verify["p_value"], "detected": verify["detected"],
           "delta_interval": verify.get("delta_interval"), "scores_backdoor": verify["scores_backdoor"],
           "scores_benign": verify["scores_benign"], "acc": acc, "task": main}
    if spa:
        out.update({k: spa.get(k) for k in ("tpr", "fpr", "n_deleted")})
    return out


def run_sweep(run: RunDir, cfg: "EaaSConfig", scenario: str, inputs: SPAInputs, res: dict[str, Any],
              trial_inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sweep SPA against one stolen scenario; `res` = the scenario's fixed results (its after-SPA copy is the
    fixed attack); `trial_inputs` = what every trial depends on besides its SPA settings (its stage is versioned by
    both). Returns the JSON block stored as the scenario's "sweep"."""
    sw: EaaSSweepConfig = cfg.sweep
    fixed = None
    if res.get("verify_copy_after_spa") and res.get("utility_copy_after_spa"):
        fixed = summary(res["verify_copy_after_spa"], res["utility_copy_after_spa"], res.get("spa"))
    base = {"score": cfg.spa.score, "n_suffixes": cfg.spa.n_suffixes, "removal": cfg.spa.removal}
    out: dict[str, Any] = {"attack": "SPA (" + ", ".join(f"{k}={v}" for k, v in base.items()) + ")",
                           "method": sw.method, "space": sw.space.dims(), "fixed": fixed, "skipped": None}

    def trial(params: dict[str, Any], key: str) -> dict[str, Any]:
        folder = run.sub("copies", key)

        def compute() -> dict[str, Any]:
            return {"params": params, **copy_after_spa(inputs, sw.trial_spa(cfg.spa, params), cfg, folder)}

        spa = dataclasses.asdict(sw.trial_spa(cfg.spa, params))
        r = run.cached(key, compute, inputs={**(trial_inputs or {}), "spa": spa}, outputs=[folder])
        if is_main_process():  # the stage holds the result; the copy model is only its resume point
            shutil.rmtree(folder, ignore_errors=True)
        return {**summary(r["verify"], r["utility"], r["spa"]), "threshold": r.get("threshold")}

    out["trials"] = run_staged_trials(sw.space.dims(), sw, cfg.seed, f"sweep-{scenario}", trial, SPA_VIEW)
    out["aggregate"] = aggregate_trials(out["trials"], sw, SPA_VIEW, utility_key="acc")
    return out
