"""Experiment contract and recipe loading.

A recipe is YAML with a top-level `experiment:` naming a registered experiment; all other keys fill that
experiment's config dataclass (a subclass of RunConfig). `tamperlab run` = load_recipe → RunDir.create →
Experiment.run → Experiment.report.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from ..config import RunName, Satisfies, Seed, apply_overrides, check_size, from_dict, load_yaml, parse_yaml, resolve_path, to_dict
from ..errors import ConfigError, TamperlabError
from ..models import model_cache
from ..registry import EXPERIMENTS
from .. import distributed
from ..runs import RunDir, RunLock, plain
from . import repeat

log = logging.getLogger("tamperlab")

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _distinct_seeds(seeds: list[int]) -> str | None:
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    return f"duplicate seeds {dup} in {seeds} (each seed runs once)" if dup else None


@dataclass
class RunConfig:
    """Fields every recipe has."""

    name: RunName = "run"
    """Run name: outputs go to `<output_dir>/<name>/`. One path component (letters, digits, ._+=-): never '',
    '.', '..' or a path, so `--force` can only delete this run's own folder."""
    seed: Seed = 0
    """Seed for python, numpy and torch (recorded in metrics.json)."""
    seeds: Annotated[list[Seed], Satisfies(_distinct_seeds)] = field(default_factory=list)
    """Repeat the run once per seed and report mean ± sd over seeds, e.g. [0, 1, 2] (replaces `seed`): each seed
    is an ordinary run in `<run>/seed-<s>/`; the run's metrics.json and report aggregate them
    (experiments/repeat.py). [] = one run with `seed`; one entry = one run with that seed. Experiments that
    repeat per seed themselves (`ctrap_table`: every cell per seed, one shared data stage) interpret it their
    own way."""
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
    handles_seeds: ClassVar[bool] = False
    """True when `run` interprets `cfg.seeds` itself; otherwise `execute` repeats the whole run per seed."""
    versioned_stages: ClassVar[bool] = False
    """True when every stage of `run` is cached with its inputs (`RunDir.cached(key, fn, inputs=...)`): `--resume`
    then accepts a changed or grown recipe (unchanged stages load, changed and new ones compute). Otherwise a
    resume with a different recipe is refused, since a stage keyed by its name alone could be stale."""
    kind: str = ""
    """Registered name (set by load_recipe / execute)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def recorded_config(self) -> dict[str, Any]:
        """The config as the run's config.yaml records it (JSON-normalised): what a resume compares."""
        return plain({"experiment": self.kind, **to_dict(self.cfg)})

    def run(self, run: RunDir) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, run: RunDir) -> list[Path]:
        raise NotImplementedError


def resolve_recipe_path(recipe: str) -> Path:
    """A path, or the name of a packaged recipe (`demo_ctrap` → src/tamperlab/recipes/demo_ctrap.yaml)."""
    p = Path(recipe)
    for cand in (p, RECIPES_DIR / recipe, RECIPES_DIR / f"{recipe}.yaml"):
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
            continue
    known = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
    shown = recipe if len(recipe) <= 200 else recipe[:200] + "..."
    raise ConfigError(f"recipe not found: {shown!r} (not a file, nor a packaged recipe: {', '.join(known)})")


def _config_class(data: dict[str, Any]) -> type[RunConfig]:
    kind = data.get("experiment")
    if kind is None:
        raise ConfigError(f"the recipe needs a top-level 'experiment:' key (one of {', '.join(EXPERIMENTS.names())})")
    if not isinstance(kind, str):
        raise ConfigError(f"experiment: expected a name (one of {', '.join(EXPERIMENTS.names())}), got {kind!r}")
    return EXPERIMENTS.get(kind).config_cls


def _defaults_at(data: dict[str, Any], path: list[str]) -> Any:
    """The resolved value at `path` of the recipe as given so far (for `--set list.N.key=...` on a default list)."""
    cfg = from_dict(_config_class(data), {k: v for k, v in data.items() if k != "experiment"})
    return to_dict(resolve_path(cfg, path))


