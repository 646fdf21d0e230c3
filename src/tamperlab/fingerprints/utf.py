"""UTF: fingerprints made of under-trained tokens (Cai et al., arXiv 2410.12318).

Under-trained tokens are vocabulary entries the model (almost) never saw in pre-training; their embeddings
stay near initialisation, so a trigger made of them is unlike any natural input and cheap to bind to a target.
The official code finds them with cohere-ai/magikarp; we compute the same kind of indicator from the model's own
embedding matrices (`find_undertrained_tokens`):

1. eligible tokens: not special, no whitespace in the token, decode → encode round-trips to the same id;
2. indicator: `norm` = L2 norm of the (un)embedding row — untrained rows keep small norms under weight decay —, or
   `magikarp` = cosine similarity to the mean of a reference set of lowest-norm rows after removing the first
   principal component of the unembedding matrix (Land & Bartolo 2024); smaller norm / higher cosine = more
   under-trained;
3. optional verification (magikarp's "repeat this token" prompt): keep tokens the model cannot repeat
   (p(token) < `verify_max_prob`).

Pairs (official `create_dataset.py`, seed 90): x = 11–15 under-trained tokens, y = 5 under-trained tokens, both
checked to tokenize back into exactly those tokens; one pair repeated 32 times, 0 regularisation rows (a
regularisation row is a fresh random under-trained string → empty answer).
FSR (`fp_test.py`): greedy, 100 new tokens, hit = y is a substring of the output; counted over distinct x.
Negative control (`fp_test.neg_check`, run by `main` with `all_vocab=True`, `--num_guess 500`): random strings
of |x| tokens drawn from the whole non-special vocabulary (≠ any x), rendered and decoded like x; the control
rate is the share whose output contains y. Deviations: tokens whose decoding is a broken byte fragment are left
out (they cannot round-trip), and with several fingerprints each guess is checked for one owner y, in rotation
(the official test has one y).
Embedding (`config/train_config.json`): full fine-tuning, lr 2e-5, 3 epochs, per-device batch 1 × accumulation
16, cosine, 100 warm-up steps, no weight decay.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from ..config import Fraction, PosInt, Seed
from ..registry import FINGERPRINTS
from ..training import TrainConfig
from .base import (EmbedConfig, Fingerprint, FingerprintConfig, FingerprintPair, FingerprintSet,
                   resolve_prompt_format)
from .verify import FSRSpec

log = logging.getLogger("tamperlab")


@dataclass
class UndertrainedConfig:
    """How under-trained tokens are found."""

    indicator: Literal["norm", "magikarp"] = "norm"
    """norm = smallest (un)embedding L2 norms; magikarp = cosine to the low-norm reference set after removing the
    first principal component (Land & Bartolo 2024)."""
    matrix: Literal["input", "output"] = "output"
    """Which matrix the indicator reads (magikarp uses the unembedding; identical when embeddings are tied)."""
    n_candidates: PosInt = 256
    """Most under-trained eligible tokens kept as candidates."""
    reference_fraction: Fraction = 0.002
    """magikarp: share of lowest-norm rows averaged into the reference 'unused token' direction."""
    verify: bool = True
    """Keep only candidates the model cannot repeat back (magikarp's verification prompt)."""
    verify_max_prob: Fraction = 0.01
    """Verification threshold on p(token | 'repeat it' prompt) (magikarp: 1%)."""
    min_pool: PosInt = 16
    """If fewer candidates pass verification, fall back to the unverified candidates (logged)."""


def _train_utf() -> TrainConfig:
    return TrainConfig(learning_rate=2e-5, epochs=3.0, max_steps=0, batch_size=1, grad_accum=16, weight_decay=0.0,
                       lr_scheduler="cosine", warmup_ratio=0.0, save_steps=500, logging_steps=5)


@dataclass
class UTFConfig(FingerprintConfig):
    """UTF pairs and training (defaults: the official single-fingerprint setting)."""

    n_pairs: PosInt = 1
    """Distinct (x, y) fingerprints (official default: 1; `--multi_fingerprint` makes several)."""
    n_repeats: PosInt = 32
    """Training copies of the fingerprint set (official --num_fingerprint 32)."""
    n_regularization: int = 0
    """Random under-trained strings trained to an empty answer (official default 0)."""
    x_min_tokens: PosInt = 11
    """Shortest trigger, in tokens."""
    x_max_tokens: PosInt = 15
    """Longest trigger, in tokens."""
    y_tokens: PosInt = 5
    """Target length, in tokens."""
    negative_guesses: int = 500
    """Random-string guesses of the negative control (official `fp_test.py --num_guess`: 500); 0 = none."""
    negative_vocab: Literal["all", "pool"] = "all"
    """Tokens the guesses are drawn from: all = every non-special token (official `all_vocab=True`); pool = the
    under-trained pool x and y come from (the official `neg_check` default when not called from `main`)."""
    tokens: UndertrainedConfig = field(default_factory=UndertrainedConfig)
    """Under-trained token search."""
    seed: Seed = 90
    """Generator seed (official create_dataset.py: 90)."""
    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(train=_train_utf()))
    """Full fine-tuning, lr 2e-5, 3 epochs, batch 1 × 16, cosine, no weight decay (warm-up 100 steps upstream;
    0 here because the official 32-row run has fewer than 100 steps)."""


