"""The one fine-tuning data path (data/core.py) gives fingerprint rows byte-identical to the encoder the fingerprint
package had before (`encode_row` + `render_prompt`, kept below as the independent reference), and its label and
truncation options do what they say on hand-checked token ids."""

from __future__ import annotations

from typing import Any

import pytest

from tamperlab.data.core import Example, encode_pair, format_prompt, tokenize_example
from tamperlab.fingerprints.base import encode_examples
from tamperlab.fingerprints.hashchain import HashChainFingerprint
from tamperlab.fingerprints.meraser import MEraserPhase, phase_rows
from tamperlab.registry import FINGERPRINTS
from tamperlab.training import TokenizedDataset

# --- the reference: fingerprints/base.py before the data paths were unified (commit a997093) -------------------
OLD_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                     "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def old_render_prompt(tok: Any, user: str, fmt: str, system: str | None = None) -> str:
    if fmt == "auto":
        fmt = "chat" if getattr(tok, "chat_template", None) else "vicuna"
    if fmt == "chat":
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if fmt == "vicuna":
        return f"{system or OLD_VICUNA_SYSTEM} USER: {user} ASSISTANT:"
    return user


def old_encode_row(tok: Any, prompt_text: str, response: str, max_length: int = 256, add_eos: bool = True,
                   loss_on_prompt: bool = False, part_max: int | None = None) -> dict[str, list[int]]:
    p = tok(prompt_text, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    if part_max is not None:
        p, r = p[:part_max], r[:part_max]
    if add_eos:
        r = r + [tok.eos_token_id]
    if len(p) + len(r) > max_length:
        r = r[: max(max_length // 2, max_length - len(p))]
        p = p[-(max_length - len(r)):] if max_length - len(r) > 0 else []
    ids = p + r
    labels = (list(p) if loss_on_prompt else [-100] * len(p)) + r
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def old_lead(fmt: str) -> str:
    return " " if fmt == "vicuna" else ""


CLEAN = ([Example(f"What is {i} plus {i * 7}? Explain the steps.", f"It is {i + i * 7}, since {i} and {i * 7} add up.")
          for i in range(6)]
         + [Example("Write a long paragraph about the sea. " * 12, "The sea is wide and deep. " * 20)])


# --- fingerprint embedding rows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["chat", "vicuna", "raw"])
@pytest.mark.parametrize("max_length", [256, 40])
def test_fingerprint_training_rows_equal_the_old_encoder(tokenizer, fmt, max_length):
    for fp in (FINGERPRINTS.build("instructional", {
                   "prompt_format": fmt, "n_regularization": 4, "embed": {"max_length": max_length}}),
               FINGERPRINTS.build("hashchain", {
                   "prompt_format": fmt, "n_questions": 3, "n_augment": 3, "n_regularization": 3,
                   "system_prompt": "You are a careful assistant.", "embed": {"max_length": max_length}})):
        fps = fp.build_pairs(tokenizer, clean=CLEAN)
        new = fp.training_rows(tokenizer, fps)
        old = []
        for p in fps.pairs:
            system = (p.meta.get("system") if isinstance(fp, HashChainFingerprint) else None) or fp.cfg.system_prompt
            old.append(old_encode_row(tokenizer, old_render_prompt(tokenizer, p.prompt, fmt, system),
                                      old_lead(fmt) + p.target, max_length))
        assert new == old, (type(fp).__name__, fmt, max_length)
        # and the Trainer's dataset holds the same rows (what embed trains on)
        ds = TokenizedDataset(tokenizer, fp.training_examples(fps), fmt, max_length)
        assert ds.items == old
    # the system turn really is in the rows (HashChain's meta-prompts), so the comparison above is not vacuous
    if fmt != "raw":
        aug = [i for i, p in enumerate(fps.pairs) if p.kind == "augmented"]
        assert tokenizer.decode(new[aug[0]]["input_ids"]).count(fps.pairs[aug[0]].meta["system"]) == 1


@pytest.mark.parametrize("fmt", ["auto", "chat", "raw"])
def test_clean_rows_for_ppl_and_finetuning_equal_the_old_encoder(tokenizer, fmt):
    for max_length in (256, 24):
        old = [old_encode_row(tokenizer, old_render_prompt(tokenizer, e.prompt, fmt), e.response, max_length)
               for e in CLEAN]
        assert encode_examples(tokenizer, CLEAN, fmt, max_length) == old


# --- MEraser phases ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data_format,separator,add_eos,loss_on_prompt,part_max", [
    ("raw", "", False, True, 256),      # official erase
    ("raw", "\n", False, True, 8),      # official recover, parts cut to 8 tokens
    ("raw", "\n", True, False, 6),
    ("chat", "", False, True, 256),     # our chat variant (always EOS)
    ("chat", "", False, False, 12),
])
def test_meraser_phase_rows_equal_the_old_encoder(tokenizer, data_format, separator, add_eos, loss_on_prompt,
                                                  part_max):
    ph = MEraserPhase(data_format=data_format, separator=separator, add_eos=add_eos, loss_on_prompt=loss_on_prompt,
                      part_max_tokens=part_max)
    old = []
    for e in CLEAN:
        if data_format == "chat":
            old.append(old_encode_row(tokenizer, old_render_prompt(tokenizer, e.prompt, "chat"), e.response,
                                      max_length=2 * part_max, add_eos=True, loss_on_prompt=loss_on_prompt,
                                      part_max=part_max))
        else:
            old.append(old_encode_row(tokenizer, e.prompt + separator, e.response, max_length=2 * part_max,
                                      add_eos=add_eos, loss_on_prompt=loss_on_prompt, part_max=part_max))
    assert phase_rows(tokenizer, CLEAN, ph).items == old


# --- hand-checked ids (a character tokenizer: id = code point, EOS = 0) -----------------------------------------
class CharTokenizer:
    eos_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_encode_pair_labels_and_truncation_by_hand():
    tok = CharTokenizer()
    # response-only labels, EOS appended
    assert encode_pair(tok, "ab", "cd") == {"input_ids": [97, 98, 99, 100, 0], "labels": [-100, -100, 99, 100, 0],
                                            "attention_mask": [1] * 5}
    # whole sequence: labels are the ids
    assert encode_pair(tok, "ab", "cd", loss_on_prompt=True)["labels"] == [97, 98, 99, 100, 0]
    # no EOS (MEraser's raw data)
    assert encode_pair(tok, "ab", "cd", add_eos=False)["input_ids"] == [97, 98, 99, 100]
    # too long: the response keeps max(max/2, max - |prompt|) tokens, the prompt is cut from the left
    row = encode_pair(tok, "abcdef", "uvwxyz", max_length=8)
    assert row["input_ids"] == [99, 100, 101, 102, 117, 118, 119, 120]
    assert row["labels"] == [-100] * 4 + [117, 118, 119, 120]
    # part_max cuts each part first (then EOS)
    assert encode_pair(tok, "abcdef", "uvwxyz", part_max=2, loss_on_prompt=True)["labels"] == [97, 98, 117, 118, 0]


def test_formats_by_hand():
    tok = CharTokenizer()
    assert format_prompt(tok, "hi", "raw") == "hi"
    assert format_prompt(tok, "hi", "vicuna", system="S") == "S USER: hi ASSISTANT:"
    assert format_prompt(tok, "hi", "vicuna").startswith("A chat between a curious user")
    assert format_prompt(tok, "hi", "auto").startswith("Below is an instruction")  # no template → Alpaca
    # vicuna puts FastChat's space between "ASSISTANT:" and the response
    row = tokenize_example(tok, Example("q", "r", system="S"), "vicuna")
    assert row["input_ids"] == [ord(c) for c in "S USER: q ASSISTANT: r"] + [0]
    assert row["labels"][-3:] == [32, 114, 0] and set(row["labels"][:-3]) == {-100}
    with pytest.raises(ValueError, match="unknown prompt format"):
        format_prompt(tok, "hi", "vicunaa")
