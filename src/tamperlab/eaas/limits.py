"""Per-key rate limits: token buckets for requests, input texts and input tokens, taken all-or-nothing.

A request is admitted only if every bucket holds its cost; then all are charged at once, else nothing is
(so a refused request does not eat a later one's budget). A cost larger than a bucket's capacity can never be
admitted: that is a 400 telling the client to split, never a 429 — so every 429's `Retry-After` is a time after
which the bucket *will* hold the cost (if the key sends nothing else meanwhile).

Bucket state lives in memory for one process, or in a small SQLite file shared by all workers (one
`BEGIN IMMEDIATE` transaction per charge makes read-refill-charge atomic across processes).
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apierrors import APIError
from .settings import ServerConfig

_UNIT = {"requests": "requests", "texts": "input texts", "tokens": "input tokens"}
_ABBR = {"requests": "RPM", "texts": "TPM (texts)", "tokens": "TPM"}


@dataclass(frozen=True)
class Rate:
    """A bucket's refill rate (per minute) and capacity."""

    per_minute: float
    capacity: float

    @property
    def per_s(self) -> float:
        return self.per_minute / 60.0


def charge(state: dict[str, tuple[float, float]], costs: dict[str, float], rates: dict[str, Rate],
           now: float) -> tuple[dict[str, float], dict[str, float]]:
    """Pure bucket arithmetic. state: bucket → (level, time) (absent = full). Returns (levels after refill —
    and after the charge if nothing blocked —, blocked: bucket → seconds until it would hold its cost)."""
    levels = {}
    for b, r in rates.items():
        if b in state:
            level, t = state[b]
            levels[b] = min(r.capacity, level + max(0.0, now - t) * r.per_s)
        else:
            levels[b] = r.capacity
    blocked = {b: (c - levels[b]) / rates[b].per_s for b, c in costs.items() if b in rates and c > levels[b]}
    if not blocked:
        for b, c in costs.items():
            if b in rates:
                levels[b] -= c
    return levels, blocked


