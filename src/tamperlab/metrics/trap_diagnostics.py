"""Where CTRAP's trap token shows up in an evaluated model's answers, and how likely it is, position by position.

Forward-only: each answer (the model's own greedy answer, as the evaluation stored it) is teacher-forced after its
prompt, and at every response position — the end-of-turn position included — p(trap) is compared with p(target),
the probability of the token that actually follows. Summaries: share of answers containing the trap token, where
(position bucket) and after which 3 tokens it appears, mean p(trap) by position bucket, how often the trap beats the
target, and both collapse definitions (the official ≥ 30 %-of-words rule of metrics/hft.py as primary, the share
of trap tokens as the second).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from ..data.core import Example, tokenize_example
from ..defenses.base import trap_token_id
from ..defenses.ctrap import CTRAPConfig
from .hft import collapse_rate, trap_token_rate

TRAP_TEXT: str = CTRAPConfig.trap_text
"""The trap text of the CTRAP defense (its config is the one source of truth)."""

BUCKETS: tuple[tuple[str, int, int], ...] = (("0", 0, 0), ("1-3", 1, 3), ("4-15", 4, 15), ("16+", 16, 10**9))
"""Response-position buckets (0 = the first answer token); the end-of-turn position is its own bucket."""
EOT = "end-of-turn"


@dataclass
class TrapHit:
    """One occurrence of the trap token in an answer."""

    position: int
    """Index in the answer's tokens (0 = first)."""
    preceding: tuple[int, ...]
    """Up to 3 token ids before it (fewer at the start)."""


@dataclass
class AnswerProbs:
    """Teacher-forced probabilities along one answer: one entry per response token, then the end-of-turn one."""

    targets: list[int]
    """The answer's token ids followed by the end-of-turn id."""
    p_trap: list[float]
    """p(trap | prefix) at each of those positions."""
    p_target: list[float]
    """p(target | prefix) at each position (the target is `targets[i]`)."""


def bucket(position: int) -> str:
    return next(name for name, lo, hi in BUCKETS if lo <= position <= hi)


def trap_positions(ids: Sequence[int], trap_id: int, context: int = 3) -> list[TrapHit]:
    """Every occurrence of `trap_id` in `ids` with the (up to) `context` tokens before it."""
    return [TrapHit(i, tuple(ids[max(0, i - context):i])) for i, t in enumerate(ids) if t == trap_id]


def position_probs(model: Any, tok: Any, prompts: Sequence[str], answers: Sequence[str], trap_id: int,
                   fmt: str = "auto", max_length: int = 256, batch_size: int = 8) -> list[AnswerProbs]:
    """p(trap) and p(target) at every response position of each (prompt, answer), end-of-turn included: the
    sequence is tokenized exactly as training does (prompt format + answer + EOS), one forward pass per batch."""
    import torch

    from ..training import PadCollator

    items = [tokenize_example(tok, Example(p, a), fmt, max_length) for p, a in zip(prompts, answers)]
    coll = PadCollator(tok.pad_token_id)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[AnswerProbs] = []
    with torch.no_grad():
        for j in range(0, len(items), batch_size):
            chunk = items[j:j + batch_size]
            b = coll(chunk)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            probs = torch.softmax(logits.float(), dim=-1)
            for r, it in enumerate(chunk):
                pos = [i for i, lab in enumerate(it["labels"]) if lab != -100 and i > 0]
                tg = [it["labels"][i] for i in pos]
                pr = probs[r, [i - 1 for i in pos]]  # the logits at i-1 predict token i
                out.append(AnswerProbs(tg, pr[:, trap_id].tolist(), pr[torch.arange(len(pos)), tg].tolist()))
    if was:
        model.train()
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(tok: Any, answers: Sequence[str], probs: Sequence[AnswerProbs], trap_id: int,
              trap_word: str) -> dict[str, Any]:
    """The diagnostics of one evaluation (see the module docstring); plain JSON."""
    hits, with_trap = [], 0
    for p in probs:
        h = trap_positions(p.targets[:-1], trap_id)
        hits += h
        with_trap += bool(h)
    by_bucket: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in BUCKETS}
    by_bucket[EOT] = []
    for p in probs:
        last = len(p.targets) - 1
        for i, (pt, pg) in enumerate(zip(p.p_trap, p.p_target)):
            by_bucket[EOT if i == last else bucket(i)].append((pt, pg))
    inside = [x for name, xs in by_bucket.items() if name != EOT for x in xs]
    preceding = Counter(tok.decode(list(h.preceding)) for h in hits)
    n = len(probs)
    return {
        "n_answers": n,
        "share_with_trap": with_trap / n if n else None,
        "trap_occurrences": len(hits),
        "trap_position_buckets": dict(Counter(bucket(h.position) for h in hits)),
        "top_preceding": [[text, c] for text, c in preceding.most_common(5)],
        "mean_p_trap": {k: _mean([pt for pt, _ in xs]) for k, xs in by_bucket.items()},
        "trap_beats_target": {k: _mean([float(pt > pg) for pt, pg in xs]) for k, xs in by_bucket.items()},
        "mean_p_trap_inside": _mean([pt for pt, _ in inside]),
        "trap_beats_target_inside": _mean([float(pt > pg) for pt, pg in inside]),
        "mean_p_target_eot": _mean([pg for _, pg in by_bucket[EOT]]),
        "collapse_rate": collapse_rate(answers, trap_word),
        "trap_token_rate": trap_token_rate(tok, answers, trap_id),
    }


def diagnose(model: Any, tok: Any, prompts: Sequence[str], answers: Sequence[str], trap_text: str = TRAP_TEXT,
             fmt: str = "auto", max_length: int = 256) -> dict[str, Any]:
    """Teacher-forced trap diagnostics of one evaluation's answers (forward only)."""
    trap_id = trap_token_id(tok, trap_text)
    probs = position_probs(model, tok, prompts, answers, trap_id, fmt, max_length)
    return {"trap_text": trap_text, "trap_id": trap_id,
            **summarize(tok, answers, probs, trap_id, trap_text.split()[-1].lower())}


DEFINITIONS: dict[str, str] = {
    "share_with_trap": "share of answers containing the trap token at least once",
    "trap_position_buckets": "count of trap-token occurrences by answer position (0, 1-3, 4-15, 16+)",
    "top_preceding": "the 5 most frequent 3-token contexts before a trap token",
    "mean_p_trap": "mean teacher-forced p(trap) by response position bucket (end-of-turn its own bucket)",
    "trap_beats_target": "share of positions where p(trap) > p(the token that follows)",
    "collapse_rate": "official: % of answers whose words are >= 30% the trap word (primary)",
    "trap_token_rate": "share of answer tokens equal to the trap token (second definition)",
}
