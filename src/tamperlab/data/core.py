"""Examples, splits with provenance, prompt formatting and tokenization with response-only labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class Example:
    """One (prompt, response) pair. `input` is the optional Alpaca-style input field; `meta` holds labels etc."""

    prompt: str
    response: str = ""
    input: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "response": self.response, "input": self.input, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(d["prompt"], d.get("response", ""), d.get("input", ""), d.get("meta", {}))


@dataclass
class DataSplit:
    """A list of examples plus where they came from (recorded in metrics and reports)."""

    name: str
    examples: list[Example]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.examples)

    def take(self, n: int) -> "DataSplit":
        return DataSplit(self.name, self.examples[:n], {**self.provenance, "n": min(n, len(self.examples))})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n": len(self.examples), **self.provenance}


def stable_hash(text: str, salt: str = "") -> int:
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:12], 16)


def split_by_hash(items: Sequence[str], fractions: dict[str, float], salt: str = "split") -> dict[str, list[int]]:
    """Deterministic disjoint split of item indices by content hash (independent of order and of other items)."""
    names = list(fractions)
    bounds, acc = [], 0.0
    for n in names:
        acc += fractions[n]
        bounds.append(acc)
    out: dict[str, list[int]] = {n: [] for n in names}
    for i, t in enumerate(items):
        u = (stable_hash(t, salt) % 10_000) / 10_000
        for n, b in zip(names, bounds):
            if u < b:
                out[n].append(i)
                break
    return out


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(tokenizer: Any, fmt: str) -> str:
    if fmt == "auto":
        return "chat" if has_chat_template(tokenizer) else "alpaca"
    return fmt


def format_prompt(tokenizer: Any, prompt: str, fmt: str = "auto", input_text: str = "") -> str:
    """Render a user prompt as the model expects it, ready for the response to follow."""
    fmt = resolve_format(tokenizer, fmt)
    if fmt == "chat":
        content = f"{prompt}\n\n{input_text}" if input_text else prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    if input_text:
        return ALPACA_PROMPT_INPUT.format(instruction=prompt, input=input_text)
    return ALPACA_PROMPT.format(instruction=prompt)


def format_example(tokenizer: Any, ex: Example, fmt: str = "auto") -> str:
    return format_prompt(tokenizer, ex.prompt, fmt, ex.input)


def tokenize_example(tokenizer: Any, ex: Example, fmt: str = "auto", max_length: int = 256,
                     loss_on_prompt: bool = False) -> dict[str, list[int]]:
    """Token ids of prompt + response + EOS; labels are -100 on the prompt (unless loss_on_prompt). An example
    marked `meta["no_eos"]` (a response cut off by a generation budget) gets no EOS: it did not end there."""
    prompt_ids = tokenizer(format_example(tokenizer, ex, fmt), add_special_tokens=False)["input_ids"]
    eos = [] if ex.meta.get("no_eos") else [tokenizer.eos_token_id]
    resp_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + eos
    # Keep the response: truncate the prompt from the left if both do not fit.
    if len(prompt_ids) + len(resp_ids) > max_length:
        resp_ids = resp_ids[: max(max_length // 2, max_length - len(prompt_ids))]
        prompt_ids = prompt_ids[-(max_length - len(resp_ids)):]
    ids = prompt_ids + resp_ids
    labels = (list(prompt_ids) if loss_on_prompt else [-100] * len(prompt_ids)) + resp_ids
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