class MemoryBuckets:
    """Bucket state of one process."""

    blocking = False
    """Charges never wait on another process: the app runs them inline."""

    def __init__(self, max_keys: int = 100_000):
        self._state: OrderedDict[str, dict[str, tuple[float, float]]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_keys = max_keys  # bounds memory when keys are client addresses

    def take(self, key: str, costs: dict[str, float], rates: dict[str, Rate]) -> tuple[dict[str, float],
                                                                                       dict[str, float]]:
        with self._lock:
            now = time.monotonic()
            levels, blocked = charge(self._state.get(key, {}), costs, rates, now)
            if not blocked:
                self._state[key] = {b: (v, now) for b, v in levels.items()}
                self._state.move_to_end(key)
                while len(self._state) > self.max_keys:
                    self._state.popitem(last=False)  # the oldest idle key: its bucket has refilled anyway
            return levels, blocked

    def close(self) -> None:
        pass


class SQLiteBuckets:
    """Bucket state shared by the processes of one server (WAL; one IMMEDIATE transaction per charge)."""

    blocking = True
    """A charge may wait on another process's lock: the app runs it off the event loop."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # limits need atomicity across workers, not durability
        self._conn.execute("CREATE TABLE IF NOT EXISTS buckets (key TEXT, bucket TEXT, level REAL, t REAL, "
                           "PRIMARY KEY (key, bucket))")

    def take(self, key: str, costs: dict[str, float], rates: dict[str, Rate]) -> tuple[dict[str, float],
                                                                                       dict[str, float]]:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()  # wall clock: the one clock every worker shares
                state = {b: (lv, t) for b, lv, t in
                         c.execute("SELECT bucket, level, t FROM buckets WHERE key=?", (key,))}
                levels, blocked = charge(state, costs, rates, now)
                if not blocked:
                    c.executemany("INSERT OR REPLACE INTO buckets VALUES (?,?,?,?)",
                                  [(key, b, v, now) for b, v in levels.items()])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return levels, blocked

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _duration(s: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: '20ms', '1.5s', '6m0s'."""
    if s < 1:
        return f"{max(0, math.ceil(s * 1000))}ms"
    if s < 60:
        return f"{s:.3g}s"
    m, sec = divmod(s, 60)
    return f"{int(m)}m{int(sec)}s"


class RateLimiter:
    """Per-key buckets (requests / texts / tokens) and a per-address bucket for requests without a valid key."""

    def __init__(self, cfg: ServerConfig, key_names: list[str], store: MemoryBuckets | SQLiteBuckets):
        self.store = store
        specs = {k.name: k for k in cfg.keys}
        self.rates: dict[str, dict[str, Rate]] = {}
        for name in key_names:
            spec = specs.get(name)
            rpm = (spec and spec.requests_per_minute) or cfg.requests_per_minute
            burst = (spec and spec.burst) or cfg.burst
            texts = (spec and spec.texts_per_minute) or cfg.texts_per_minute
            tokens = (spec and spec.tokens_per_minute) or cfg.tokens_per_minute
            r: dict[str, Rate] = {}
            if rpm > 0:
                r["requests"] = Rate(rpm, burst)
            if texts > 0:
                r["texts"] = Rate(texts, texts)
            if tokens > 0:
                r["tokens"] = Rate(tokens, tokens)
            self.rates[name] = r
        self.anonymous = ({"requests": Rate(cfg.anonymous_requests_per_minute, cfg.anonymous_burst)}
                          if cfg.anonymous_requests_per_minute > 0 else {})

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Call a charging method inline, or in a thread when the store may wait on another process's lock."""
        if self.store.blocking:
            return await asyncio.to_thread(fn, *args, **kw)
        return fn(*args, **kw)

    def check_size(self, name: str, n_texts: int, n_tokens: int) -> None:
        """400 for a request that no amount of waiting would admit (more than a bucket holds)."""
        for b, n in (("texts", n_texts), ("tokens", n_tokens)):
            r = self.rates[name].get(b)
            if r is not None and n > r.capacity:
                raise APIError(400, f"this request has {n} {_UNIT[b]} but your key may send at most "
                               f"{r.capacity:g} per minute; split it into smaller requests",
                               "request_exceeds_rate_limit", "input")

    def take(self, name: str, **costs: float) -> dict[str, str]:
        """Charge key `name`; → x-ratelimit-* headers, or APIError 429 with a satisfiable Retry-After."""
        rates = self.rates[name]
        if not rates:  # an unlimited key: no state to read or write
            return {}
        levels, blocked = self.store.take(f"key:{name}", costs, rates)
        headers = {}
        for b, r in rates.items():
            headers[f"x-ratelimit-limit-{b}"] = f"{r.per_minute:g}"
            headers[f"x-ratelimit-remaining-{b}"] = str(max(0, math.floor(levels[b])))
            headers[f"x-ratelimit-reset-{b}"] = _duration((r.capacity - levels[b]) / r.per_s)
        if blocked:
            self._refuse(blocked, rates, costs, levels, headers, f"key {name!r}")
        return headers

    def take_anonymous(self, address: str) -> None:
        if not self.anonymous:
            return
        levels, blocked = self.store.take(f"anon:{address}", {"requests": 1}, self.anonymous)
        if blocked:
            self._refuse(blocked, self.anonymous, {"requests": 1}, levels, {}, f"unauthenticated client {address}")

    @staticmethod
    def _refuse(blocked: dict[str, float], rates: dict[str, Rate], costs: dict[str, float],
                levels: dict[str, float], headers: dict[str, str], who: str) -> None:
        b, wait = max(blocked.items(), key=lambda kv: kv[1])
        r = rates[b]
        headers = {**headers, "Retry-After": str(max(1, math.ceil(wait))),
                   "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        raise APIError(429, f"Rate limit reached for {_UNIT[b]} per min ({_ABBR[b]}) on {who}: limit "
                       f"{r.per_minute:g}/min, bucket {r.capacity:g}, available {levels[b]:.0f}, requested "
                       f"{costs[b]:g}. Please try again in {wait:.3g}s.", "rate_limit_exceeded",
                       headers=headers, type_=b)
