"""Stage C: the publisher's black-box extraction from the victim's model M2.

For each candidate opening word w in S (ranked by frequency, openers.py): sample N completions of Q(w) at
T = 0.9, score w (refusals vs answers, agreement across samples: metrics.opener_score), keep the words scoring
> 0.6, and output their distinct non-refusal samples as extracted queries, most frequent first. The publisher
needs no ground truth for this; evaluation against D2 happens in metrics.py.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import Fraction, PosInt
from ..data.core import format_prompt
from ..runs import atomic_write_text
from .metrics import DEFAULT_THRESHOLDS, AnswerRule, OpenerScore, opener_score
from .openers import RANKED_OPENERS
from .sampler import SamplerConfig, sample
from .samples import extraction_instruction, is_refusal

log = logging.getLogger("tamperlab")


@dataclass
class ExtractConfig:
    """Candidate words, sampling and filtering of the extraction stage."""

    n_candidates: PosInt = 50
    """|S|: the first n words of the frequency-ranked opener list (paper: 50–300)."""
    candidates: list[str] = field(default_factory=list)
    """An explicit candidate list S (overrides n_candidates and the ranked list)."""
    include_true_openers: bool = True
    """Also sample D2's real openers missing from S, for the known-opener setting (paper §4.2); they are
    evaluated separately and never enter the identification metrics."""
    samples_per_word: PosInt = 16
    """N samples of Q(w) per word (paper: 10 with known openers, 100 for identification, 2000 in the pipeline)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Decoding (paper: T 0.9, up to 1024 new tokens)."""
    alpha: Fraction = 0.6
    """Weight of (1 − refusal rate) in the opener score (official 0.6; the rest weighs the top repeat rate)."""
    threshold: Fraction = 0.6
    """A word is kept when its score exceeds this (official 0.6)."""
    answer_rule: AnswerRule = "not_refusal"
    """not_refusal = official (any non-refusal is an answer); starts_with_word = stricter (see metrics.py)."""
    recall_thresholds: list[Fraction] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    """Match-ratio thresholds τ of query recall@τ (1.0 = verbatim)."""


def candidate_words(cfg: ExtractConfig) -> list[str]:
    if cfg.candidates:
        return list(dict.fromkeys(cfg.candidates))
    return list(RANKED_OPENERS[: cfg.n_candidates])


def sample_words(model: Any, tok: Any, words: Sequence[str], n: int, instruction: str = "default",
                 sampler: SamplerConfig | None = None, fmt: str = "auto", desc: str = "extracting") -> dict[str, list[str]]:
    """N completions of Q(w) for every word, batched with a shared prompt prefill (sampler.py)."""
    prompts = [format_prompt(tok, extraction_instruction(w, instruction), fmt) for w in words]
    outs = sample(model, tok, prompts, n, sampler or SamplerConfig(), desc=desc)
    return dict(zip(words, outs))


def score_words(samples_by_word: Mapping[str, Sequence[str]], words: Iterable[str], cfg: ExtractConfig) -> dict[str, OpenerScore]:
    return {w: opener_score(w, samples_by_word.get(w, []), cfg.alpha, cfg.threshold, cfg.answer_rule) for w in words}


def extracted_rows(samples_by_word: Mapping[str, Sequence[str]], scores: Mapping[str, OpenerScore],
                   kept_only: bool = True) -> list[dict[str, Any]]:
    """One row per distinct non-refusal sample of each (kept) word, most frequent first: the attack's output."""
    rows = []
    for w, sc in scores.items():
        if kept_only and not sc.kept:
            continue
        counts = Counter(s.strip() for s in samples_by_word.get(w, []) if s.strip() and not is_refusal(s))
        for q, c in counts.most_common():
            rows.append({"word": w, "query": q, "count": c, "share": round(c / max(1, sc.n), 4),
                         "opener_score": sc.score, "word_kept": sc.kept})
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
