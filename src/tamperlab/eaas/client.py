"""HTTP client of an OpenAI-compatible embedding service (what the stealer and the auditor use).

Batches the texts and retries what a later attempt can fix — 429 (after the server's Retry-After), 5xx, a
connection that fails or times out, a body that arrives cut or garbled — a bounded number of times within a
bounded total time, with exponential backoff where the server gives no wait. Everything else (4xx, a well-formed
answer that is wrong: another row count, another dimension, NaN or infinite values) fails at once. Every failure
is one TamperlabError line naming the service and what was wrong; a bad answer is never returned as vectors.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..errors import TamperlabError

log = logging.getLogger("tamperlab")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers a later attempt may not get (OpenAI's clients retry the same ones, plus 408/409)."""


class EmbeddingServiceError(TamperlabError):
    """The embedding service could not be reached or answered with an error or a malformed response."""


class _Retryable(Exception):
    """One failed attempt that a later one may fix; `wait` = the server's own Retry-After, if it gave one."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def _retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms (OpenAI's precise form) or Retry-After (seconds); None if absent or unusable
    (an HTTP date, garbage, negative, not finite: the caller then backs off on its own schedule)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            wait = float(raw) / scale
        except ValueError:
            continue
        if math.isfinite(wait) and wait >= 0:
            return wait
    return None


class EmbeddingClient:
    """Embeds texts through `POST {base_url}/v1/embeddings`."""

    def __init__(self, base_url: str, api_key: str, model: str, batch_size: int = 64, concurrency: int = 2,
                 timeout: float = 120.0, max_retries: int = 8, max_total_s: float = 3600.0,
                 backoff_s: float = 0.5, dim: int | None = None):
        """`max_retries`: retries per request (429, 5xx, network, garbled body); `max_total_s`: bound on one
        `embed` call, waits included; `backoff_s`: first wait when the server names none (doubled per retry, at
        most 30 s); `dim`: the expected embedding size (None = taken from the first answer, then enforced)."""
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.max_total_s = max_total_s
        self.backoff_s = backoff_s
        self.dim = dim
        self._dim_lock = threading.Lock()
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

    def _fail(self, what: str) -> EmbeddingServiceError:
        return EmbeddingServiceError(f"embedding service {self.base_url}: {what}")

    def _attempt(self, body: dict[str, Any], n: int) -> np.ndarray:
        """One request → (n, d) float32, or _Retryable, or EmbeddingServiceError."""
        import httpx

        self.requests_sent += 1
        try:
            r = self._http.post("/v1/embeddings", json=body)
        except httpx.TransportError as e:  # refused, reset, timed out, cut mid-body
            raise _Retryable(f"unreachable ({type(e).__name__}: {e or 'no detail'})") from None
        if r.status_code != 200:
            try:
                msg = str(r.json()["error"]["message"])
            except Exception:
                msg = r.text[:300] or "(empty body)"
            msg = " ".join(msg.split())  # one line, whatever the server sent
            what = f"answered {r.status_code}: {msg}"
            if r.status_code in RETRY_STATUSES:
                raise _Retryable(what, _retry_after(r.headers) if r.status_code in (429, 503) else None)
            raise self._fail(what)
        try:
            data = r.json()
        except ValueError as e:  # garbage or a body cut short: the next attempt may get it whole
            raise _Retryable(f"answered 200 with a body that is not JSON ({e})") from None
        return self._decode(data, n)

    def _decode(self, data: Any, n: int) -> np.ndarray:
        """Check a 200 body against the request: n rows, indices 0..n-1, one dimension, finite float32 values."""
        try:
            rows = data["data"]
            if not isinstance(rows, list):
                raise TypeError("'data' is not a list")
            if len(rows) != n:
                raise ValueError(f"{len(rows)} embeddings for {n} inputs")
            rows = sorted(rows, key=lambda d: d["index"])
            if [d["index"] for d in rows] != list(range(n)):
                raise ValueError(f"indices {[d['index'] for d in rows][:10]} are not 0..{n - 1}")
            vecs = []
            for d in rows:
                e = d["embedding"]
                if isinstance(e, str):
                    raw = base64.b64decode(e, validate=True)
                    if len(raw) % 4:
                        raise ValueError(f"base64 embedding {d['index']} is {len(raw)} bytes, not float32s")
                    vecs.append(np.frombuffer(raw, dtype="<f4"))
                else:
                    vecs.append(np.asarray(e, dtype=np.float32))
                    if vecs[-1].ndim != 1:
                        raise ValueError(f"embedding {d['index']} is not a flat list of numbers")
            tokens = int((data.get("usage") or {}).get("total_tokens", 0))
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise self._fail(f"malformed embeddings response ({type(e).__name__}: {e})") from None
        dims = {len(v) for v in vecs}
        with self._dim_lock:
            want = self.dim if self.dim is not None else (dims.pop() if len(dims) == 1 else None)
            bad = [i for i, v in enumerate(vecs) if len(v) != want]
            if want is None or want == 0 or bad:
                got = sorted({len(vecs[i]) for i in bad} or dims)
                raise self._fail(f"embeddings of dimension {got} in one response, expected {want or 'one size'}")
            self.dim = want
        out = np.stack(vecs)
        if not np.isfinite(out).all():
            rows_bad = np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist()
            raise self._fail(f"non-finite values (NaN/inf) in the embeddings of inputs {rows_bad[:10]}")
        self.tokens += tokens
        return out

    def _post(self, texts: list[str], deadline: float) -> np.ndarray:
        body = {"input": texts, "model": self.model, "encoding_format": "base64"}
        for attempt in range(self.max_retries + 1):
            try:
                return self._attempt(body, len(texts))
            except _Retryable as e:
                failure = e
            if attempt == self.max_retries:
                break
            wait = failure.wait if failure.wait is not None else min(30.0, self.backoff_s * 2 ** attempt)
            if time.monotonic() + wait > deadline:
                raise self._fail(f"{failure} (gave up: waiting {wait:.3g}s more would pass the client's "
                                 f"max_total_s {self.max_total_s:g})")
            self.retries += 1
            log.info("embedding service %s: %s; retrying in %.3g s", self.base_url, failure, wait)
            time.sleep(wait)
        raise self._fail(f"{failure} (after {self.max_retries} retries)")

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
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            futs = {pool.submit(self._post, c, deadline): i for i, c in enumerate(chunks)}
            for fut, i in futs.items():
                out[i] = fut.result()
                bar.update(len(chunks[i]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the chunks not yet sent
            bar.close()
        return np.concatenate(out, axis=0).astype(np.float32)
