"""Persistent per-key query log (SQLite) that the provider can audit.

One row per HTTP request, refused ones included (401, 413, 429, …): time, request id (unique; the
`x-request-id` the client saw), the client's own `x-client-request-id`, key name (never the secret), path,
status, number of input texts and tokens, how many inputs carried watermark triggers, latency, error, and — per
`retention` — the input texts and the `user` field:

- `full`: the texts as JSON (content audits, e.g. SPA's perturbation pattern; watermark forensics);
- `hash`: a keyed HMAC-SHA256 per text (the key sits beside the database, mode 0600): "did this key send text
  X?" can be answered, the texts cannot be read back or guessed from the log alone;
- `none`: counts only.

The database and its WAL/SHM files are created mode 0600 (SQLite gives the side files the database's mode).
WAL mode: audits read while the server writes, and several worker processes append to one file safely —
SQLite lets one writer in at a time and the others wait (busy timeout) instead of failing. Every row is
committed before the response leaves, so no row is lost when a process stops.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from ..runs import CorruptFileError

Retention = Literal["full", "hash", "none"]

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
_ADDED_COLUMNS = {"request_id": "TEXT", "client_request_id": "TEXT", "user_id": "TEXT", "text_hashes": "TEXT",
                  "retention": "TEXT"}


def _private_file(path: Path) -> None:
    """Create `path` mode 0600 if absent; tighten it if it exists with a looser mode."""
    os.close(os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


class QueryLog:
    """Thread-safe append-only SQLite log (one connection per process; processes share the file)."""

    def __init__(self, path: str | Path, retention: Retention = "hash"):
        if retention not in ("full", "hash", "none"):
            raise ValueError(f"retention must be full, hash or none, got {retention!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        _private_file(self.path)
        for side in ("-wal", "-shm"):
            if Path(str(self.path) + side).exists():
                _private_file(Path(str(self.path) + side))
        self._hash_key = self._load_hash_key() if retention == "hash" else b""
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        with self._conn:  # schema + migration in one transaction (several workers may open it at once)
            self._conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(queries)")}
            for col, kind in _ADDED_COLUMNS.items():
                if col not in have:
                    self._conn.execute(f"ALTER TABLE queries ADD COLUMN {col} {kind}")
            self._conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS queries_request ON queries(request_id)")

    @property
    def log_texts(self) -> bool:
        return self.retention == "full"

    def _load_hash_key(self) -> bytes:
        kfile = Path(str(self.path) + ".hashkey")
        if not kfile.exists():
            # Written whole to a private temporary, then linked to the final name: the key file appears complete
            # or not at all (a kill never leaves an empty one), and of two workers racing, the first link wins.
            fd, tmp = tempfile.mkstemp(dir=kfile.parent, prefix=f".{kfile.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, kfile)
            except FileExistsError:  # another worker created it first
                pass
            finally:
                os.unlink(tmp)
        key = kfile.read_text(errors="replace").strip()
        try:
            if len(key) != 64:
                raise ValueError(key)
            return bytes.fromhex(key)
        except ValueError:
            raise CorruptFileError(f"{kfile} is corrupt (not a 64-digit hex key); the query log's text hashes "
                                   "depend on it: restore it, or move the log and the key away") from None

    def text_hash(self, text: str) -> str:
        """The keyed hash the log stores for `text` under retention 'hash' (for membership checks)."""
        return hmac.new(self._hash_key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def record(self, *, key_name: str | None, method: str, path: str, status: int, n_inputs: int = 0,
               n_tokens: int = 0, n_triggered: int = 0, latency_ms: float = 0.0, error: str | None = None,
               texts: Sequence[str] | None = None, request_id: str | None = None,
               client_request_id: str | None = None, user: str | None = None) -> None:
        blob = hashes = user_col = None
        if self.retention == "full":
            blob = json.dumps(list(texts), ensure_ascii=False) if texts else None
            user_col = user
        elif self.retention == "hash":
            hashes = json.dumps([self.text_hash(t) for t in texts]) if texts else None
            user_col = self.text_hash(user) if user else None
        with self._lock:
            self._conn.execute(
                "INSERT INTO queries (ts, key_name, method, path, status, n_inputs, n_tokens, n_triggered, "
                "latency_ms, error, texts, request_id, client_request_id, user_id, text_hashes, retention) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (time.time(), key_name, method, path, int(status), int(n_inputs), int(n_tokens),
                 int(n_triggered), float(latency_ms), error, blob, request_id, client_request_id, user_col,
                 hashes, self.retention))
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

    def sent_text(self, key_name: str, text: str) -> bool:
        """Did `key_name` send exactly `text` in a served request? (retention full or hash; False under none)."""
        for r in self.rows(key_name):
            if r["status"] >= 400:
                continue
            if r["texts"] and text in json.loads(r["texts"]):
                return True
            if r["text_hashes"] and self._hash_key and self.text_hash(text) in json.loads(r["text_hashes"]):
                return True
        return False

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
