"""The fingerprint experiment: embed each fingerprint into its own copy of the base model → verify (FSR) →
remove it with MEraser (erase, recover), the transferable erase LoRA, and the baseline removals → verify and
measure utility (PPL, accuracy) after every stage → one table and plots.

Stages are cached in the run directory (`--resume`): pair sets, fingerprinted models (safetensors under
`models/`), erase/recover adapters, donor models and every evaluation; a killed training stage resumes from its
last Trainer checkpoint. Every stage is versioned by its inputs (the recipe sections it reads and the inputs of the
model it starts from), so `--resume` with a changed recipe recomputes only the stages downstream of the change —
changed MEraser parameters re-run that removal, not the embedding — and deletes the files the old inputs wrote
(fingerprinted model, adapters; a changed base model or clean data also clears `shared/`: donors, transfer LoRAs).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fingerprints.base import Fingerprint, FingerprintSet
from ..fingerprints.cleandata import CleanData, CleanDataConfig, load_clean_data
from ..fingerprints.removal import Removal, RemovalContext
from ..fingerprints.utility import UtilityConfig, evaluate_utility
from ..config import to_dict
from ..models import ModelConfig, load_model, save_model
from ..registry import EXPERIMENTS, FINGERPRINTS, REMOVALS
from ..runs import RunDir
from ..stats import rate_record
from .base import Experiment, RunConfig, seed_everything
from .fingerprint_sweep import FingerprintSweepConfig

log = logging.getLogger("tamperlab")


@dataclass
class FingerprintSpec:
    """One fingerprint method to embed."""

    name: str = "instructional"
    """Registered fingerprint (tamperlab list fingerprints)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Method settings (validated against its config; defaults are the published ones)."""

    def build(self) -> Fingerprint:
        return FINGERPRINTS.build(self.name, self.params, f"fingerprints[{self.name}].params")


@dataclass
class RemovalSpec:
    """One removal attack."""

    name: str = "meraser"
    """Registered removal (tamperlab list removals)."""
    label: str = ""
    """Row label (default: name); lets one recipe compare variants of a removal."""
    params: dict[str, Any] = field(default_factory=dict)
    """Removal settings (validated against its config)."""
    targets: list[str] = field(default_factory=list)
    """Fingerprints it is applied to (default: all)."""

    def build(self) -> Removal:
        return REMOVALS.build(self.name, self.params, f"removals[{self.key}].params")

    @property
    def key(self) -> str:
        return self.label or self.name


def _default_removals() -> list[RemovalSpec]:
    return [RemovalSpec("meraser"), RemovalSpec("meraser_transfer"), RemovalSpec("finetune"),
            RemovalSpec("prune_magnitude"), RemovalSpec("merge_task_arithmetic"), RemovalSpec("token_forcing")]


@dataclass
class FingerprintExperimentConfig(RunConfig):
    """Fingerprints × removals on one base model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The clean base model (each fingerprint is planted into its own copy)."""
    fingerprints: list[FingerprintSpec] = field(default_factory=lambda: [
        FingerprintSpec("instructional"), FingerprintSpec("utf"), FingerprintSpec("hashchain")])
    """Fingerprint methods to embed."""
    removals: list[RemovalSpec] = field(default_factory=_default_removals)
    """Removal attacks applied to every fingerprinted model (or to `targets`)."""
    clean_data: CleanDataConfig = field(default_factory=CleanDataConfig)
    """Clean instruction data (regularisation, MEraser recover/mismatched, fine-tuning, held-out PPL)."""
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    """Perplexity / accuracy settings."""
    evaluate_base: bool = True
    """Also verify every fingerprint and measure utility on the clean base model (FSR should be ~0)."""
    monitor_every: int = 0
    """Measure FSR every N optimizer steps inside MEraser's training phases (0 = only after each phase)."""
    sweep: FingerprintSweepConfig = field(default_factory=FingerprintSweepConfig)
    """Attacker sweep: one removal re-run over a grid / TPE search of its learning rate and epochs, per
    fingerprint (off by default)."""

    def __post_init__(self) -> None:
        if not self.fingerprints:
            raise ConfigError("fingerprints: empty; name at least one method (e.g. [{name: instructional}])")
        names = [f.name for f in self.fingerprints]
        if len(set(names)) != len(names):
            raise ConfigError(f"fingerprints: duplicate methods {names}")
        keys = [r.key for r in self.removals]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"removals: duplicate labels {keys}; give each a distinct `label`")
        for f in self.fingerprints:  # validate early, with the recipe key in the message
            f.build()
        for r in self.removals:
            r.build()
            bad = [t for t in r.targets if t not in names]
            if bad:
                raise ConfigError(f"removals[{r.key}].targets: {bad} are not in fingerprints ({names})")
        self.sweep.validate(self.removals, self.fingerprints)


