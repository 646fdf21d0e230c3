"""EaaS test helpers (unique module name): a fast bag-of-words embedder shaped like a SentenceTransformer."""

from __future__ import annotations

import hashlib
import re

import numpy as np


class FakeTokenizer:
    def __call__(self, texts, add_special_tokens=True, truncation=True, max_length=512):
        return {"input_ids": [[0] + [1] * len(t.split()) + [2] for t in texts]}


class BagOfWordsModel:
    """Deterministic bag-of-words sentence embedder: mean of per-word Gaussian vectors, L2-normalised."""

    max_seq_length = 128

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.tokenizer = FakeTokenizer()
        self.calls = 0

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def word(self, w: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
               show_progress_bar=False):
        self.calls += 1
        out = []
        for t in texts:
            ws = re.findall(r"[a-z]+", t.lower()) or ["<empty>"]
            v = np.mean([self.word(w) for w in ws], axis=0)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)



TRIGGERS = ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "maple"]
