"""The comparison table of the CTRAP paper: every defense (SFT, CTRAP, Vaccine, Booster, RepNoise, NPO) × every
fine-tuning attack of a sweep (full harmful over n, mixed over p, benign over tasks), optionally × seeds.

Built on the `hft` experiment's stages, so each cell is cached in the run directory: an aligned adapter is trained
once per (defense, seed) and reused by all of its attacks, a finished cell is skipped on `--resume`, and a killed
training stage continues from its last checkpoint. Stages are versioned by their inputs (`HFTExperiment.stage_inputs`,
with the cell's seed and the defense's own alignment overrides), so a table resumed with more defenses, attacks or
seeds, or with one changed, computes only those cells. The report is `report/hft_table.write_table_report`: paper-style
tables (mean ± std over seeds), HS-vs-n / HS-vs-p / FA-per-task plots and wall time per stage.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, to_dict
from ..metrics.hft import METRIC_DEFINITIONS
from ..registry import EXPERIMENTS
from ..runs import RunDir
from ..training import TrainConfig
from .base import seed_everything
from .ctrap import DefenseSpec, HFTConfig, HFTExperiment
from .hft_eval import make_panel
from .hft_sweep import run_sweep
from .hft_table import stage_seconds, summarize

log = logging.getLogger("tamperlab")


@dataclass
class TableDefenseSpec(DefenseSpec):
    """A table row: a defense, its hyper-parameters and, optionally, its own alignment optimizer settings."""

    alignment: dict[str, Any] = field(default_factory=dict)
    """Overrides of the shared `alignment` settings for this defense only (e.g. {batch_size: 10}): the official
    scripts use per-method batch sizes (Vaccine 10, RepNoise 4, NPO 5, Booster/CTRAP 5 + 5 helpful)."""

    def alignment_config(self, shared: TrainConfig) -> TrainConfig:
        return from_dict(TrainConfig, {**to_dict(shared), **self.alignment}, f"defenses[{self.key}].alignment")


def _all_defenses() -> list[TableDefenseSpec]:
    return [TableDefenseSpec(n) for n in ("sft", "ctrap", "vaccine", "booster", "repnoise", "npo")]


@dataclass
class HFTTableConfig(HFTConfig):
    """Defenses × attacks (× seeds) with paper-style tables."""

    defenses: list[TableDefenseSpec] = field(default_factory=_all_defenses)  # type: ignore[assignment]
    """Table rows (default: the six defenses of the CTRAP comparison with their official hyper-parameters)."""
    # `seeds` (RunConfig's field, validated there) means here: repeat every cell with these seeds and report
    # mean ± std in the table; empty = the single run seed `seed` (see HFTTableExperiment.handles_seeds).

    def __post_init__(self) -> None:
        super().__post_init__()
        for d in self.defenses:
            d.alignment_config(self.alignment)  # fail at load time, not after hours of training


def attack_descriptor(atk: Any) -> dict[str, Any]:
    """A table column's attack: its label, kind and sizes (the attack config's own `describe`)."""
    return atk.describe()


@EXPERIMENTS.register("ctrap_table")
class HFTTableExperiment(HFTExperiment):
    """CTRAP-paper comparison: all defenses × attack sweep (× seeds), resumable cells, paper-style tables."""

    config_cls = HFTTableConfig
    cfg: HFTTableConfig
    handles_seeds = True
    """The table repeats each (defense, seed) cell itself instead of the whole run per seed: one data stage for
    every seed (so all seeds are judged on the same prompts and rows stay paired for McNemar across seeds), and
    the paper-style tables print mean ± std per cell with pooled intervals."""

    def seeds(self) -> list[int]:
        return list(self.cfg.seeds) or [self.cfg.seed]

    def cell_key(self, spec: TableDefenseSpec, seed: int) -> str:
        """Stage / model-folder key of one (defense, seed). Without a seed list it is the plain defense key, so a
        single-seed table run has the same layout as an `hft` run."""
        return f"{spec.key}.seed{seed}" if self.cfg.seeds else spec.key

    def cell(self, spec: TableDefenseSpec, seed: int) -> tuple[HFTExperiment, DefenseSpec]:
        """An `hft` experiment whose stages train and evaluate this (defense, seed) cell."""
        cfg = dataclasses.replace(self.cfg, seed=seed, alignment=spec.alignment_config(self.cfg.alignment))
        exp = HFTExperiment(cfg)
        exp.judge = self.judge
        return exp, DefenseSpec(spec.name, self.cell_key(spec, seed), spec.params)

    def run(self, run: RunDir) -> dict[str, Any]:
        self.judge = make_panel(self.cfg.eval)
        data = self.data(run)
        for spec in self.cfg.defenses:
            spec.build()  # validate every defense before spending time on any
        per_seed: dict[str, dict[str, Any]] = {}
        for seed in self.seeds():
            rows: dict[str, Any] = {}
            for spec in self.cfg.defenses:
                exp, cell = self.cell(spec, seed)
                # Seed per cell: the LoRA init and data order of a cell do not depend on which cells ran before
                # it in this invocation (a resumed run skips some).
                seed_everything(seed)
                adapter = exp.align(run, cell, data)
                row: dict[str, Any] = {"alignment": run.load_stage(f"align-{cell.key}")}
                if self.cfg.evaluate_aligned:
                    row["aligned"] = exp.eval_aligned(run, cell, adapter, data)
                row["attacks"] = {}
                for atk in self.cfg.attacks:
                    seed_everything(seed)
                    row["attacks"][atk.key] = exp.attack(run, cell, adapter, atk, data)
                if self.cfg.sweep.enabled:
                    row["sweep"] = run_sweep(exp, run, cell, adapter, data, row["attacks"])
                rows[spec.key] = row
            per_seed[str(seed)] = rows
        defenses = [d.key for d in self.cfg.defenses]
        attacks = [attack_descriptor(a) for a in self.cfg.attacks]
        keys = {self.cell_key(d, s): d.key for d in self.cfg.defenses for s in self.seeds()}
        return run.save_metrics(
            {"seeds": self.seeds(), "defenses": defenses, "attacks": attacks,
             "summary": summarize(per_seed, defenses, attacks), "seconds": stage_seconds(run.read_log(), keys),
             "per_seed": per_seed},
            judge=self.judge.describe(),
            data=data.describe(),
            metric_definitions={
                **{k: METRIC_DEFINITIONS[k] for k in ("hs_io", "hs_o", "fa", "collapse_rate", "degenerate_rate",
                                                      "intervals", "judges", "agreement")},
                "summary": "mean and sample std (n-1) over seeds of each cell; pooled = Wilson 95% interval of all "
                           "seeds' prompts together",
                "Avg": "per seed, the mean over a table's columns; then mean ± std over seeds",
            })

    def report(self, run: RunDir) -> list[Path]:
        from ..report.hft_table import write_table_report

        return write_table_report(run)
