"""Fingerprint Success Rate (FSR): decode each trigger, apply the method's match rule, keep per-pair results.

FSR = (# fingerprint triggers whose output matches the target) / (# distinct triggers). Each method fixes the
decoding (greedy, max new tokens), what is appended to the prompt before decoding (IF forces the answer
prefix " Based on my fingerprint, the message is:"), and the match rule:

* `substring` — the target occurs in the decoded output (IF `report_FSR_sft_chat.py`, UTF `fp_test.check_text`);
* `first_words` — the normalised output starts with the normalised target (our HashChain rule: its answers are
  common words, so a bare substring test would count chance mentions);
* `exact` — the stripped output equals the target.

Next to the official rules (docs/methods/fingerprints.md has the table): IF = official `report_FSR_sft_chat.py`
except the rendering (the model's own chat template; official: vicuna for all models) — `plain` (nothing
appended) is tamperlab's own variant; UTF = official `fp_test.py` (greedy, 100 tokens, substring, special tokens
kept); HashChain's `first_words` rule is tamperlab's own (no official code was available). The control rate
(`FSRResult.control`) is the official negative check for UTF (`fp_test.neg_check`, random-string guesses) and
tamperlab's own for IF (negatives, chats) and HashChain (unselected pool questions).

Verification is batched (one left-padded `generate` per batch, generation.py); `verify_sequential` is the
one-prompt-at-a-time loop the official scripts run, kept for the throughput benchmark and equivalence tests.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Sequence

from ..generation import GenerationConfig, generate
from ..stats import bits, digest, rate_record

MatchRule = Literal["substring", "first_words", "exact"]


@dataclass
class FSRSpec:
    """How one method's FSR is measured (recorded verbatim next to every FSR number)."""

    max_new_tokens: int = 30
    """New tokens decoded per trigger."""
    do_sample: bool = False
    """Greedy (False) or sampled decoding."""
    temperature: float = 1.0
    """Sampling temperature (do_sample only)."""
    answer_prefix: str = ""
    """Text appended to the rendered prompt before decoding (IF's forced answer prefix); the match is checked on
    the continuation only."""
    match: MatchRule = "substring"
    """substring | first_words | exact (see module docstring)."""
    case_sensitive: bool = True
    """Compare case-sensitively."""
    skip_special_tokens: bool = True
    """Decode without special tokens (IF) — UTF decodes with them, which only matters for `exact`."""

    def describe(self) -> str:
        dec = "greedy" if not self.do_sample else f"sampled T={self.temperature}"
        pre = f", answer prefix {self.answer_prefix!r} appended" if self.answer_prefix else ""
        return f"{dec}, {self.max_new_tokens} new tokens{pre}; hit = {self.match}" + (
            "" if self.case_sensitive else " (case-insensitive)")


@dataclass
class PairResult:
    """One trigger's outcome."""

    prompt: str
    target: str
    output: str
    hit: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FSRResult:
    """FSR of one model on one fingerprint set, with every pair's output."""

    variant: str
    fsr: float
    hits: int
    n: int
    spec: dict[str, Any]
    definition: str
    pairs: list[PairResult]
    seconds: float = 0.0
    control: dict[str, Any] | None = None
    """The same decoding and match rule on prompts *without* a trigger (the set's negatives, else its
    regularisation chats), each checked for a fingerprint target: {"rate", "hits", "n", "pairs"}. A fingerprint
    that is specific to its trigger keeps the rate near 0; a rate near the FSR means the measurement is answered
    by something other than the trigger (e.g. IF's forced answer prefix on its own)."""
    interval: dict[str, Any] = field(default_factory=dict)
    """FSR as a rate record (hits, n, Wilson 95 % interval; `stats.rate_record`), derived from `pairs`."""
    flags: list[int] = field(default_factory=list)
    """Per-trigger 0/1 hits, in `pairs` order: what the report's paired test (McNemar) reads."""
    prompts_sha: str = ""
    """Digest of the trigger prompts in order: two results are paired only when theirs are equal."""

    def __post_init__(self) -> None:
        # derived from the pairs every time (also on replace() / from_dict()), so they cannot disagree with them
        self.interval = rate_record(self.hits, self.n)
        self.flags = bits(p.hit for p in self.pairs)
        self.prompts_sha = digest([p.prompt for p in self.pairs])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FSRResult":
        return cls(**{**d, "pairs": [PairResult(**p) for p in d["pairs"]]})


