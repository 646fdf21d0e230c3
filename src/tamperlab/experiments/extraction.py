"""The backdoor data-extraction experiment (arXiv 2505.15656): the publisher backdoors a model (SFT, optionally
GRPO), the victim fine-tunes the release on private data D2, the publisher samples Q(w) over candidate opening
words and recovers D2's queries. Controls: the same pipeline on a model without the backdoor, the backdoored
model before the victim's fine-tuning, and (optionally) a victim that trains on responses only. Defense: the
detection probes on each released model, and the garbled-instruction backdoor that bypasses them.

Every stage is cached in the run directory (data, each training stage as an adapter, each sampling pass), so
`--resume` continues a killed run, and re-scoring needs no model. Stages are versioned by their inputs: `--resume`
with a changed recipe recomputes only the stages downstream of the change. The stages are functions of
`tamperlab.extraction.stages`; the report is `tamperlab.report.extraction`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..extraction import stages as S
from ..extraction.backdoor import BackdoorConfig, GRPOStageConfig
from ..extraction.data import ExtractionDataConfig
from ..extraction.defense import DetectionConfig
from ..extraction.extract import ExtractConfig
from ..report.extraction import PAPER, write_report
from ..extraction.victim import VictimConfig
from ..models import ModelConfig
from ..registry import EXPERIMENTS
from ..runs import RunDir
from .base import Experiment, RunConfig

@dataclass
class BaselineConfig:
    """Controls that show where the leak comes from."""

    no_backdoor: bool = True
    """Run victim fine-tuning + extraction on a publisher model without the backdoor."""
    clean_publisher_sft: bool = False
    """The no-backdoor publisher post-trains on D1 only (same optimizer) instead of releasing the base model as
    is (fairer, costs one more training stage)."""
    before_victim: bool = True
    """Extract from the backdoored release before the victim fine-tunes it (D2 cannot leak from it)."""
    response_only_victim: bool = False
    """Ablation: the victim fine-tunes the backdoored release with loss on responses only."""


@dataclass
class DefenseConfig:
    """The detection defense and the garbled-instruction bypass."""

    enabled: bool = True
    """Probe every released model (clean, backdoored, garbled) with natural-language extraction requests."""
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    """Probe set, samples and verdict threshold."""
    garbled_attack: bool = False
    """Also train a backdoor on the garbled instruction, let the victim fine-tune it, and extract with it (one
    more publisher + victim training stage)."""


@dataclass
class ExtractionConfig(RunConfig):
    """Backdoor training → victim fine-tuning → extraction, with controls and the detection defense."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The open base model the publisher starts from."""
    data: ExtractionDataConfig = field(default_factory=ExtractionDataConfig)
    """D1 (publisher) and D2 (victim) data."""
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    """Stage A: SFT backdoor."""
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    """Stage A′: GRPO on top of the SFT backdoor (enabled: true to run)."""
    victim: VictimConfig = field(default_factory=VictimConfig)
    """Stage B: the victim's fine-tuning on D2."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Stage C: candidate words, sampling, scoring."""
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    """Controls."""
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    """Detection defense and its bypass."""
    init_from: str = ""
    """A run directory made with the same seed/model/data/backdoor/victim/extract settings: its finished stages
    (and the adapters they point to, which must stay in place) are reused instead of recomputed — e.g. to add
    GRPO on top of the demo run and measure only the extra stages."""


@EXPERIMENTS.register("extraction", config=ExtractionConfig)
class ExtractionExperiment(Experiment):
    """Backdoor training-data extraction (arXiv 2505.15656): SFT/GRPO backdoor, victim FT, extraction, defense."""

    config_cls = ExtractionConfig
    paper = PAPER
    versioned_stages = True

    def __init__(self, cfg: ExtractionConfig):
        super().__init__(cfg)
        self.cfg: ExtractionConfig = cfg

    def _init_from(self, run: RunDir) -> None:
        S.init_from(S.ExtractionRun(run, self.cfg))

    def run(self, run: RunDir) -> dict[str, Any]:
        from ..extraction.trie import TokenCodec
        from ..models import load_tokenizer

        cfg, t_start = self.cfg, time.time()
        ctx = S.ExtractionRun(run, cfg)
        if cfg.init_from:
            S.init_from(ctx)
        d1, d2 = S.data(ctx)
        candidates, sampled = S.words(ctx, d2)
        samples = S.backdoor_samples(ctx, d1)
        releases = S.publishers(ctx, d1, samples)
        fine_tuned = S.victims(ctx, releases, d2)
        codec = TokenCodec(load_tokenizer(cfg.model))
        evaluations = {key: S.extract(ctx, key, lineage, instruction, candidates, sampled, d2, codec)
                       for key, (lineage, instruction) in S.arms(ctx, releases, fine_tuned).items()}
        diagnostics = S.publisher_diagnostics(ctx, samples, codec)
        detection = S.defense(ctx, releases)
        return run.save_metrics(S.collect(ctx, candidates, d2, evaluations, diagnostics, detection, t_start))

    def report(self, run: RunDir) -> list[Path]:
        return write_report(run)
