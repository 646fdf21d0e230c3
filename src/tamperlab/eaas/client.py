"""HTTP client of an OpenAI-compatible embedding service (what the stealer and the auditor use).

Batches the texts, honours 429 Retry-After with a bounded number of retries and a bounded total time, and
turns HTTP errors into TamperlabError messages that quote the server's error.
"""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..errors import TamperlabError

log = logging.getLogger("tamperlab")


class EmbeddingClient:
    """Embeds texts through `POST {base_url}/v1/embeddings`."""

    def __init__(self, base_url: str, api_key: str, model: str, batch_size: int = 64, concurrency: int = 2,
                 timeout: float = 120.0, max_retries: int = 8, max_total_s: float = 3600.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.max_total_s = max_total_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"},
                                  limits=httpx.Limits(max_connections=self.concurrency + 1))
        self.requests_sent = 0
        self.retries = 0
        self.tokens = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _post(self, texts: list[str], deadline: float) -> np.ndarray:
        body = {"input": texts, "model": self.model, "encoding_format": "base64"}
        for attempt in range(self.max_retries + 1):
            self.requests_sent += 1
            r = self._http.post("/v1/embeddings", json=body)
            if r.status_code == 200:
                data = r.json()
                self.tokens += int(data.get("usage", {}).get("total_tokens", 0))
                rows = sorted(data["data"], key=lambda d: d["index"])
                return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                                 if isinstance(d["embedding"], str) else np.asarray(d["embedding"], np.float32)
                                 for d in rows])
            if r.status_code == 429 and attempt < self.max_retries:
                # The server's Retry-After is always satisfiable; retry-after-ms is the precise form (OpenAI's).
                ms = r.headers.get("retry-after-ms")
                wait = float(ms) / 1000 if ms else float(r.headers.get("retry-after", "1") or 1)
                if time.monotonic() + wait > deadline:
                    break
                self.retries += 1
                time.sleep(wait)
                continue
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:300]
            raise TamperlabError(f"embedding service {self.base_url} answered {r.status_code}: {msg}")
        raise TamperlabError(f"embedding service {self.base_url}: still rate-limited after {self.retries} retries")

    def embed(self, texts: Sequence[str], desc: str = "querying EaaS", progress: bool = True) -> np.ndarray:
        """(n, d) float32 embeddings of `texts`, in order."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            raise TamperlabError("nothing to embed")
        chunks = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        deadline = time.monotonic() + self.max_total_s
        out: list[np.ndarray] = [np.zeros(0)] * len(chunks)
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False)
        # A few requests in flight let JSON/HTTP work overlap the server's encoding; the server batches them.
        with ThreadPoolExecutor(self.concurrency) as pool:
            futs = {pool.submit(self._post, c, deadline): i for i, c in enumerate(chunks)}
            for fut, i in futs.items():
                out[i] = fut.result()
                bar.update(len(chunks[i]))
        bar.close()
        return np.concatenate(out, axis=0).astype(np.float32)
