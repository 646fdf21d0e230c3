"""Helpers of the EaaS API tests: a word-level tokenizer with ids and decode, a bag-of-words model that can be
poisoned (its encode raises on the word POISON) or slowed down, and a service/app factory that uvicorn worker
processes can import (`eaas_api_helpers:bow_app`, configured through environment variables)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from eaas_helpers import TRIGGERS, BagOfWordsModel

VOCAB = 50_000
_WORDS: dict[int, str] = {}  # id → word, shared by every copy of the tokenizer in this process
MODEL = "test-embed"


def word_id(w: str) -> int:
    i = 3 + int.from_bytes(hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                           "little") % (VOCAB - 3)
    _WORDS[i] = w
    return i


class WordTokenizer:
    """Whitespace tokenizer: [CLS]=0 … [SEP]=2; ids are hashes of the words; `decode` inverts them."""

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, texts, add_special_tokens=True, truncation=True, max_length=None):
        out = []
        for t in texts:
            t.encode("utf-8")  # a real tokenizer also fails on lone surrogates
            ids = [word_id(w) for w in t.split()]
            ids = [0, *ids, 2] if add_special_tokens else ids
            if truncation and max_length:
                ids = ids[:max_length]
            out.append(ids)
        return {"input_ids": out}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(_WORDS.get(i, "unk") for i in ids if not (skip_special_tokens and i < 3))


class PoisonableModel(BagOfWordsModel):
    """Bag-of-words embedder whose encode fails on a text holding the word POISON (a bug the validation does
    not know about), optionally sleeping per call (to keep requests in flight)."""

    max_seq_length = 32

    def __init__(self, dim: int = 32, sleep_s: float = 0.0):
        super().__init__(dim)
        self.tokenizer = WordTokenizer()
        self.sleep_s = sleep_s

    def encode(self, texts, **kw):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if any("POISON" in t.split() for t in texts):
            raise RuntimeError("encoder crashed on a poisoned text")
        return super().encode(texts, **kw)


def make_service(sleep_s: float = 0.0):
    from tamperlab.eaas.embedder import Embedder
    from tamperlab.eaas.service import EmbeddingService
    from tamperlab.eaas.watermarks import EmbMarker, EmbMarkerConfig

    emb = Embedder(PoisonableModel(sleep_s=sleep_s), "bow")
    corpus = [f"text {w} number {i}" for i, w in enumerate(TRIGGERS * 3)] + [f"plain text {i}" for i in range(20)]
    wm = EmbMarker(EmbMarkerConfig(triggers=TRIGGERS[:4]))
    wm.setup(corpus, emb.encode)
    return EmbeddingService(emb, wm, MODEL)


def bow_app():
    """Worker factory: env TL_TEST_STATE (folder), TL_TEST_CFG (ServerConfig fields as JSON), TL_TEST_KEYS
    (name → secret JSON), TL_TEST_SLEEP (seconds per encode), TL_TEST_SHARED (1 = SQLite rate-limit buckets), TL_TEST_FLAG (a file that gets a line per embeddings request
    received, so a test knows when its requests are in flight)."""
    from tamperlab.config import from_dict
    from tamperlab.eaas.limits import SQLiteBuckets
    from tamperlab.eaas.querylog import QueryLog
    from tamperlab.eaas.server import ServerConfig, create_app

    state = Path(os.environ["TL_TEST_STATE"])
    cfg = from_dict(ServerConfig, json.loads(os.environ.get("TL_TEST_CFG", "{}")))
    qlog = QueryLog(state / "q.sqlite", retention=cfg.retention)
    buckets = SQLiteBuckets(state / "limits.sqlite") if os.environ.get("TL_TEST_SHARED") == "1" else None
    app = create_app(make_service(float(os.environ.get("TL_TEST_SLEEP", "0"))), cfg,
                     json.loads(os.environ["TL_TEST_KEYS"]), qlog, buckets=buckets)
    flag = os.environ.get("TL_TEST_FLAG")
    if not flag:
        return app

    async def counting(scope, receive, send):  # one line per embeddings request the server has received
        if scope["type"] == "http" and scope["path"] == "/v1/embeddings":
            with open(flag, "a") as f:
                f.write("received\n")
        await app(scope, receive, send)

    return counting


def stop_group(proc) -> None:
    """Stop a server started with start_new_session=True and everything it spawned (its uvicorn workers too:
    killing only the supervisor would orphan them)."""
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a supervisor that died
    except ProcessLookupError:
        pass
    proc.wait()
