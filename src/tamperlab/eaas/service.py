"""The provider: a clean embedder plus a service-side watermark, and the dynamic batcher the server uses.

`EmbeddingService.embed(texts)` returns what a customer receives: clean embeddings with the watermark applied.
(The micro-batcher in front of it is `batching.Batcher`.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import PosInt
from ..errors import ConfigError
from .embedder import Embedder

log = logging.getLogger("tamperlab")


@dataclass
class ProviderConfig:
    """What the EaaS provider serves."""

    model: str = "embedded"
    """Sentence-transformers model: 'embedded' (packaged all-MiniLM-L6-v2), a local folder, or a hub id."""
    model_name: str = "tamperlab-minilm"
    """Model name exposed by the API (`model` field of requests and responses)."""
    watermark: str = "embmarker"
    """Registered watermark applied inside the service (embmarker, warden, saw) or 'none'."""
    watermark_config: dict[str, Any] = field(default_factory=dict)
    """Fields of that watermark's config dataclass (strictly checked)."""
    batch_size: PosInt = 64
    """Batch size of one transformer forward pass."""
    cache_size: int = 0
    """Clean-embedding LRU cache entries (0 = off)."""

    def __post_init__(self) -> None:
        if self.watermark != "none":
            from .watermarks import build_watermark

            build_watermark(self.watermark, self.watermark_config)  # validates names/keys now, not mid-run


class EmbeddingService:
    """Clean embedder + watermark → the embeddings a customer receives."""

    def __init__(self, embedder: Embedder, watermark: Any | None, model_name: str):
        self.embedder = embedder
        self.watermark = watermark
        self.model_name = model_name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, boolean mask of the texts that carried ≥1 trigger word)."""
        clean = self.embedder.encode(list(texts))
        if self.watermark is None:
            return clean, np.zeros(len(texts), dtype=bool)
        return self.watermark.apply(texts, clean), self.watermark.trigger_counts(texts) > 0


def build_service(cfg: ProviderConfig, corpus: Sequence[str], state_dir: str | Path | None,
                  embedder: Embedder | None = None) -> EmbeddingService:
    """Load the embedder; create the watermark secret from `corpus` or restore it from `state_dir`."""
    from .watermarks import build_watermark, load_watermark

    emb = embedder or Embedder.load(cfg.model, batch_size=cfg.batch_size, cache_size=cfg.cache_size)
    wm = None
    if cfg.watermark != "none":
        saved = Path(state_dir) / "watermark.json" if state_dir else None
        if saved is not None and saved.is_file():
            wm = load_watermark(saved.parent)
            if wm.name != cfg.watermark:
                raise ConfigError(f"{saved} holds a {wm.name!r} watermark but the recipe asks for "
                                  f"{cfg.watermark!r}; use another state_dir")
            if hasattr(wm, "attach"):
                wm.attach(emb.encode)
            log.info("watermark secret restored from %s", saved)
        else:
            wm = build_watermark(cfg.watermark, cfg.watermark_config)
            wm.setup(list(corpus), emb.encode)
            if state_dir:
                wm.save(state_dir)
    return EmbeddingService(emb, wm, cfg.model_name)


from .batching import Batcher  # noqa: E402  (moved; re-exported for existing imports)

__all__ = ["ProviderConfig", "EmbeddingService", "build_service", "Batcher"]