def load_recipe(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Experiment:
    """Recipe (path, packaged name or mapping) + `--set` overrides → a validated experiment. Every check that can
    be made without a model happens here, before any compute and before a run directory exists."""
    if isinstance(recipe, dict):
        check_size(recipe, "recipe")
        data = dict(recipe)
    else:
        data = load_yaml(resolve_recipe_path(str(recipe)))
    data = apply_overrides(data, list(overrides or []), _defaults_at)
    _config_class(data)
    kind = data.pop("experiment")
    exp = EXPERIMENTS.build(kind, data, where="")
    exp.kind = kind
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


def check_output_location(cfg: RunConfig) -> None:
    """Fail before anything is written when the run directory cannot be a directory."""
    from ..config import run_name_error

    err = run_name_error(cfg.name)
    if err:
        raise ConfigError(f"name: {err}")
    if not cfg.output_dir.strip():  # Path("") is the current directory: an empty value is more likely a mistake
        raise ConfigError("output_dir: empty (use '.' for the current directory)")
    out = Path(cfg.output_dir)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise TamperlabError(f"output directory {out}: {parent} exists and is not a directory")
    run = out / cfg.name
    if run.exists() and not run.is_dir():
        raise TamperlabError(f"run directory {run} exists and is not a directory")


def execute(exp: Experiment, resume: bool = False, force: bool = False) -> RunDir:
    """Run an experiment into its run directory and write its report; with several `seeds`, once per seed into
    `<run>/seed-<s>/` and then the aggregate over seeds (experiments/repeat.py)."""
    exp.kind = exp.kind or next(e.name for e in EXPERIMENTS if e.obj is type(exp))
    check_output_location(exp.cfg)
    if not repeat.repeats(exp):
        repeat.apply_single_seed(exp)
        return _execute_one(exp, resume, force)
    path = Path(exp.cfg.output_dir) / exp.cfg.name
    with RunLock(path):
        parent = RunDir.create(path, exp.recorded_config(), resume=resume, force=force,
                               versioned=type(exp).versioned_stages)
        log.info("run %s over seeds %s → %s", exp.kind, exp.cfg.seeds, parent.path)
        # A seed's own directory is new unless the parent was resumed; resume=True also covers a fresh parent.
        seeds = repeat.run_seeds(exp, parent, lambda sub: _execute_one(sub, resume=True, force=False))
        distributed.barrier()
        if distributed.is_main_process():
            from ..report.seeds import write_seeds_report

            repeat.write_aggregate(parent, seeds)
            for p in write_seeds_report(parent):
                log.info("report: %s", p)
        distributed.barrier()
        parent.log("run_done")
    return parent


def _execute_one(exp: Experiment, resume: bool, force: bool) -> RunDir:
    """One run (one seed) into `<output_dir>/<name>/`."""
    path = Path(exp.cfg.output_dir) / exp.cfg.name
    # The lock is taken before the directory is touched: a second process (or --force) must not write or delete
    # a live run. Multi-process launches: only the main process locks, creates, writes and reports; all ranks
    # compute (tamperlab.distributed). Each distinct model is read from disk once per run (models.ModelCache).
    with RunLock(path), model_cache():
        run = RunDir.create(path, exp.recorded_config(), resume=resume, force=force,
                            versioned=type(exp).versioned_stages)
        seed_everything(exp.cfg.seed)
        log.info("run %s → %s", exp.kind, run.path)
        exp.run(run)
        distributed.barrier()
        if distributed.is_main_process():
            for p in exp.report(run):
                log.info("report: %s", p)
        distributed.barrier()
        run.log("run_done")  # after the report: a repeated run's resume skips a seed only once this is logged
    return run


def write_report(exp: Experiment, run: RunDir) -> list[Path]:
    """`tamperlab report`: (re)write a run's report — the experiment's own, or for a run repeated over seeds each
    seed's report and the summary over seeds."""
    if not repeat.repeats(exp):
        return exp.report(run)
    from ..report.seeds import write_seeds_report

    paths: list[Path] = []
    for seed in exp.cfg.seeds:
        sub_path = run.path / repeat.seed_dir(seed)
        if (sub_path / "metrics.json").is_file():
            paths += repeat.seed_experiment(exp, seed, run.path).report(RunDir(sub_path))
    return paths + write_seeds_report(run)


def experiment_for_run(run_dir: str | Path) -> tuple[Experiment, RunDir]:
    """The experiment and RunDir of a finished (or interrupted) run, with its files checked to be readable."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise TamperlabError(f"{run.path} is not a directory")
    cfg_file = run.path / "config.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"{run.path} is not a run directory (no config.yaml)")
    config = parse_yaml(cfg_file.read_bytes(), str(cfg_file))
    if not isinstance(config, dict):
        raise ConfigError(f"{cfg_file}: not a run configuration (expected a mapping)")
    metrics = run.path / "metrics.json"
    if metrics.exists():
        try:
            json.loads(metrics.read_bytes())
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise TamperlabError(f"{metrics} is corrupt ({str(e).splitlines()[0]}); re-run with --resume to "
                                 "rewrite it") from None
    return load_recipe(config), run
