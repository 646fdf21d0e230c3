"""EaaS watermark + Semantic Perturbation Attack, end to end.

For each scenario (a watermark served by the provider):
  serve (real uvicorn on 127.0.0.1, ephemeral port) → steal (HTTP queries of the corpus) → copy model →
  verify (Δcos, Δl2, KS p) → SPA (suffix search with a local surrogate, perturbed queries over HTTP, tightness
  scores, KDE threshold, deletion; TPR/FPR/AUROC against the true trigger labels) → copy model on the purified
  set → verify again → downstream accuracy of every embedding source.
A control copies an unwatermarked provider and is verified against the first scenario's secret.
Every stage is cached in the run directory, so `--resume` continues a killed run; stages are versioned by their
inputs, so `--resume` with a changed recipe recomputes only the stages downstream of the change. The stages are functions of
`tamperlab.eaas.pipeline`; the report is `tamperlab.report.eaas`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..config import OneOf, check_positive
from ..eaas import pipeline as P
from ..eaas.downstream import DownstreamConfig
from ..report.eaas import DEFINITIONS, STAND_INS, write_report
from ..eaas.server import ServerConfig
from ..eaas.service import ProviderConfig
from ..eaas.spa import SPAConfig
from ..eaas.stealer import StealerConfig
from ..errors import ConfigError
from ..registry import EXPERIMENTS
from ..runs import RunDir
from .base import Experiment, RunConfig
from .eaas_sweep import EaaSSweepConfig

log = logging.getLogger("tamperlab")


def _task_names() -> list[str]:
    from ..eaas.data import TASK_NAMES

    return TASK_NAMES


@dataclass
class DataConfig:
    """Texts the provider is set up on, the stealer queries, and utility is measured on."""

    task: Annotated[str, OneOf(_task_names, "task")] = "gen_topic"
    """Main task: its train split is the stealer's query corpus (gen_topic, gen_sentiment, gen_spam, sst2,
    ag_news, enron_spam, mind)."""
    n_train: int = 1000
    """Texts the stealer queries (official SPA stealing test: a 5000-sample subset)."""
    n_test: int = 400
    """Test texts for downstream accuracy (official: 500)."""
    extra_tasks: list[Annotated[str, OneOf(_task_names, "task")]] = field(default_factory=list)
    """More tasks for downstream utility only (their texts are embedded through the API and the copies)."""
    n_extra_train: int = 400
    """Train texts per extra task."""
    n_extra_test: int = 200
    """Test texts per extra task."""
    mind_path: str = ""
    """MIND news.tsv, needed for task 'mind'."""
    seed: int = 2024
    """Sampling seed (official subset seed: 2024)."""

    def __post_init__(self) -> None:
        check_positive("data", n_train=self.n_train, n_test=self.n_test, n_extra_train=self.n_extra_train,
                       n_extra_test=self.n_extra_test)


@dataclass
class ScenarioConfig:
    """One watermarked (or defended) service that is stolen and attacked."""

    name: str = "embmarker"
    """Scenario label in tables and file names."""
    watermark: str = "embmarker"
    """Registered watermark (embmarker, warden, saw)."""
    watermark_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the watermark's config dataclass."""
    steal: bool = True
    """Train a copy model on the stolen embeddings and verify it; false = SPA detection on the API only."""
    steal_after_spa: bool = True
    """Also train a copy on the SPA-purified set and verify it (the attack's end result)."""
    role: Literal["attack", "defense"] = "attack"
    """'defense' marks a defended service (reported in the defense section)."""

    def __post_init__(self) -> None:
        from ..eaas.watermarks import build_watermark

        if self.watermark == "none":
            raise ConfigError(f"scenario {self.name!r}: use `control: true` for the unwatermarked provider")
        build_watermark(self.watermark, self.watermark_config)


