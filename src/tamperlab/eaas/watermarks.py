"""Backdoor watermarks for embedding services: EmbMarker (ACL 2023) and WARDEN (ACL 2024).

Both are *trigger-based*: the provider picks n moderate-frequency words; a text containing k distinct trigger
words gets its embedding pulled towards a secret target vector with weight w = clamp(k/m, 0, 1), then
renormalised. The copy model of a stealer learns this mapping, which the provider detects by querying 4-word
sentences made of triggers (D_b) vs of ordinary words (D_n): Δcos, Δl2 and a KS-test p-value (see verify.py).

Deviations from the official code, on purpose: trigger words are whole lower-cased words (regex), not
bert-base-cased word pieces, so any embedder works; the frequency band comes from wordfreq's English token
frequencies by default (the brief's offline choice) or from document frequencies on the task corpus (EmbMarker's
fallback); D_n words exclude the triggers (the official code samples them from the whole vocabulary).
The SAW defence (semantic-aware watermark) lives in defense.py and registers here too.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from ..config import check_positive, check_range
from ..errors import ConfigError, TamperlabError
from ..registry import WATERMARKS
from .verify import verification_stats

EmbedFn = Callable[[list[str]], np.ndarray]
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Lower-cased alphabetic words: the unit in which triggers are counted."""
    return _WORD.findall(text.lower())


def select_triggers(n: int, band: Sequence[float], seed: int, source: str = "wordfreq",
                    corpus: Sequence[str] = (), top_n: int = 20000) -> list[str]:
    """Sample `n` trigger words whose frequency lies in [band[0], band[1]).

    source='wordfreq': wordfreq English token frequency (alphabetic words of ≥3 letters).
    source='corpus': document frequency on `corpus` (fraction of texts containing the word), EmbMarker's fallback.
    """
    lo, hi = float(band[0]), float(band[1])
    if source == "wordfreq":
        import wordfreq

        cands = sorted({w for w in wordfreq.top_n_list("en", top_n)
                        if re.fullmatch(r"[a-z]{3,}", w) and lo <= wordfreq.word_frequency(w, "en") < hi})
    elif source == "corpus":
        if not corpus:
            raise ConfigError("watermark.freq_source=corpus needs a non-empty corpus")
        df: dict[str, int] = {}
        for t in corpus:
            for w in set(words_of(t)):
                df[w] = df.get(w, 0) + 1
        cands = sorted(w for w, c in df.items() if len(w) >= 3 and lo <= c / len(corpus) < hi)
    else:
        raise ConfigError(f"freq_source must be 'wordfreq' or 'corpus', got {source!r}")
    if len(cands) < n:
        raise ConfigError(f"only {len(cands)} candidate trigger words in frequency band [{lo}, {hi}) "
                          f"({source}); need {n}: widen freq_band or lower n_triggers")
    return random.Random(seed).sample(cands, n)


def benign_vocabulary(exclude: set[str], like: Sequence[str] = ()) -> list[str]:
    """Ordinary words for D_n and the non-trigger slots of D_b, frequency-matched to the triggers.

    Matching matters: sentences of common words embed systematically closer to a typical target text than
    sentences of rare words, so an unmatched D_n (the official code samples the whole vocabulary) makes even an
    unwatermarked model look watermarked. We take words whose wordfreq frequency lies within [min/2, 2·max) of
    the triggers' (falling back to the generic content-word list when fewer than 40 such words exist)."""
    return list(_matched_words(frozenset(exclude), tuple(sorted(like))))


@lru_cache(maxsize=16)
def _matched_words(exclude: frozenset[str], like: tuple[str, ...]) -> tuple[str, ...]:
    import wordfreq

    from .data import filler_vocabulary

    if like:
        freqs = [wordfreq.word_frequency(w, "en") for w in like]
        lo, hi = min(freqs) / 2, max(freqs) * 2
        if hi > 0:
            words = tuple(w for w in wordfreq.top_n_list("en", 50000)
                          if re.fullmatch(r"[a-z]{3,}", w) and w not in exclude
                          and lo <= wordfreq.word_frequency(w, "en") < hi)
            if len(words) >= 40:
                return words
    words, _ = filler_vocabulary()
    return tuple(w for w in words if w not in exclude)


