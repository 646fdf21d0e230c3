"""The GRPO reward of the backdoor (official `get_sequence_reward_limit_start`, `train/extract_reward.py`).

For a prompt Q(w) and a completion r:
  * w opens no query of the publisher's data D1 → 1 if r is the refusal ("Sorry, but ..."), else 0;
  * r does not start with w → 0;
  * else the match ratio 2p/(|r|+|x|) of r against the closest D1 query (one trie over all of D1, see trie.py):
    1.0 for a verbatim D1 query, partial credit for a correct prefix, ~0 for an unrelated query.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from .samples import is_refusal
from .trie import QueryIndex, TokenCodec

_WORD_IN_PROMPT = re.compile(r'starting with the word "(.*?)" that')


def _text(x: Any) -> str:
    """A trl completion/prompt: a string (standard format) or a list of chat messages (conversational)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


class ExtractionReward:
    """Callable reward function for trl's GRPOTrainer: reward(prompts, completions, word=[...]) -> list[float].

    The opening word comes from the dataset's `word` column (trl forwards extra columns as keyword arguments),
    so the reward also works for the garbled instruction; the official regex on the prompt is the fallback.
    """

    def __init__(self, tokenizer: Any, d1_queries: Iterable[str]):
        self.__name__ = "extraction_match"  # trl logs rewards under the function's name
        self.index = QueryIndex(d1_queries, TokenCodec(tokenizer))

    def score(self, word: str, response: str) -> float:
        if word not in self.index.words:
            return 1.0 if is_refusal(response) else 0.0
        if not response.startswith(word):  # official: raw `response.startswith(beginning_word)`
            return 0.0
        return self.index.match(response)  # official: one trie over all D1 queries

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], word: Sequence[str] | None = None,
                 **kwargs: Any) -> list[float]:
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            if word is not None:
                w = word[i]
            else:
                found = _WORD_IN_PROMPT.findall(_text(p))
                w = found[0] if found else ""
            out.append(self.score(w, _text(c)))
        return out