@dataclass
class VerifyConfig:
    """Provider's watermark verification (EmbMarker's eval_copier)."""

    size: int = 20
    """Sentences in each of D_b and D_n (official --verify_dataset_size 20)."""
    alpha: float = 0.05
    """'detected' means p < alpha and Δ > 0."""
    target_source: Literal["provider", "copy"] = "provider"
    """Target vector: the provider's secret, or the suspect's own embedding of the target text (the adv variant)."""
    seed: int = 0
    """Seed of the verification sentences."""


@dataclass
class EaaSConfig(RunConfig):
    """Recipe of the EaaS watermark + SPA experiment."""

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    """The provider: embedder and (default) watermark; `tamperlab serve` serves exactly this."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """HTTP front: keys, rate limits, size limits, query log."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus and downstream tasks."""
    scenarios: list[ScenarioConfig] = field(default_factory=lambda: [ScenarioConfig()])
    """Watermarked services to steal and attack (the defense is a scenario with role: defense)."""
    control: bool = True
    """Also copy an unwatermarked provider and verify it (negative control: p should be large)."""
    stealer: StealerConfig = field(default_factory=StealerConfig)
    """Copy model."""
    spa: SPAConfig = field(default_factory=SPAConfig)
    """Semantic Perturbation Attack."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Verification."""
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    """Utility classifier."""
    sweep: EaaSSweepConfig = field(default_factory=EaaSSweepConfig)
    """Attacker sweep: SPA re-run over its deleted fraction, score and perturbations per text, one copy per
    trial (off by default)."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.scenarios]
        if not names:
            raise ConfigError("scenarios: at least one scenario is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"scenarios: duplicate names {names}")
        self.sweep.validate(self.scenarios, self.spa)


@EXPERIMENTS.register("eaas")
class EaaSExperiment(Experiment):
    """EaaS watermark (EmbMarker/WARDEN/SAW) → model stealing → verification → SPA → defense."""

    config_cls = EaaSConfig
    versioned_stages = True

    def __init__(self, cfg: EaaSConfig):
        super().__init__(cfg)
        self.cfg: EaaSConfig = cfg

    def provider_corpus(self) -> list[str]:
        """Texts the watermark secret is set up on (target = corpus[target_index])."""
        return P.load_task(self.cfg, self.cfg.data.task, "train", self.cfg.data.n_train).texts

    def run(self, run: RunDir) -> dict[str, Any]:
        from .. import distributed

        if distributed.world_size() > 1:
            # The stealer's sentence-transformers trainer has no sharded path here (under DDP its loader has no
            # length and it stops); a clear refusal instead of a crash minutes in. Every model here is BERT-sized.
            raise ConfigError(f"the eaas experiment runs in one process ({distributed.world_size()} were launched): "
                              "run it with `tamperlab run`, not `accelerate launch`")
        cfg, t_start = self.cfg, time.time()
        ctx = P.open_run(run, cfg)
        results = ctx.results
        results["utility_clean_provider"] = P.utility(ctx, ctx.clean_encoder(), "clean_provider",
                                                      {"embedder": ctx.embedder_inputs()})
        for sc in cfg.scenarios:
            res, stolen = P.steal_and_spa(ctx, sc)
            if sc.steal:
                res.update(P.copies(ctx, sc, stolen))
            if cfg.sweep.enabled and sc.name in cfg.sweep.targets(cfg.scenarios):
                res["sweep"] = P.sweep(ctx, sc, stolen, res)
            results["scenarios"][sc.name] = res
            log.info("[%s] SPA: TPR %.3f FPR %.3f AUROC(pca) %.3f", sc.name, res["spa"]["tpr"], res["spa"]["fpr"],
                     res["spa"]["auroc_pca"])
        if cfg.control:
            results["control"] = P.control(ctx)
        results.update(definitions=DEFINITIONS, stand_ins=STAND_INS, pipeline_seconds=round(time.time() - t_start, 1))
        run.save_metrics(results)
        return results

    def report(self, run: RunDir) -> list[Path]:
        return write_report(run)
