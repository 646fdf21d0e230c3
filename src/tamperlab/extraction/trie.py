"""Token trie over real queries: longest common prefix, Dice-style match ratio, coverage.

The official reward (`train/extract_reward.py`, `compute_sequence_reward`) walks a trie of training queries
(token ids + EOS) along a generated response r (+ EOS): p = length of the longest common prefix, |x| = p + the
shortest remaining depth from the node reached to a leaf (the shortest real query sharing that prefix), and

    match(r) = 2·p / (|r| + |x|)

— 1.0 exactly when r is a real query, token for token, including its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence


@dataclass
class _Node:
    children: dict[Hashable, "_Node"] = field(default_factory=dict)
    min_rest: int = 0
    """Shortest distance from this node to the end of a stored sequence (0 at an end)."""


class Trie:
    """A prefix tree of token sequences (any hashable tokens; callers append an end marker)."""

    def __init__(self, sequences: Iterable[Sequence[Hashable]] = ()):
        self.root = _Node(min_rest=10**9)
        self.size = 0
        for s in sequences:
            self.add(s)

    def add(self, seq: Sequence[Hashable]) -> None:
        n = len(seq)
        node = self.root
        node.min_rest = min(node.min_rest, n)
        for d, tok in enumerate(seq):
            nxt = node.children.get(tok)
            if nxt is None:
                nxt = node.children[tok] = _Node(min_rest=10**9)
            node = nxt
            # Every stored sequence through this node ends n - d - 1 steps below it: keep the shortest.
            node.min_rest = min(node.min_rest, n - d - 1)
        self.size += 1

    def walk(self, seq: Sequence[Hashable]) -> tuple[int, int]:
        """(longest common prefix with any stored sequence, shortest remaining depth after it)."""
        node, p = self.root, 0
        for tok in seq:
            nxt = node.children.get(tok)
            if nxt is None:
                break
            node, p = nxt, p + 1
        return p, (node.min_rest if self.size else 0)

    def match_ratio(self, seq: Sequence[Hashable]) -> float:
        """2p / (|seq| + p + rest): the official Dice-style match of seq against its closest stored sequence."""
        if not seq or not self.size:
            return 0.0
        p, rest = self.walk(seq)
        return 2.0 * p / (len(seq) + p + rest)


def lcp(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix (rapidfuzz's `Prefix.similarity`, on any sequences of hashables)."""
    from rapidfuzz.distance import Prefix

    return int(Prefix.similarity(a, b))


def dice(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Pairwise form of the match ratio: 2·lcp(a, b) / (|a| + |b|)."""
    return 2.0 * lcp(a, b) / (len(a) + len(b)) if (a or b) else 0.0


def lcp_matrix(rows: Sequence[Sequence[Any]], cols: Sequence[Sequence[Any]]) -> Any:
    """lcp of every (row, col) pair as an int32 numpy array [len(rows), len(cols)] (rapidfuzz `cdist`)."""
    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import Prefix

    if not rows or not cols:
        return np.zeros((len(rows), len(cols)), dtype=np.int32)
    return process.cdist(rows, cols, scorer=Prefix.similarity, dtype=np.int32)


class TokenCodec:
    """Text → token ids + end marker, as the official code encodes queries and responses for the trie
    (`tokenizer.encode(text, add_special_tokens=False)`, EOS appended unless already last).

    strip=False (default) encodes the raw text, as the official code does; strip=True is tamperlab's earlier
    variant (leading/trailing whitespace removed first). tamperlab's sampler already strips its samples, so
    the two agree on its own runs."""

    def __init__(self, tokenizer: Any, strip: bool = False):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self.strip = strip
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, text: str) -> tuple[int, ...]:
        if self.strip:
            text = text.strip()
        ids = self._cache.get(text)
        if ids is None:
            ids = tuple(self.tok(text, add_special_tokens=False)["input_ids"])
            if not ids or ids[-1] != self.eos:
                ids = ids + (self.eos,)
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids


class QueryIndex:
    """The real queries as the official scoring sees them: ONE trie over all of them (`match`), plus
    tamperlab's own per-opener tries (`match_within_opener`: the closest real query *starting with w*)."""

    def __init__(self, queries: Iterable[str], codec: Any):
        from .samples import group_by_opener

        queries = list(queries)
        self.codec = codec
        self.by_word = group_by_opener(queries)
        # Official `construct_search_tree`: every query, whatever its opening word (also none, e.g. "2 + 2?").
        self.trie = Trie(codec(q) for q in dict.fromkeys(queries))
        self.tries = {w: Trie(codec(q) for q in qs) for w, qs in self.by_word.items()}

    @property
    def words(self) -> set[str]:
        return set(self.by_word)

    def match(self, text: str) -> float:
        """Official match ratio of `text` against all real queries (one trie; the caller applies the
        starts-with-w test, as `get_sequence_reward_limit_start` does)."""
        return self.trie.match_ratio(self.codec(text))

    def match_within_opener(self, word: str, text: str) -> float:
        """tamperlab's own variant: against the queries opening with `word` only (0 when there are none).
        Lower than `match` when a sample reproduces a real query that starts with another word."""
        trie = self.tries.get(word)
        return trie.match_ratio(self.codec(text)) if trie is not None else 0.0