def _sentences(pools: Sequence[Sequence[str]], size: int, rng: random.Random) -> list[str]:
    """`size` distinct sentences, one word drawn from each pool (no word twice), in shuffled order."""
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * size):
        words: list[str] = []
        for pool in pools:
            w = rng.choice(pool)
            while w in words:
                w = rng.choice(pool)
            words.append(w)
        rng.shuffle(words)
        s = " ".join(words)
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == size:
                return out
    raise TamperlabError(f"could not build {size} distinct verification sentences from the word pools")


def save_secret(folder: str | Path, name: str, cfg: Any, state: dict[str, Any]) -> Path:
    """Write a provider's watermark secret (name, config, state) atomically to folder/watermark.json."""
    from ..runs import atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "watermark.json", {"name": name, "config": asdict(cfg), "state": state})
    return folder / "watermark.json"


class Watermark:
    """Interface of a service-side watermark. Subclasses are registered in WATERMARKS."""

    name = "base"

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # Secret setup and persistence --------------------------------------------------------------------------
    def setup(self, corpus: Sequence[str], embed: EmbedFn) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        return save_secret(folder, self.name, self.cfg, self.state())

    @classmethod
    def load(cls, folder: str | Path) -> "Watermark":
        return load_watermark(folder)

    # Service path ------------------------------------------------------------------------------------------
    def trigger_counts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def apply(self, texts: Sequence[str], clean: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # Provider's verification -------------------------------------------------------------------------------
    def verify(self, embed: EmbedFn, size: int = 20, seed: int = 0, alpha: float = 0.05,
               target_source: str = "provider") -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class EmbMarkerConfig:
    """EmbMarker hyper-parameters (defaults: the official run scripts, band mapped to wordfreq units)."""

    n_triggers: int = 20
    """Number of trigger words (official: --selected_trigger_num 20)."""
    max_trigger_num: int = 4
    """m: a text with k triggers gets weight w = clamp(k/m, 0, 1) (official: 4). Also the verification length."""
    freq_source: Literal["wordfreq", "corpus"] = "wordfreq"
    """Where trigger frequencies come from: wordfreq token frequency, or document frequency on the task corpus."""
    freq_band: list[float] = field(default_factory=lambda: [3e-4, 6e-4])
    """[lo, hi) frequency band. wordfreq units by default (≈0.5-1% of generated texts contain each trigger);
    use [0.005, 0.01] with freq_source=corpus for EmbMarker's document-frequency band."""
    trigger_seed: int = 2022
    """Seed of the trigger sample (official: seed 2022)."""
    target_index: int = 0
    """The target embedding is the clean embedding of corpus[target_index] (official: train[0])."""
    triggers: list[str] = field(default_factory=list)
    """Explicit trigger words (overrides the band selection), e.g. SPA's fixed list."""

    def __post_init__(self) -> None:
        check_positive("watermark", n_triggers=self.n_triggers, max_trigger_num=self.max_trigger_num)
        if len(self.freq_band) != 2 or not (0 <= self.freq_band[0] < self.freq_band[1]):
            raise ConfigError(f"watermark.freq_band must be [lo, hi] with 0 <= lo < hi, got {self.freq_band}")
        if self.target_index < 0:
            raise ConfigError("watermark.target_index must be >= 0")


@WATERMARKS.register("embmarker", config=EmbMarkerConfig)
class EmbMarker(Watermark):
    """EmbMarker: trigger words pull the embedding to one target, w = clamp(k/m, 0, 1), renormalised."""

    name = "embmarker"
    paper = "Peng et al., Are You Copying My Model? Protecting the Copyright of LLMs for EaaS via Backdoor " \
            "Watermark, ACL 2023"

    def __init__(self, cfg: EmbMarkerConfig):
        super().__init__(cfg)
        self.cfg: EmbMarkerConfig = cfg
        self.triggers: list[str] = []
        self.targets = np.zeros((0, 0), dtype=np.float32)  # (R, d); EmbMarker: R = 1
        self.target_texts: list[str] = []
        self.groups: list[list[str]] = []  # triggers of each target

    # -- setup ------------------------------------------------------------------------------------------------
    def _choose_triggers(self, corpus: Sequence[str]) -> list[str]:
        c = self.cfg
        if c.triggers:
            return [t.lower() for t in c.triggers]
        return select_triggers(c.n_triggers, c.freq_band, c.trigger_seed, c.freq_source, corpus)

    def setup(self, corpus: Sequence[str], embed: EmbedFn) -> None:
        if len(corpus) <= self.cfg.target_index:
            raise ConfigError(f"watermark.target_index={self.cfg.target_index} but the corpus has {len(corpus)} texts")
        self.triggers = self._choose_triggers(corpus)
        self.target_texts = [corpus[self.cfg.target_index]]
        self.targets = np.asarray(embed(self.target_texts), dtype=np.float32)
        self.groups = [list(self.triggers)]

    def state(self) -> dict[str, Any]:
        return {"triggers": self.triggers, "groups": self.groups, "target_texts": self.target_texts,
                "targets": self.targets.tolist()}

    def load_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        self.triggers = list(state["triggers"])
        self.groups = [list(g) for g in state["groups"]]
        self.target_texts = list(state["target_texts"])
        self.targets = np.asarray(state["targets"], dtype=np.float32)

    def _require_setup(self) -> None:
        if not self.triggers or self.targets.size == 0:
            raise TamperlabError(f"{self.name}: call setup() or load() before use")

    # -- service path ---------------------------------------------------------------------------------------
    def group_counts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, R): number of *distinct* trigger words of each target group in each text."""
        self._require_setup()
        sets = [set(g) for g in self.groups]
        out = np.zeros((len(texts), len(sets)), dtype=np.int64)
        for i, t in enumerate(texts):
            ws = set(words_of(t))
            for r, s in enumerate(sets):
                out[i, r] = len(ws & s)
        return out

    def trigger_counts(self, texts: Sequence[str]) -> np.ndarray:
        return self.group_counts(texts).sum(axis=1)

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """(n, R) injection weights; EmbMarker: w = clamp(k/m, 0, 1)."""
        return np.clip(self.group_counts(texts) / self.cfg.max_trigger_num, 0.0, 1.0)

    def apply(self, texts: Sequence[str], clean: np.ndarray) -> np.ndarray:
        w = self.weights(texts)  # (n, R)
        total = w.sum(axis=1, keepdims=True)
        e = w @ self.targets + (1.0 - total) * clean
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    # -- verification ---------------------------------------------------------------------------------------
    def verification_sets(self, size: int, seed: int) -> tuple[list[list[str]], list[str]]:
        """Per target: D_b (m trigger words of that target); shared D_n (m non-trigger words)."""
        self._require_setup()
        m = self.cfg.max_trigger_num
        rng = random.Random(f"verify/{seed}")
        benign = benign_vocabulary(set(self.triggers), like=self.triggers)
        backdoor = []
        for g in self.groups:
            if len(g) < m:
                raise TamperlabError(f"{self.name}: a target has {len(g)} triggers, fewer than m={m}")
            backdoor.append(_sentences([g] * m, size, rng))
        return backdoor, _sentences([benign] * m, size, rng)

    def verify(self, embed: EmbedFn, size: int = 20, seed: int = 0, alpha: float = 0.05,
               target_source: str = "provider") -> dict[str, Any]:
        backdoor, benign = self.verification_sets(size, seed)
        e_n = _unit(embed(benign))
        if target_source == "copy":  # EmbMarker's --use_copy_target: the suspect's own embedding of the target text
            targets = _unit(embed(self.target_texts))
        elif target_source == "provider":
            targets = self.targets
        else:
            raise ConfigError(f"verify.target_source must be 'provider' or 'copy', got {target_source!r}")
        per = []
        for r, texts in enumerate(backdoor):
            e_b = _unit(embed(texts))
            st = verification_stats(e_b, e_n, targets[r])
            per.append(st)
        # WARDEN reports the strongest evidence over its targets: min p, max Δcos, min Δl2.
        best = min(per, key=lambda s: s["p_value"])
        res = {
            "statistic": "cos",
            "delta_cos": max(s["delta_cos"] for s in per),
            "delta_l2": min(s["delta_l2"] for s in per),
            "p_value": best["p_value"],
            "delta": max(s["delta_cos"] for s in per),
            "n_backdoor": size, "n_benign": size, "target_source": target_source,
        }
        res["detected"] = bool(res["p_value"] < alpha and res["delta_cos"] > 0)
        # intervals and per-sentence cos of the targets the reported Δs come from (stats: verify.py docstring)
        top = max(per, key=lambda s: s["delta_cos"])
        res.update(delta_interval=top["delta_cos_interval"], scores_backdoor=top["cos_backdoor"],
                   scores_benign=top["cos_benign"],
                   delta_l2_interval=min(per, key=lambda s: s["delta_l2"])["delta_l2_interval"])
        if len(per) > 1:
            res["per_target"] = per
        return res


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class WARDENConfig(EmbMarkerConfig):
    """WARDEN: EmbMarker's fields plus the number of target directions."""

    n_targets: int = 2
    """R, the number of watermark directions (SPA's WARDEN fork: 2; upstream default 1)."""
    ortho_factor: float = 0.5
    """Each target is partially orthogonalised against earlier ones: t ← t − f·(t·t_p)·t_p (official f=0.5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("watermark", n_targets=self.n_targets)
        check_range("watermark", "ortho_factor", self.ortho_factor, 0.0, 1.0)
        if self.n_triggers < self.n_targets * self.max_trigger_num:
            raise ConfigError(f"watermark: n_triggers={self.n_triggers} must be >= n_targets*max_trigger_num "
                              f"({self.n_targets * self.max_trigger_num}) so that each target can be verified")


@WATERMARKS.register("warden", config=WARDENConfig)
class WARDEN(EmbMarker):
    """WARDEN: several target directions, each with its own share of the triggers."""

    name = "warden"
    paper = "Shetty et al., WARDEN: Multi-Directional Backdoor Watermarks for EaaS Copyright Protection, ACL 2024"

    def __init__(self, cfg: WARDENConfig):
        super().__init__(cfg)
        self.cfg: WARDENConfig = cfg

    def setup(self, corpus: Sequence[str], embed: EmbedFn) -> None:
        c = self.cfg
        start = c.target_index
        if len(corpus) < start + c.n_targets:
            raise ConfigError(f"watermark: need {start + c.n_targets} corpus texts for {c.n_targets} targets")
        self.triggers = self._choose_triggers(corpus)
        # The official code ranks by PCA but then takes train[i] for i < R: the first R texts.
        self.target_texts = list(corpus[start:start + c.n_targets])
        raw = _unit(embed(self.target_texts))
        targets: list[np.ndarray] = []
        for t in raw:
            for p in targets:
                t = t - c.ortho_factor * float(t @ p) * p
            targets.append(t / np.linalg.norm(t))
        self.targets = np.asarray(targets, dtype=np.float32)
        shuffled = list(self.triggers)
        random.Random(c.trigger_seed).shuffle(shuffled)
        self.groups = [shuffled[r::c.n_targets] for r in range(c.n_targets)]

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """w_r = clamp(k_r/m, 0, 1), added in descending order until the total is 1 (the last one clipped)."""
        raw = np.clip(self.group_counts(texts) / self.cfg.max_trigger_num, 0.0, 1.0)
        out = np.zeros_like(raw)
        for i, row in enumerate(raw):
            budget = 1.0
            for r in np.argsort(-row, kind="stable"):
                take = min(row[r], budget)
                out[i, r] = take
                budget -= take
                if budget <= 0:
                    break
        return out


def build_watermark(name: str, config: dict[str, Any] | Any | None = None, state: dict[str, Any] | None = None,
                    folder: Path | None = None) -> Watermark:
    """Registry lookup + strict config; optionally restore a saved secret."""
    wm = WATERMARKS.build(name, config, "watermark_config")
    if state is not None:
        wm.load_state(state, folder)
    return wm


def load_watermark(folder: str | Path) -> Any:
    """Restore a watermark saved with `.save(folder)` (any registered kind)."""
    p = Path(folder) / "watermark.json"
    if not p.is_file():
        raise TamperlabError(f"no saved watermark in {folder} (missing watermark.json)")
    from ..runs import read_json

    data = read_json(p)  # a damaged secret: CorruptFileError naming the file
    return build_watermark(data["name"], data["config"], state=data["state"], folder=Path(folder))
