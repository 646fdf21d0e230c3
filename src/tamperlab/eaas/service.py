"""The provider: a clean embedder plus a service-side watermark, and the dynamic batcher the server uses.

`EmbeddingService.embed(texts)` returns what a customer receives: clean embeddings with the watermark applied.
`Batcher` merges texts of concurrent requests into one `encode` call (up to `max_texts`, waiting at most
`max_wait_ms` for company), because one large batch through the transformer is much cheaper than many small
ones on a CPU, and it keeps one encode at a time (no thread oversubscription on 2 cores).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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
    batch_size: int = 64
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


class Batcher:
    """Async micro-batching in front of `EmbeddingService.embed` (one encode at a time, in a worker thread)."""

    def __init__(self, service: EmbeddingService, max_texts: int = 128, max_wait_ms: float = 5.0):
        self.service = service
        self.max_texts = max_texts
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, int]:
        assert self._queue is not None, "Batcher.start() not called"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, fut))
        return await fut

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            n = len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_texts:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                n += len(item[0])
            texts = [t for item in batch for t in item[0]]
            try:
                emb, counts = await asyncio.to_thread(self.service.embed, texts)
            except Exception as e:  # deliver the failure to every waiting request instead of killing the loop
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0  # split back per request, so each log row gets its own trigger count
            for item_texts, fut in batch:
                end = start + len(item_texts)
                if not fut.done():
                    fut.set_result((emb[start:end], int(counts[start:end].sum())))
                start = end
