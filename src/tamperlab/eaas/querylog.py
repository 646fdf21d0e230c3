"""Persistent per-key query log (SQLite) that the provider can audit.

One row per HTTP request, refused ones included (401, 413, 429, …): time, key name (never the secret), path,
status, number of input texts and tokens, how many inputs carried watermark triggers, latency, and — when
`log_texts` is on — a JSON list of the texts (needed to audit *what* a key asked, e.g. SPA's perturbation
pattern; off means only counts are kept). WAL mode: readers (audits) never block the server's writes, and every
row is committed before the response leaves, so no row is lost when the process stops.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    key_name TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    n_inputs INTEGER NOT NULL DEFAULT 0,
    n_tokens INTEGER NOT NULL DEFAULT 0,
    n_triggered INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    error TEXT,
    texts TEXT
);
CREATE INDEX IF NOT EXISTS queries_key ON queries(key_name, ts);
"""


class QueryLog:
    """Thread-safe append-only SQLite log."""

    def __init__(self, path: str | Path, log_texts: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_texts = log_texts
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        self._conn.executescript(_SCHEMA)
        self._conn.commit()

    def record(self, *, key_name: str | None, method: str, path: str, status: int, n_inputs: int = 0,
               n_tokens: int = 0, n_triggered: int = 0, latency_ms: float = 0.0, error: str | None = None,
               texts: Sequence[str] | None = None) -> None:
        blob = json.dumps(list(texts)) if (self.log_texts and texts) else None
        with self._lock:
            self._conn.execute(
                "INSERT INTO queries (ts, key_name, method, path, status, n_inputs, n_tokens, n_triggered, "
                "latency_ms, error, texts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (time.time(), key_name, method, path, int(status), int(n_inputs), int(n_tokens),
                 int(n_triggered), float(latency_ms), error, blob))
            self._conn.commit()

    def count(self, key_name: str | None = None) -> int:
        with self._lock:
            if key_name is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM queries WHERE key_name=?",
                                          (key_name,)).fetchone()[0])

    def rows(self, key_name: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM queries" + (" WHERE key_name=?" if key_name is not None else "") + " ORDER BY id"
        if limit:
            q += f" LIMIT {int(limit)}"
        with self._lock:
            cur = self._conn.execute(q, (key_name,) if key_name is not None else ())
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def audit(self) -> list[dict[str, Any]]:
        """Per key: requests, refused requests, texts and tokens served, triggered inputs, time span."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT key_name, COUNT(*), SUM(status >= 400), SUM(CASE WHEN status < 400 THEN n_inputs END), "
                "SUM(CASE WHEN status < 400 THEN n_tokens END), SUM(n_triggered), MIN(ts), MAX(ts), "
                "SUM(status = 429) FROM queries GROUP BY key_name ORDER BY COUNT(*) DESC")
            out = []
            for key, n, refused, texts, toks, trig, t0, t1, limited in cur.fetchall():
                texts = int(texts or 0)
                out.append({"key": key, "requests": n, "refused": int(refused or 0),
                            "rate_limited": int(limited or 0), "texts": texts, "tokens": int(toks or 0),
                            "triggered_texts": int(trig or 0),
                            "triggered_fraction": (int(trig or 0) / texts) if texts else 0.0,
                            "first_ts": t0, "last_ts": t1})
            return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()