_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str, case_sensitive: bool = False) -> str:
    """NFKC, punctuation → space, collapsed whitespace (and lower-case unless case_sensitive)."""
    t = unicodedata.normalize("NFKC", text)
    t = _PUNCT.sub(" ", t).strip()
    t = " ".join(t.split())
    return t if case_sensitive else t.lower()


def is_hit(output: str, target: str, rule: MatchRule = "substring", case_sensitive: bool = True) -> bool:
    """Apply a match rule. Empty targets never match (an empty string is a substring of everything)."""
    if not target.strip():
        return False
    if rule == "substring":
        return target in output if case_sensitive else target.lower() in output.lower()
    if rule == "exact":
        a, b = output.strip(), target.strip()
        return a == b if case_sensitive else a.lower() == b.lower()
    if rule == "first_words":
        o, t = normalise(output, case_sensitive), normalise(target, case_sensitive)
        return bool(t) and (o == t or o.startswith(t + " "))
    raise ValueError(f"unknown match rule {rule!r}")


def _gen_cfg(spec: FSRSpec, batch_size: int, seed: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=spec.max_new_tokens, batch_size=batch_size, do_sample=spec.do_sample,
                            temperature=spec.temperature, seed=seed)


def score_outputs(variant: str, spec: FSRSpec, prompts: Sequence[str], targets: Sequence[str],
                  outputs: Sequence[str], metas: Sequence[dict[str, Any]] | None = None,
                  seconds: float = 0.0) -> FSRResult:
    """Apply the match rule to decoded outputs and aggregate (FSR = hits / distinct triggers)."""
    pairs = [PairResult(p, t, o, is_hit(o, t, spec.match, spec.case_sensitive), dict(m))
             for p, t, o, m in zip(prompts, targets, outputs, metas or [{}] * len(prompts))]
    hits = sum(p.hit for p in pairs)
    return FSRResult(variant=variant, fsr=hits / len(pairs) if pairs else 0.0, hits=hits, n=len(pairs),
                     spec=asdict(spec), definition=spec.describe(), pairs=pairs, seconds=round(seconds, 3))


def split_control(res: FSRResult, n_triggers: int) -> FSRResult:
    """Split a result over [triggers..., controls...] into the triggers' FSR and the control hit rate."""
    trig, ctrl = res.pairs[:n_triggers], res.pairs[n_triggers:]
    hits, c_hits = sum(p.hit for p in trig), sum(p.hit for p in ctrl)
    control = {"rate": c_hits / len(ctrl), "hits": c_hits, "n": len(ctrl), "interval": rate_record(c_hits, len(ctrl)),
               "pairs": [asdict(p) for p in ctrl]} if ctrl else None
    return replace(res, fsr=hits / len(trig) if trig else 0.0, hits=hits, n=len(trig), pairs=trig, control=control)


def verify_prompts(model: Any, tok: Any, prompts: Sequence[str], targets: Sequence[str], spec: FSRSpec,
                   variant: str = "official", batch_size: int = 32, metas: Sequence[dict[str, Any]] | None = None,
                   seed: int = 0, progress: bool = True) -> FSRResult:
    """FSR over already-rendered prompts (batched). `spec.answer_prefix` is appended to every prompt."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    t0 = time.time()
    full = [p + spec.answer_prefix for p in prompts]
    outs = generate(model, tok, full, _gen_cfg(spec, batch_size, seed), desc=f"FSR ({variant})", progress=progress)
    return score_outputs(variant, spec, prompts, targets, outs, metas, time.time() - t0)


def verify_sequential(model: Any, tok: Any, prompts: Sequence[str], targets: Sequence[str], spec: FSRSpec,
                      variant: str = "official", seed: int = 0) -> FSRResult:
    """The official scripts' loop: one `generate` per trigger, no padding (reference for the benchmark)."""
    import torch

    t0 = time.time()
    outs = []
    device = next(model.parameters()).device
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample, pad_token_id=pad,
                                  eos_token_id=tok.eos_token_id)
    if spec.do_sample:
        torch.manual_seed(seed)
        kwargs.update(temperature=spec.temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([tok(p + spec.answer_prefix, add_special_tokens=False)["input_ids"]], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            outs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return score_outputs(variant, spec, prompts, targets, outs, None, time.time() - t0)