def _clean_json(d: CleanData) -> dict[str, Any]:
    def split(s: Any) -> dict[str, Any] | None:
        return None if s is None else {"name": s.name, "provenance": s.provenance,
                                       "examples": [e.to_dict() for e in s.examples]}
    return {"train": split(d.train), "heldout": split(d.heldout), "mismatched": split(d.mismatched)}


def _clean_from_json(j: dict[str, Any]) -> CleanData:
    from ..data.core import DataSplit, Example

    def split(v: dict[str, Any] | None) -> Any:
        return None if v is None else DataSplit(v["name"], [Example.from_dict(e) for e in v["examples"]],
                                                v["provenance"])
    return CleanData(split(j["train"]), split(j["heldout"]), split(j.get("mismatched")))


@EXPERIMENTS.register("fingerprints")
class FingerprintExperiment(Experiment):
    """Fingerprints (IF-SFT, UTF, HashChain) → MEraser / transfer / baseline removals → FSR, PPL, accuracy."""

    config_cls = FingerprintExperimentConfig
    cfg: FingerprintExperimentConfig

    versioned_stages = True

    # -- stage inputs (what each cached stage depends on; runs.RunDir.cached) -------------------------------
    def base_inputs(self) -> dict[str, Any]:
        """The base model and the run's seed (every training stage's seed): every stage depends on them."""
        return {"model": to_dict(self.cfg.model), "seed": self.cfg.seed}

    def clean_inputs(self) -> dict[str, Any]:
        """The clean data (offline sources generate responses with the base model)."""
        return {**self.base_inputs(), "clean_data": to_dict(self.cfg.clean_data)}

    @staticmethod
    def fingerprint_inputs(name: str, fp: Fingerprint) -> dict[str, Any]:
        """A fingerprint's resolved settings (defaults included), as verification reads them."""
        return {"name": name, "params": to_dict(fp.cfg)}

    def pairs_inputs(self, name: str, fp: Fingerprint) -> dict[str, Any]:
        """A pair set: the clean data, the tokenizer / model (in the clean inputs) and the method's settings except
        how the pairs are trained and how verification batches."""
        params = {k: v for k, v in to_dict(fp.cfg).items() if k not in ("embed", "verify_batch_size")}
        return {"clean": self.clean_inputs(), "fingerprint": {"name": name, "params": params}}

    def embed_inputs(self, name: str, fp: Fingerprint) -> dict[str, Any]:
        """The fingerprinted model: its pairs and how they are trained in."""
        return {"pairs": self.pairs_inputs(name, fp), "embed": to_dict(fp.cfg.embed)}

    def removal_inputs(self, name: str, fp: Fingerprint, removal_name: str, removal: Removal) -> dict[str, Any]:
        """One removal on one fingerprinted model, every stage verified and measured: the fingerprinted model, the
        removal's resolved settings, verification (the fingerprint's settings) and utility."""
        return {"model": self.embed_inputs(name, fp), "fingerprint": self.fingerprint_inputs(name, fp),
                "removal": {"name": removal_name, "params": to_dict(removal.cfg)}, "utility": to_dict(self.cfg.utility),
                "monitor_every": self.cfg.monitor_every}

    # -- helpers --------------------------------------------------------------------------------------------
    def _base(self) -> tuple[Any, Any]:
        return load_model(self.cfg.model, self.cfg.seed)

    def _model_dir(self, run: RunDir, fp: str) -> Path:
        return run.path / "models" / fp

    def _load_fingerprinted(self, run: RunDir, fp: str) -> Any:
        from dataclasses import replace

        model, _ = load_model(replace(self.cfg.model, name_or_path=str(self._model_dir(run, fp))), self.cfg.seed)
        return model

    def _evaluate(self, model: Any, tok: Any, fp: Fingerprint | None, fps: FingerprintSet | None,
                  clean: CleanData, with_utility: bool = True) -> dict[str, Any]:
        t0 = time.time()
        out: dict[str, Any] = {}
        if fp is not None and fps is not None:
            out["fsr"] = {k: v.to_dict() for k, v in fp.verify(model, tok, fps, control=True).items()}
        if with_utility:
            u = evaluate_utility(model, tok, clean.heldout.examples, self.cfg.utility)
            if u.get("acc") is not None and u.get("acc_n"):  # acc = correct / n exactly: k is recovered exactly
                u["acc_interval"] = rate_record(int(round(u["acc"] * u["acc_n"])), u["acc_n"])
            out["utility"] = u
        out["eval_seconds"] = round(time.time() - t0, 2)
        return out

    # -- stages ---------------------------------------------------------------------------------------------
    def clean_data(self, run: RunDir, base: tuple[Any, Any] | None) -> CleanData:
        def build() -> dict[str, Any]:
            model, tok = base if base is not None else (None, None)
            return _clean_json(load_clean_data(self.cfg.clean_data, model, tok, self.cfg.model.name_or_path))
        # Donors and transfer LoRAs in shared/ are trained from the base model on the clean data, keyed by their own
        # settings only: they go when the clean data's inputs (model, seed, data) change.
        return _clean_from_json(run.cached("clean_data", build, inputs=self.clean_inputs(),
                                           outputs=[run.path / "shared"]))

    def run(self, run: RunDir) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.time()
        timings: dict[str, float] = {}
        base_model, tok = self._base()
        clean = self.clean_data(run, (base_model, tok))
        log.info("clean data: %s", clean.describe())

        methods = {f.name: f.build() for f in cfg.fingerprints}
        sets: dict[str, FingerprintSet] = {}
        for name, fp in methods.items():
            sets[name] = FingerprintSet.from_dict(run.cached(
                f"pairs-{name}", lambda fp=fp: fp.build_pairs(tok, base_model, clean.train.examples).to_dict(),
                inputs=self.pairs_inputs(name, fp)))
            log.info("%s pairs: %s", name, sets[name].counts())

        results: dict[str, Any] = {"base": {}, "fingerprints": {}}
        if cfg.evaluate_base:
            t0 = time.time()
            results["base"]["utility"] = run.cached(
                "eval-base", lambda: self._evaluate(base_model, tok, None, None, clean),
                inputs={"clean": self.clean_inputs(), "utility": to_dict(cfg.utility)})["utility"]
            for name, fp in methods.items():
                results["base"][name] = run.cached(
                    f"eval-base-{name}", lambda fp=fp, name=name: self._evaluate(
                        base_model, tok, fp, sets[name], clean, with_utility=False),
                    # the base model was never trained, so how the pairs are trained in (`embed`) is not an input
                    inputs={"pairs": self.pairs_inputs(name, fp), "fingerprint": {
                        "name": name, "params": {k: v for k, v in to_dict(fp.cfg).items() if k != "embed"}}})
            timings["evaluate_base"] = round(time.time() - t0, 1)
        del base_model
        gc.collect()

        # 1. embed each fingerprint into a fresh copy of the base model
        for name, fp in methods.items():
            t0 = time.time()
            mdir = self._model_dir(run, name)

            def embed(name: str = name, fp: Fingerprint = fp, mdir: Path = mdir) -> dict[str, Any]:
                model, _ = self._base()
                model, stats = fp.embed(model, tok, sets[name], run.path / "train" / name, cfg.seed,
                                        resume=True, log_fn=lambda r, n=name: run.log("train", stage=f"embed-{n}", **r))
                save_model(model, tok, mdir)
                del model
                return stats

            stats = run.cached(f"embed-{name}", embed, inputs=self.embed_inputs(name, fp),
                               outputs=[mdir, run.path / "train" / name])
            ev = run.cached(f"eval-{name}-fingerprinted", lambda name=name, fp=fp: self._evaluate(
                self._load_fingerprinted(run, name), tok, fp, sets[name], clean),
                inputs={"model": self.embed_inputs(name, fp), "fingerprint": self.fingerprint_inputs(name, fp),
                        "utility": to_dict(cfg.utility)})
            results["fingerprints"][name] = {"embed": stats, "fingerprinted": ev, "removals": {}}
            timings[f"embed+eval {name}"] = round(time.time() - t0, 1)
            gc.collect()

        # 2. removals
        for spec in cfg.removals:
            removal = spec.build()
            for name, fp in methods.items():
                if spec.targets and name not in spec.targets:
                    continue
                key = f"removal-{spec.key}-{name}"
                work = run.path / "removals" / spec.key / name
                entry = run.cached(key, lambda spec=spec, removal=removal, name=name, fp=fp, work=work: {
                    "name": spec.name, "params": spec.params, **self.apply_removal(
                        run, removal, name, fp, sets[name], clean, tok, work, key)},
                    inputs=self.removal_inputs(name, fp, spec.name, removal), outputs=[work])
                results["fingerprints"][name]["removals"][spec.key] = entry
                timings[key] = entry["seconds"]

        # 3. attacker sweep of one removal's learning rate / epochs (experiments/fingerprint_sweep.py)
        if cfg.sweep.enabled:
            from .fingerprint_sweep import run_sweep

            t0 = time.time()
            for name, fp in methods.items():
                block = run_sweep(self, run, name, fp, sets[name], clean, tok, results["fingerprints"][name])
                if block is not None:
                    results["fingerprints"][name]["sweep"] = block
            timings["sweep"] = round(time.time() - t0, 1)

        results["wall_seconds_run"] = round(time.time() - t_start, 1)
        metrics = run.save_metrics(results, timings=timings, clean_data=clean.describe(),
                                   references=self._references())
        return metrics

    def apply_removal(self, run: RunDir, removal: Removal, name: str, fp: Fingerprint, fps: FingerprintSet,
                      clean: CleanData, tok: Any, work_dir: Path, key: str) -> dict[str, Any]:
        """One removal on one fingerprinted model: every stage it yields verified (FSR) and measured (utility).
        Starts from the run's seed, so the result does not depend on the removals or sweep trials before it."""
        t0 = time.time()
        seed_everything(self.cfg.seed)
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx = RemovalContext(
            tok=tok, clean=clean, work_dir=work_dir, shared_dir=run.sub("shared"),
            load_base=lambda: self._base()[0], seed=self.cfg.seed, resume=True,
            log_fn=lambda r: run.log("train", stage=key, **r),
            monitor=lambda m: {k: v.fsr for k, v in fp.verify(m, tok, fps, progress=False).items()},
            monitor_every=self.cfg.monitor_every)
        model = self._load_fingerprinted(run, name)
        stages: dict[str, Any] = {}
        for st in removal.apply(model, ctx):
            t_ev = time.time()
            ev = self._evaluate(st.model, tok, fp, fps, clean)
            stages[st.name] = {**ev, "info": st.info, "seconds_to_stage": round(t_ev - t0, 1)}
            model = st.model
            log.info("%s on %s, %s: FSR %s", key, name, st.name,
                     {k: round(v["fsr"], 3) for k, v in ev["fsr"].items()})
        del model
        gc.collect()
        return {"stages": stages, "seconds": round(time.time() - t0, 1)}

    def _references(self) -> dict[str, Any]:
        refs: dict[str, Any] = {}
        for f in self.cfg.fingerprints:
            obj = FINGERPRINTS.get(f.name)
            refs[f.name] = {"paper": obj.paper, "reference": obj.reference}
        for r in self.cfg.removals:
            obj = REMOVALS.get(r.name)
            refs[r.key] = {"paper": getattr(obj, "paper", ""), "reference": obj.reference}
        return refs

    # -- report ---------------------------------------------------------------------------------------------
    def report(self, run: RunDir) -> list[Path]:
        from ..report.fingerprints import build_report

        return build_report(run, self.cfg)
