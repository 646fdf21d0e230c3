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
from typing import Any, Sequence

from ..config import from_dict, to_dict
from ..metrics.hft import METRIC_DEFINITIONS
from ..registry import EXPERIMENTS
from ..report.cells import cell_interval
from ..report.tables import cell_values, cells_over_seeds, mean_std
from ..runs import RunDir
from ..stats import wilson
from ..training import TrainConfig
from .base import seed_everything
from .ctrap import DefenseSpec, HFTConfig, HFTExperiment
from .hft_eval import make_panel
from .hft_sweep import run_sweep

log = logging.getLogger("tamperlab")

SUMMARY_METRICS = ("hs_io", "hs_o", "fa", "collapse_rate")
"""The metrics of the `summary` in metrics.json."""


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


def summarize(per_seed: dict[str, dict[str, Any]], defenses: Sequence[str],
              attacks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{defense: {attack label | "aligned": {metric: {mean, std, n, [pooled]}}}} for metrics.json consumers:
    n = seeds; `pooled` = the Wilson 95 % interval of all seeds' prompts together (when the cells carry counts)."""
    out: dict[str, Any] = {}
    for d in defenses:
        cells: dict[str, Any] = {}
        for label in [None] + [a["label"] for a in attacks]:
            stats = {}
            for metric in SUMMARY_METRICS:
                vals = cell_values(per_seed, d, label, metric)
                if vals:
                    m, s = mean_std(vals)
                    stats[metric] = {"mean": m, "std": s, "n": len(vals)}
                    ivs = [cell_interval(c, metric) for c in cells_over_seeds(per_seed, d, label)
                           if c.get(metric) is not None]
                    if ivs and all(iv is not None and iv.k is not None for iv in ivs):
                        stats[metric]["pooled"] = wilson(sum(iv.k for iv in ivs),  # type: ignore[misc,union-attr]
                                                         sum(iv.n for iv in ivs)).to_dict()  # type: ignore[union-attr]
            cells["aligned" if label is None else label] = stats
        out[d] = cells
    return out


def stage_seconds(log: Sequence[dict[str, Any]], cell_keys: dict[str, str]) -> dict[str, dict[str, float]]:
    """Wall seconds spent per defense in alignment and in attacks (incl. their evaluation), summed over seeds,
    from the run log's stage_done events. cell_keys maps a stage's defense key (per seed) → table defense."""
    out: dict[str, dict[str, float]] = {}
    keys = sorted(cell_keys, key=len, reverse=True)  # longest first: "sft.seed1" before "sft"
    for rec in log:
        if rec.get("event") != "stage_done":
            continue
        stage = str(rec.get("stage", ""))
        for part in ("align", "eval-aligned", "attack", "sweep"):
            prefix = f"{part}-"
            if not stage.startswith(prefix):
                continue
            rest = stage[len(prefix):]
            key = next((k for k in keys if rest == k or rest.startswith(k + "-")), None)
            if key is not None:
                slot = out.setdefault(cell_keys[key], {"align": 0.0, "eval-aligned": 0.0, "attack": 0.0})
                slot[part] = slot.get(part, 0.0) + float(rec.get("seconds", 0.0))
            break
    return out


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
