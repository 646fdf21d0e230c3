"""Experiment contract and recipe loading.

A recipe is YAML with a top-level `experiment:` naming a registered experiment; all other keys fill that
experiment's config dataclass (a subclass of RunConfig). `tamperlab run` = load_recipe → RunDir.create →
Experiment.run → Experiment.report.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import apply_overrides, from_dict, load_yaml, to_dict
from ..errors import ConfigError
from ..registry import EXPERIMENTS
from ..runs import RunDir

log = logging.getLogger("tamperlab")

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class RunConfig:
    """Fields every recipe has."""

    name: str = "run"
    """Run name: outputs go to `<output_dir>/<name>/`."""
    seed: int = 0
    """Seed for python, numpy and torch (recorded in metrics.json)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    description: str = ""
    """Free text shown at the top of the report."""
    smoke: bool = False
    """Set by `--smoke` (tiny model, fixture data, 2 steps per stage): the run's numbers are meaningless."""
    smoke_substitutions: list[str] = field(default_factory=list)
    """What `--smoke` swapped (set by it; shown in metrics.json and the report)."""


class Experiment:
    """Base class: subclasses set `config_cls` and implement `run` and `report`."""

    config_cls: ClassVar[type[RunConfig]] = RunConfig

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def run(self, run: RunDir) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, run: RunDir) -> list[Path]:
        raise NotImplementedError


def resolve_recipe_path(recipe: str) -> Path:
    """A path, or the name of a packaged recipe (`demo_ctrap` → src/tamperlab/recipes/demo_ctrap.yaml)."""
    p = Path(recipe)
    if p.is_file():
        return p
    for cand in (RECIPES_DIR / recipe, RECIPES_DIR / f"{recipe}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"recipe not found: {recipe} (not a file, nor a packaged recipe: {', '.join(known)})")


def load_recipe(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Experiment:
    data = dict(recipe) if isinstance(recipe, dict) else load_yaml(resolve_recipe_path(str(recipe)))
    data = apply_overrides(data, overrides or [])
    kind = data.pop("experiment", None)
    if kind is None:
        raise ConfigError(f"the recipe needs a top-level 'experiment:' key (one of {', '.join(EXPERIMENTS.names())})")
    cls = EXPERIMENTS.get(str(kind))
    cfg = from_dict(cls.config_cls, data)
    exp = cls(cfg)
    exp.kind = str(kind)
    return exp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers import set_seed

        set_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def execute(exp: Experiment, resume: bool = False, force: bool = False) -> RunDir:
    """Run an experiment into its run directory and write its report."""
    kind = getattr(exp, "kind", None) or next(e.name for e in EXPERIMENTS if e.obj is type(exp))
    cfg_dict = {"experiment": kind, **to_dict(exp.cfg)}
    run = RunDir.create(Path(exp.cfg.output_dir) / exp.cfg.name, cfg_dict, resume=resume, force=force)
    seed_everything(exp.cfg.seed)
    log.info("run %s → %s", kind, run.path)
    exp.run(run)
    paths = exp.report(run)
    for p in paths:
        log.info("report: %s", p)
    return run


def experiment_for_run(run_dir: str | Path) -> tuple[Experiment, RunDir]:
    run = RunDir(run_dir)
    if not (run.path / "config.yaml").exists():
        raise ConfigError(f"{run.path} is not a run directory (no config.yaml)")
    return load_recipe(run.config), run
