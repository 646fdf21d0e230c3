"""Async micro-batching in front of `EmbeddingService.embed`, with per-request failure isolation.

Texts of concurrent requests are merged into one encode call (up to `max_texts`, waiting at most `max_wait_ms`
for company), because one large batch through the transformer is much cheaper than many small ones on a CPU,
and one encode at a time avoids thread oversubscription. If a merged encode raises, each request of the batch
is encoded again on its own: a request that fails alone gets its error, every other request gets its vectors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .service import EmbeddingService

log = logging.getLogger("tamperlab")


class Batcher:
    """Merge concurrent `submit` calls into few `service.embed` calls (run in a worker thread)."""

    def __init__(self, service: "EmbeddingService", max_texts: int = 128, max_wait_ms: float = 5.0):
        self.service = service
        self.max_texts = max_texts
        self.max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.isolated_failures = 0
        """Merged encodes that failed and were retried request by request."""

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
        """(embeddings of `texts`, how many carried a watermark trigger)."""
        assert self._queue is not None, "Batcher.start() not called"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, fut))
        return await fut

    async def _collect(self) -> list[tuple[list[str], asyncio.Future[Any]]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        batch, n = [first], len(first[0])
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
        return batch

    async def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(self.service.embed, texts)

    async def _loop(self) -> None:
        while True:
            batch = [item for item in await self._collect() if not item[1].done()]  # drop cancelled callers
            if not batch:
                continue
            texts = [t for item in batch for t in item[0]]
            try:
                emb, trig = await self._encode(texts)
            except Exception as e:
                if len(batch) == 1:
                    batch[0][1].set_exception(e)
                    continue
                # Isolate: one request's bad input must not fail the requests it happened to be merged with.
                self.isolated_failures += 1
                log.warning("merged encode of %d requests failed (%s: %s); retrying each alone",
                            len(batch), type(e).__name__, e)
                for item_texts, fut in batch:
                    try:
                        one, one_trig = await self._encode(item_texts)
                    except Exception as e1:  # this request's own failure, delivered to it only
                        if not fut.done():
                            fut.set_exception(e1)
                    else:
                        if not fut.done():
                            fut.set_result((one, int(one_trig.sum())))
                continue
            start = 0  # split back per request, so each log row gets its own trigger count
            for item_texts, fut in batch:
                end = start + len(item_texts)
                if not fut.done():
                    fut.set_result((emb[start:end], int(trig[start:end].sum())))
                start = end
