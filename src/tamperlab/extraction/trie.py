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
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def dice(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Pairwise form of the match ratio: 2·lcp(a, b) / (|a| + |b|)."""
    return 2.0 * lcp(a, b) / (len(a) + len(b)) if (a or b) else 0.0


class TokenCodec:
    """Text → token ids + end marker, as the official code encodes queries and responses for the trie."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, text: str) -> tuple[int, ...]:
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
    """Real queries grouped by opening word, one trie per word: 'the closest real query starting with w'."""

    def __init__(self, queries: Iterable[str], codec: TokenCodec):
        from .samples import group_by_opener

        self.codec = codec
        self.by_word = group_by_opener(queries)
        self.tries = {w: Trie(codec(q) for q in qs) for w, qs in self.by_word.items()}

    @property
    def words(self) -> set[str]:
        return set(self.by_word)

    def match(self, word: str, text: str) -> float:
        """Match ratio of `text` against the queries opening with `word` (0 when there are none)."""
        trie = self.tries.get(word)
        return trie.match_ratio(self.codec(text)) if trie is not None else 0.0
