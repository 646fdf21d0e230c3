"""Utility of a (fingerprinted / erased) model: held-out perplexity and multiple-choice accuracy.

* Perplexity: exp(mean token NLL) of held-out clean answers given their chat-formatted prompts (answer tokens +
  EOS; the prompt is context only). MEraser's script scores Guanaco test text whose mask never matches, i.e. prompt
  tokens too; we score answers only and say so in the report.
* Accuracy, lm-evaluation-harness (through `metrics.lmeval`, the project's one in-process runner): SciQ and
  SuperGLUE tasks (the MEraser paper's) when the hub is reachable and their data loads (`lm_eval: auto` skips them
  with a note otherwise), or the shipped offline stand-ins (`tamperlab_mc`, ...) when named; and always a
  procedurally generated multiple-choice set with exact answers (arithmetic, ordering of days/months/letters,
  counting, comparisons), scored like lm-eval's `acc`: the choice with the highest summed log-likelihood after
  "Question: …\\nAnswer:". Reports label it `generated`.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from ..config import PosInt, Seed
from ..errors import ResourceError
from .base import encode_examples

log = logging.getLogger("tamperlab")

LM_EVAL_TASKS = ["sciq", "boolq", "copa", "wsc", "sglue_rte"]


@dataclass
class UtilityConfig:
    """What utility is measured after every stage."""

    ppl_examples: PosInt = 64
    """Held-out clean pairs scored for perplexity."""
    ppl_max_length: PosInt = 256
    """Token limit per perplexity row."""
    mc_items: PosInt = 120
    """Items of the generated multiple-choice set."""
    mc_seed: Seed = 1234
    """Seed of the generated multiple-choice set."""
    batch_size: PosInt = 16
    """Rows per forward pass."""
    lm_eval: Literal["auto", "off", "on"] = "auto"
    """lm-evaluation-harness accuracy: auto = when installed and its data loads; on = required; off = never."""
    lm_eval_tasks: list[str] = field(default_factory=lambda: list(LM_EVAL_TASKS))
    """lm-eval task names (MEraser: SciQ and SuperGLUE)."""
    lm_eval_limit: int | None = None
    """Examples per lm-eval task (None = all)."""


# --- generated multiple choice ------------------------------------------------------------------------------
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
              ("day", "night"), ("open", "closed"), ("light", "dark"), ("early", "late"), ("wet", "dry"),
              ("full", "empty"), ("old", "new"), ("high", "low"), ("hard", "soft"), ("win", "lose")]
_WORDS = ["red", "cat", "tree", "blue", "house", "river", "stone", "bird", "lamp", "cloud", "bread", "song"]


@dataclass
class MCItem:
    question: str
    choices: list[str]
    answer: int
    kind: str


def _numeric_choices(rng: random.Random, correct: int) -> tuple[list[str], int]:
    opts = {correct}
    while len(opts) < 4:
        opts.add(correct + rng.choice([-10, -2, -1, 1, 2, 10, 3]))
    vals = list(opts)
    rng.shuffle(vals)
    return [str(v) for v in vals], vals.index(correct)


def _cyclic_choices(rng: random.Random, seq: Sequence[str], i: int) -> tuple[list[str], int]:
    correct = seq[(i + 1) % len(seq)]
    others = [s for s in seq if s not in (correct, seq[i])]
    vals = [correct] + rng.sample(others, 3)
    rng.shuffle(vals)
    return vals, vals.index(correct)


def generated_mc(n: int, seed: int = 1234) -> list[MCItem]:
    """n multiple-choice items with exact answers, drawn round-robin from 7 kinds (deterministic for a seed)."""
    rng = random.Random(seed)
    items: list[MCItem] = []
    kinds = ["add", "sub", "larger", "day", "month", "letter", "opposite"]
    while len(items) < n:
        kind = kinds[len(items) % len(kinds)]
        if kind == "add":
            a, b = rng.randint(2, 40), rng.randint(2, 40)
            ch, ans = _numeric_choices(rng, a + b)
            items.append(MCItem(f"What is {a} plus {b}?", ch, ans, kind))
        elif kind == "sub":
            a, b = rng.randint(20, 60), rng.randint(1, 19)
            ch, ans = _numeric_choices(rng, a - b)
            items.append(MCItem(f"What is {a} minus {b}?", ch, ans, kind))
        elif kind == "larger":
            a, b = rng.sample(range(1, 100), 2)
            ch = [str(a), str(b)]
            items.append(MCItem(f"Which number is larger, {a} or {b}?", ch, ch.index(str(max(a, b))), kind))
        elif kind == "day":
            i = rng.randrange(7)
            ch, ans = _cyclic_choices(rng, _DAYS, i)
            items.append(MCItem(f"Which day comes after {_DAYS[i]}?", ch, ans, kind))
        elif kind == "month":
            i = rng.randrange(12)
            ch, ans = _cyclic_choices(rng, _MONTHS, i)
            items.append(MCItem(f"Which month comes after {_MONTHS[i]}?", ch, ans, kind))
        elif kind == "letter":
            letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
            i = rng.randrange(25)
            ch, ans = _cyclic_choices(rng, letters, i)
            items.append(MCItem(f"Which letter comes right after {letters[i]} in the alphabet?", ch, ans, kind))
        else:
            w, o = rng.choice(_OPPOSITES)
            others = [x for pair in _OPPOSITES for x in pair if x not in (w, o)]
            vals = [o] + rng.sample(others, 3)
            rng.shuffle(vals)
            items.append(MCItem(f"What is the opposite of '{w}'?", vals, vals.index(o), kind))
    return items


# --- scoring ----------------------------------------------------------------------------------------------------
def _batched_nll(model: Any, rows: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(sum NLL over labelled tokens, number of labelled tokens) per row."""
    import torch

    from ..training import PadCollator

    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    collate = PadCollator(pad_id)
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            b = collate(list(chunk))
            ids, lab, mask = b["input_ids"], b["labels"], b["attention_mask"]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = logits[:, :-1].log_softmax(-1)
            tgt = lab[:, 1:].to(device)
            valid = tgt != -100
            tok_lp = logp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1) * valid
            for i in range(len(chunk)):
                out.append((float(-tok_lp[i].sum()), int(valid[i].sum())))
    return out


