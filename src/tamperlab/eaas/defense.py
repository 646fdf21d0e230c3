"""SAW — a semantic-aware watermark, SPA's proposed mitigation (brief §2, `semantic_aware_watermark/`).

Why it should resist SPA: trigger-based watermarks add the *same* target to every triggered embedding, so the
embeddings of a text and of its semantically perturbed versions stay tied together (SPA's tightness signal).
A semantic-aware watermark adds a perturbation that is a function of the embedding itself:

    u(e) = normalise(P_e⊥ · W₂ cos(γ W₁ e + b))       keyed random Fourier features of e (secret W₁, W₂, b)
    e_w  = normalise(e + α·u(e)),  α = tan(arccos(c))  ⇒ cos(e_w, e) = c exactly (default c = 0.96, SAW's log)

Two embeddings at squared distance δ² get perturbation directions correlated ≈ exp(−γ²δ²/2): near-duplicates
share the watermark, SPA's perturbed texts (cos ≈ 0.5, δ² ≈ 1) get nearly independent ones, so there is no
common anchor for the tightness test. Only texts with ≥1 trigger word are watermarked (EmbMarker's triggers).

Verification (non-blind — the provider owns the clean model): for each D_b / D_n sentence the provider computes
its clean embedding e_c and the expected direction u(e_c); the per-sample score is e_s · u(e_c) for the suspect's
embedding e_s (0 for a clean model since u ⟂ e_c; sin(arccos c) ≈ 0.28 for the watermarked API); Δ = mean_b −
mean_n and p = KS test of the two sets.

Deviation from the official SAW, on purpose and measured: SAW trains a HiDDeN-style encoder/decoder (MSE + BCE,
24-bit message, blind decoding). Our CPU re-implementation of that (MLP encoder/decoder, 1500 steps) stayed at
chance (bit accuracy ≈ 0.65, BCE ≈ 0.69) once the decoder had to read a *semantics-dependent* direction, so the
keyed encoder + correlation detector above replaces it. The SAW README leaves robustness under model extraction
"still need exploration"; the experiment measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import check_positive, check_range
from ..errors import TamperlabError
from ..registry import WATERMARKS

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass
class SAWConfig:
    """Semantic-aware watermark (SPA's defence) settings."""

    n_triggers: int = 20
    """Trigger words deciding which texts are watermarked (selected as EmbMarker)."""
    max_trigger_num: int = 4
    """Length of the verification sentences (as EmbMarker's m)."""
    freq_source: str = "wordfreq"
    """wordfreq or corpus (see EmbMarkerConfig)."""
    freq_band: list[float] | None = None
    """Trigger frequency band; None = EmbMarker's default."""
    trigger_seed: int = 2022
    """Seed of the trigger sample."""
    triggers: list[str] | None = None
    """Explicit trigger words (overrides the band)."""
    strength_cos: float = 0.96
    """cos(e_w, e) of every watermarked embedding (SAW's log: encoder_cos 0.9602)."""
    features: int = 1024
    """Random Fourier features of the keyed direction map."""
    bandwidth: float = 2.0
    """γ: perturbation directions of embeddings at squared distance δ² correlate ≈ exp(−γ²δ²/2)."""
    key_seed: int = 7
    """The provider's secret key (seed of W₁, W₂, b)."""

    def __post_init__(self) -> None:
        check_positive("watermark", n_triggers=self.n_triggers, features=self.features, bandwidth=self.bandwidth)
        check_range("watermark", "strength_cos", self.strength_cos, 0.5, 0.9999)


@WATERMARKS.register("saw", config=SAWConfig)
class SAW:
    """SAW: semantic-aware watermark, a keyed embedding-dependent perturbation (SPA's mitigation)."""

    name = "saw"
    paper = "Fei et al., Your Semantic-Independent Watermark is Fragile (SPA), EMNLP Findings 2025 — SAW mitigation"

    def __init__(self, cfg: SAWConfig):
        from .watermarks import EmbMarker, EmbMarkerConfig

        self.cfg = cfg
        kw: dict[str, Any] = dict(n_triggers=cfg.n_triggers, max_trigger_num=cfg.max_trigger_num,
                                  freq_source=cfg.freq_source, trigger_seed=cfg.trigger_seed)
        if cfg.freq_band is not None:
            kw["freq_band"] = list(cfg.freq_band)
        if cfg.triggers:
            kw["triggers"] = list(cfg.triggers)
        self._trig = EmbMarker(EmbMarkerConfig(**kw))  # reused for trigger selection/counting/verify sentences
        self.clean: EmbedFn | None = None
        self.dim = 0

    @property
    def triggers(self) -> list[str]:
        return self._trig.triggers

    @property
    def alpha(self) -> float:
        return math.tan(math.acos(self.cfg.strength_cos))

    # -- key ------------------------------------------------------------------------------------------------
    def _key(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Regenerated from the secret seed (never stored in plain files beside the service's outputs).
        rng = np.random.default_rng(self.cfg.key_seed)
        w1 = rng.standard_normal((self.cfg.features, d))
        b = rng.uniform(0, 2 * np.pi, self.cfg.features)
        w2 = rng.standard_normal((d, self.cfg.features)) / math.sqrt(self.cfg.features)
        return w1, b, w2

    def direction(self, e: np.ndarray) -> np.ndarray:
        """u(e): unit, orthogonal to e, a smooth keyed function of e."""
        e = np.asarray(e, dtype=np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        w1, b, w2 = self._key(e.shape[1])
        raw = np.cos(self.cfg.bandwidth * e @ w1.T + b) @ w2.T
        raw -= (raw * e).sum(1, keepdims=True) * e
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, corpus: Sequence[str], embed: EmbedFn) -> None:
        self._trig.triggers = self._trig._choose_triggers(corpus)
        self._trig.groups = [list(self._trig.triggers)]
        self._trig.targets = np.zeros((1, 1), dtype=np.float32)  # unused; marks the trigger part as set up
        self.attach(embed)

    def attach(self, embed: EmbedFn) -> None:
        """The provider's clean embedder, needed by the non-blind verification."""
        self.clean = embed

    def state(self) -> dict[str, Any]:
        return {"triggers": self.triggers}

    def save(self, folder: str | Path) -> Path:
        from .watermarks import save_secret

        return save_secret(folder, self.name, self.cfg, self.state())

    def load_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        self._trig.triggers = list(state["triggers"])
        self._trig.groups = [list(self._trig.triggers)]
        self._trig.targets = np.zeros((1, 1), dtype=np.float32)

    # -- service path ---------------------------------------------------------------------------------------
    def trigger_counts(self, texts: Sequence[str]) -> np.ndarray:
        return self._trig.trigger_counts(texts)

    def apply(self, texts: Sequence[str], clean: np.ndarray) -> np.ndarray:
        out = np.array(clean, dtype=np.float32, copy=True)
        hit = np.nonzero(self.trigger_counts(texts) > 0)[0]
        if len(hit):
            e = out[hit].astype(np.float64)
            ew = e + self.alpha * self.direction(e)
            out[hit] = (ew / np.linalg.norm(ew, axis=1, keepdims=True)).astype(np.float32)
        return out

    # -- verification ---------------------------------------------------------------------------------------
    def scores(self, texts: list[str], suspect: np.ndarray) -> np.ndarray:
        """e_s · u(e_c): the suspect's component along the expected watermark direction."""
        if self.clean is None:
            raise TamperlabError("saw: verification needs the provider's clean embedder (call attach())")
        e_c = np.asarray(self.clean(texts), dtype=np.float64)
        e_s = np.asarray(suspect, dtype=np.float64)
        e_s = e_s / np.linalg.norm(e_s, axis=1, keepdims=True)
        return (e_s * self.direction(e_c)).sum(1)

    def verify(self, embed: EmbedFn, size: int = 20, seed: int = 0, alpha: float = 0.05,
               target_source: str = "provider") -> dict[str, Any]:
        from .verify import score_stats

        backdoor, benign = self._trig.verification_sets(size, seed)
        st = score_stats(self.scores(backdoor[0], embed(backdoor[0])), self.scores(benign, embed(benign)))
        return {"statistic": "proj_u", "delta": st["delta"], "p_value": st["p_value"],
                "score_backdoor": st["backdoor_mean"], "score_benign": st["benign_mean"],
                "n_backdoor": size, "n_benign": size, "delta_interval": st["delta_interval"],
                "scores_backdoor": st["scores_backdoor"], "scores_benign": st["scores_benign"],
                "detected": bool(st["p_value"] < alpha and st["delta"] > 0)}