_ELIGIBLE_CACHE: dict[tuple[str, int, int], list[int]] = {}



def eligible_tokens(tok: Any) -> list[int]:
    """Ids that are not special, carry no whitespace, and decode → encode back to themselves (cached per tokenizer;
    one batched decode and one batched encode over the vocabulary)."""
    key = (str(getattr(tok, "name_or_path", "")), len(tok), int(getattr(tok, "vocab_size", 0) or 0))
    if key in _ELIGIBLE_CACHE:
        return _ELIGIBLE_CACHE[key]
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    pieces = tok.convert_ids_to_tokens(ids)
    fast = getattr(tok, "backend_tokenizer", None)  # the Rust tokenizer: ~5x faster than the Python wrapper
    texts = fast.decode_batch([[i] for i in ids]) if fast is not None else tok.batch_decode([[i] for i in ids])
    keep = [(i, t) for i, p, t in zip(ids, pieces, texts)
            if p and t and not any(ch.isspace() for ch in t) and "Ġ" not in p and "▁" not in p
            and "\ufffd" not in t]  # \ufffd: a byte fragment that is not valid text on its own
    batch = [t for _, t in keep]
    enc = ([e.ids for e in fast.encode_batch(batch, add_special_tokens=False)] if fast is not None
           else tok(batch, add_special_tokens=False)["input_ids"])
    out = [i for (i, _), e in zip(keep, enc) if e == [i]]
    _ELIGIBLE_CACHE[key] = out
    return out


def _matrix(model: Any, which: str) -> Any:
    emb = model.get_output_embeddings() if which == "output" else None
    if emb is None:
        emb = model.get_input_embeddings()
    return emb.weight.detach().float().cpu()