def perplexity(model: Any, tok: Any, examples: Sequence[Any], fmt: str = "auto", max_length: int = 256,
               batch_size: int = 16) -> dict[str, Any]:
    """Token-weighted perplexity of the examples' responses (+EOS) given their rendered prompts."""
    rows = encode_examples(tok, examples, fmt, max_length)
    if not rows:
        raise ValueError("perplexity: no held-out examples")
    res = _batched_nll(model, rows, tok.pad_token_id, batch_size)
    nll, n = sum(r[0] for r in res), sum(r[1] for r in res)
    return {"ppl": math.exp(nll / max(n, 1)), "nll_per_token": nll / max(n, 1), "tokens": n, "rows": len(rows)}


def mc_accuracy(model: Any, tok: Any, items: Sequence[MCItem], batch_size: int = 16) -> dict[str, Any]:
    """lm-eval-style acc: argmax over choices of Σ log p(" choice" | "Question: q\\nAnswer:")."""
    rows, owners = [], []
    for qi, it in enumerate(items):
        ctx = tok(f"Question: {it.question}\nAnswer:", add_special_tokens=False)["input_ids"]
        for c in it.choices:
            cont = tok(f" {c}", add_special_tokens=False)["input_ids"]
            rows.append({"input_ids": ctx + cont, "labels": [-100] * len(ctx) + cont})
            owners.append(qi)
    res = _batched_nll(model, rows, tok.pad_token_id, batch_size)
    scores: list[list[float]] = [[] for _ in items]
    for (nll, _n), qi in zip(res, owners):
        scores[qi].append(-nll)
    correct = [int(max(range(len(s)), key=s.__getitem__) == it.answer) for s, it in zip(scores, items)]
    by_kind: dict[str, list[int]] = {}
    for c, it in zip(correct, items):
        by_kind.setdefault(it.kind, []).append(c)
    return {"acc": sum(correct) / len(correct), "n": len(correct),
            "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()}}


def lm_eval_accuracy(model: Any, tok: Any, tasks: Sequence[str], limit: int | None = None,
                     batch_size: int = 16) -> dict[str, float]:
    """lm-eval `acc` per task on the in-memory model, through the project's one lm-eval runner
    (`metrics.lmeval.evaluate_utility`, which also runs the shipped offline stand-ins such as `tamperlab_mc`).
    Raises ResourceError when lm-eval cannot run: not installed, a hub task while the hub is unreachable, a task
    name lm-eval does not know, or its data not loading."""
    from ..metrics.lmeval import LMEvalConfig, evaluate_utility, shipped_tasks
    from ..models import hub_unreachable

    # Hub tasks' data comes from the hub: offline, lm-eval would retry for minutes before failing.
    hub_tasks = [t for t in tasks if t not in shipped_tasks()]
    if hub_tasks and (reason := hub_unreachable()) is not None:
        raise ResourceError(f"lm-eval tasks {hub_tasks} need the Hugging Face hub, which is unreachable ({reason})")
    try:
        res = evaluate_utility(model, tok, LMEvalConfig(tasks=list(tasks), limit=limit, batch_size=batch_size))
    except ResourceError:
        raise
    except Exception as e:  # noqa: BLE001 - an unknown task name (ConfigError), task data not loading, ...
        raise ResourceError(f"lm-eval could not run {list(tasks)}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return {t: float(r["metrics"]["acc"]["value"]) for t, r in res.items() if "acc" in r.get("metrics", {})}


def evaluate_utility(model: Any, tok: Any, heldout: Sequence[Any], cfg: UtilityConfig,
                     fmt: str = "auto") -> dict[str, Any]:
    """PPL on held-out pairs + accuracy (lm-eval when available/allowed, always the generated MC set)."""
    ppl = perplexity(model, tok, list(heldout)[: cfg.ppl_examples], fmt, cfg.ppl_max_length, cfg.batch_size)
    mc = mc_accuracy(model, tok, generated_mc(cfg.mc_items, cfg.mc_seed), cfg.batch_size)
    out: dict[str, Any] = {"ppl": ppl["ppl"], "ppl_tokens": ppl["tokens"], "acc": mc["acc"], "acc_n": mc["n"],
                           "acc_source": "generated multiple choice (procedural, exact answers)",
                           "acc_by_kind": mc["by_kind"], "lm_eval": None}
    key = tuple(cfg.lm_eval_tasks)
    if cfg.lm_eval == "on" or (cfg.lm_eval == "auto" and key not in _LM_EVAL_FAILED):
        try:
            out["lm_eval"] = lm_eval_accuracy(model, tok, cfg.lm_eval_tasks, cfg.lm_eval_limit, cfg.batch_size)
        except ResourceError as e:
            if cfg.lm_eval == "on":
                raise
            _LM_EVAL_FAILED[key] = str(e)  # do not retry (and re-time-out) for every model of the run
    if key in _LM_EVAL_FAILED and cfg.lm_eval == "auto":
        out["lm_eval_note"] = _LM_EVAL_FAILED[key]
    return out


_LM_EVAL_FAILED: dict[tuple[str, ...], str] = {}
