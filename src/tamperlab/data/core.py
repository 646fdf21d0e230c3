"""Examples, splits with provenance, prompt formatting and tokenization with response-only labels.

This is the one fine-tuning data path of every system (HFT defenses and attacks, backdoor extraction,
fingerprint embedding and removal, MEraser): an `Example` is rendered by `format_prompt` (chat template, Alpaca,
FastChat vicuna, or raw text) and tokenized by `encode_pair` (prompt + response (+ EOS), labels -100 on the
prompt unless `loss_on_prompt`); training.py turns the rows into a Trainer.
"""

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
    """One (prompt, response) pair. `input` is the optional Alpaca-style input field; `meta` holds labels etc.;
    `system` is a system turn for the chat / vicuna formats (None = the format's default)."""

    prompt: str
    response: str = ""
    input: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"prompt": self.prompt, "response": self.response, "input": self.input, "meta": self.meta}
        if self.system is not None:  # absent otherwise: cached packs and their hashes stay as they were
            d["system"] = self.system
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(d["prompt"], d.get("response", ""), d.get("input", ""), d.get("meta", {}), d.get("system"))


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


PROMPT_FORMATS = ("chat", "alpaca", "vicuna", "raw")
"""chat = the tokenizer's chat template; alpaca = the official HFT-defense code's template (base models);
vicuna = FastChat vicuna_v1.1 (the IF fingerprint paper renders every model with it); raw = the text itself (no
template, e.g. MEraser's official erase data, raw-text fingerprints)."""

# FastChat's vicuna_v1.1 conversation.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def resolve_format(tokenizer: Any, fmt: str, fallback: str = "alpaca") -> str:
    """`auto` = the chat template when the tokenizer has one, else `fallback`; other names are checked."""
    if fmt == "auto":
        return "chat" if has_chat_template(tokenizer) else fallback
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r} ({' | '.join(PROMPT_FORMATS)} | auto)")
    return fmt


def response_lead(fmt: str) -> str:
    """Text between the rendered prompt and the response (FastChat's vicuna separator is a space)."""
    return " " if fmt == "vicuna" else ""


def format_prompt(tokenizer: Any, prompt: str, fmt: str = "auto", input_text: str = "",
                  system: str | None = None) -> str:
    """Render a user prompt as the model expects it, ready for the response to follow.

    `system` is a system turn for chat (None = the template's default) and vicuna (None = FastChat's); Alpaca and
    raw text have none."""
    fmt = resolve_format(tokenizer, fmt)
    content = f"{prompt}\n\n{input_text}" if input_text else prompt
    if fmt == "chat":
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if fmt == "vicuna":
        return f"{system or VICUNA_SYSTEM} USER: {content} ASSISTANT:"
    if fmt == "raw":
        return content
    if input_text:
        return ALPACA_PROMPT_INPUT.format(instruction=prompt, input=input_text)
    return ALPACA_PROMPT.format(instruction=prompt)


def format_example(tokenizer: Any, ex: Example, fmt: str = "auto") -> str:
    return format_prompt(tokenizer, ex.prompt, fmt, ex.input, ex.system)


def encode_pair(tokenizer: Any, prompt_text: str, response: str, max_length: int = 256, loss_on_prompt: bool = False,
                add_eos: bool = True, part_max: int | None = None) -> dict[str, list[int]]:
    """Token ids of a rendered prompt + response (+ EOS); labels are -100 on the prompt unless `loss_on_prompt`
    (then the whole sequence is trained on, as trl's default collator and MEraser's official collator do).

    `part_max` first truncates prompt and response separately (MEraser's 256 + 256 tokens). If both do not fit in
    `max_length`, the response keeps at least half of it and the prompt is cut from the left."""
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if part_max is not None:
        p, r = p[:part_max], r[:part_max]
    if add_eos:
        r = r + [tokenizer.eos_token_id]
    if len(p) + len(r) > max_length:
        r = r[: max(max_length // 2, max_length - len(p))]
        p = p[-(max_length - len(r)):] if max_length - len(r) > 0 else []
    ids = p + r
    labels = (list(p) if loss_on_prompt else [-100] * len(p)) + r
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def tokenize_example(tokenizer: Any, ex: Example, fmt: str = "auto", max_length: int = 256,
                     loss_on_prompt: bool = False, add_eos: bool = True,
                     part_max: int | None = None) -> dict[str, list[int]]:
    """An Example rendered in `fmt` and encoded by `encode_pair` (see there for labels and truncation). An example
    marked `meta["no_eos"]` (a response cut off by a generation budget) gets no EOS: it did not end there."""
    fmt = resolve_format(tokenizer, fmt)
    return encode_pair(tokenizer, format_example(tokenizer, ex, fmt), response_lead(fmt) + ex.response, max_length,
                       loss_on_prompt, add_eos and not ex.meta.get("no_eos"), part_max)