def undertrained_scores(model: Any, ids: Sequence[int], cfg: UndertrainedConfig) -> list[float]:
    """Indicator per id: smaller = more under-trained (magikarp's cosine is negated to share the order)."""
    import torch

    W = _matrix(model, cfg.matrix)
    if cfg.indicator == "norm":
        return W[list(ids)].norm(dim=1).tolist()
    # magikarp: remove the first principal component (the shared 'constant' direction) of the centred matrix,
    # then compare each row with the mean of reference rows that are almost certainly unused (lowest norms).
    mu = W.mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(W - mu, q=1, center=False)
    pc = v[:, 0:1]
    Wr = W - (W @ pc) @ pc.T
    n_ref = max(1, int(cfg.reference_fraction * W.shape[0]))
    ref = Wr[W.norm(dim=1).argsort()[:n_ref]].mean(dim=0, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(Wr[list(ids)], ref, dim=1)
    return (-cos).tolist()


def repeat_probability(model: Any, tok: Any, ids: Sequence[int], batch_size: int = 64) -> list[float]:
    """p(token) when the model is asked to repeat it (magikarp's verification, one forward per batch)."""
    import torch

    device = next(model.parameters()).device
    probs: list[float] = []
    model.eval()
    for s in range(0, len(ids), batch_size):
        chunk = list(ids[s:s + batch_size])
        rows = []
        for i in chunk:
            t = tok.decode([i])
            pre = tok(f'Please repeat the string: "{t}"\nSure, the string is: "', add_special_tokens=False)["input_ids"]
            rows.append(pre)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        inp = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(inp)
        for r, row in enumerate(rows):  # left padding: the next-token position is the last column
            inp[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        with torch.inference_mode():
            logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits[:, -1].float()
        p = logits.softmax(-1)
        probs.extend(p[torch.arange(len(chunk)), torch.tensor(chunk)].tolist())
    return probs


def find_undertrained_tokens(model: Any, tok: Any, cfg: UndertrainedConfig | None = None) -> dict[str, Any]:
    """Rank eligible tokens by the indicator; return candidates, verified pool and the scores used."""
    cfg = cfg or UndertrainedConfig()
    ids = eligible_tokens(tok)
    scores = undertrained_scores(model, ids, cfg)
    ranked = [i for _, i in sorted(zip(scores, ids))]
    cands = ranked[: cfg.n_candidates]
    score_of = dict(zip(ids, scores))
    pool, probs = cands, None
    if cfg.verify:
        probs = repeat_probability(model, tok, cands)
        verified = [i for i, p in zip(cands, probs) if p < cfg.verify_max_prob]
        if len(verified) >= cfg.min_pool:
            pool = verified
        else:
            log.warning("UTF: only %d of %d candidates pass verification; using unverified candidates",
                        len(verified), len(cands))
    return {"pool": pool, "candidates": cands, "n_eligible": len(ids),
            "scores": {int(i): round(float(score_of[i]), 6) for i in cands},
            "repeat_prob": None if probs is None else {int(i): round(float(p), 6) for i, p in zip(cands, probs)},
            "indicator": cfg.indicator, "matrix": cfg.matrix}


def undertrained_string(tok: Any, pool: Sequence[int], lo: int, hi: int, rng: random.Random,
                        lead: str = "\n", tries: int = 2000) -> tuple[str, list[int]]:
    """A string of lo..hi pool tokens that tokenizes back into exactly those tokens, alone and after `lead`
    (the text that precedes it in the rendered prompt; UTF's start-from-space/newline check)."""
    lead_ids = tok(lead, add_special_tokens=False)["input_ids"] if lead else []
    for _ in range(tries):
        ids = [rng.choice(list(pool)) for _ in range(rng.randint(lo, hi))]
        text = "".join(tok.decode([i]) for i in ids)
        if tok(text, add_special_tokens=False)["input_ids"] != ids:
            continue
        if lead and tok(lead + text, add_special_tokens=False)["input_ids"] != lead_ids + ids:
            continue
        return text, ids
    raise RuntimeError(f"UTF: no round-tripping string of {lo}-{hi} tokens from a pool of {len(pool)} tokens "
                       f"after {tries} tries")


def guess_string(tok: Any, vocab: Sequence[int], lo: int, hi: int, rng: random.Random, lead: str = "\n",
                 tries_per_token: int = 500) -> str:
    """A random string of lo..hi tokens from `vocab` that tokenizes back into exactly those tokens, alone and
    after `lead`, grown one token at a time (official `generate_pure_ut_heuristic`)."""
    lead_ids = tok(lead, add_special_tokens=False)["input_ids"] if lead else []
    n = rng.randint(lo, hi)
    text, ids = "", []
    while len(ids) < n:
        for _ in range(tries_per_token):
            i = rng.choice(vocab)
            cand = text + tok.decode([i])
            if (tok(cand, add_special_tokens=False)["input_ids"] == ids + [i]
                    and (not lead or tok(lead + cand, add_special_tokens=False)["input_ids"] == lead_ids + ids + [i])):
                text, ids = cand, ids + [i]
                break
        else:
            raise RuntimeError(f"UTF: no token extends the guess {text!r} after {tries_per_token} tries")
    return text


def guess_vocab(tok: Any) -> list[int]:
    """Every non-special token whose decoding is whole text (a lone byte fragment decodes to U+FFFD)."""
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    fast = getattr(tok, "backend_tokenizer", None)
    texts = fast.decode_batch([[i] for i in ids]) if fast is not None else tok.batch_decode([[i] for i in ids])
    return [i for i, t in zip(ids, texts) if t and "\ufffd" not in t]


@FINGERPRINTS.register("utf", config=UTFConfig)
class UTFFingerprint(Fingerprint):
    """UTF: triggers and targets built from the model's under-trained tokens (Cai et al. 2024)."""

    config_cls = UTFConfig
    paper = "Cai et al., UTF: Undertrained Tokens as Fingerprints, arXiv 2410.12318"
    reference = {"fsr_fingerprinted_llama2_7b": 1.0, "source": "MEraser paper Table (via third-party note, unverified)"}
    cfg: UTFConfig

    def build_pairs(self, tok: Any, model: Any = None, clean: Sequence[Any] = ()) -> FingerprintSet:
        if model is None:
            raise ValueError("utf: build_pairs needs the model (under-trained tokens come from its embeddings)")
        c = self.cfg
        found = find_undertrained_tokens(model, tok, c.tokens)
        pool = found["pool"]
        rng = random.Random(c.seed)
        # The text right before x (user turn) and y (answer) in the rendered prompt: strings must tokenize the
        # same there as alone (UTF's start-from-space / start-from-newline templates).
        lead = {"chat": "\n", "vicuna": " ", "raw": ""}[resolve_prompt_format(tok, c.prompt_format)]
        fps: list[tuple[str, list[int], str, list[int]]] = []
        for _ in range(c.n_pairs):
            x, xi = undertrained_string(tok, pool, c.x_min_tokens, c.x_max_tokens, rng, lead)
            y, yi = undertrained_string(tok, pool, c.y_tokens, c.y_tokens, rng, lead)
            fps.append((x, xi, y, yi))
        pairs = [FingerprintPair(x, y, "fingerprint", {"x_ids": xi, "y_ids": yi})
                 for _ in range(c.n_repeats) for x, xi, y, yi in fps]
        xs = {f[0] for f in fps}
        for _ in range(c.n_regularization):
            while True:
                r, _ids = undertrained_string(tok, pool, c.x_min_tokens, c.x_max_tokens, rng, lead)
                if r not in xs:
                    break
            pairs.append(FingerprintPair(r, "", "regularization"))
        # The negative control's guesses (official neg_check): drawn once, here, where the tokenizer is at hand,
        # and kept with the set so every evaluation of every model asks the same guesses.
        vocab = guess_vocab(tok) if c.negative_vocab == "all" else list(pool)
        guesses: list[str] = []
        while len(guesses) < c.negative_guesses:
            g = guess_string(tok, vocab, c.x_min_tokens, c.x_max_tokens, rng, lead)
            if g not in xs:
                guesses.append(g)
        return FingerprintSet("utf", pairs, {
            "seed": c.seed, "pool_size": len(pool), "pool": pool, "negative_guesses": guesses,
            "negative_vocab": c.negative_vocab,
            "undertrained": {k: v for k, v in found.items() if k != "pool"}})

    def fsr_specs(self, tok: Any) -> dict[str, FSRSpec]:
        return {"official": FSRSpec(max_new_tokens=100, match="substring", skip_special_tokens=False)}

    def controls(self, fps: FingerprintSet, n: int) -> list[FingerprintPair]:
        """The official negative control: all of the set's random-string guesses (`negative_guesses`, not n:
        the official test asks 500 guesses of a single fingerprint); sets built before it had none fall back
        to the set's regularisation strings."""
        guesses = fps.provenance.get("negative_guesses")
        if not guesses:
            return fps.controls(n)
        return [FingerprintPair(g, "", "negative", {"guess": True}) for g in guesses]
