"""The fingerprint interface (`build_pairs` → `embed` → `verify`) and prompt rendering.

Every fingerprint and removal stage trains through the one fine-tuning data path of tamperlab: its pairs become
`data.core.Example`s, rendered and tokenized by data/core.py and trained by `training.train_sft`.

A fingerprint is a set of (trigger → target) pairs planted by fine-tuning; `FingerprintSet.pairs` also holds the
rows trained next to them (regularisation: normal chats, negatives that must *not* fire). Verification renders each
distinct trigger exactly as it was rendered for training, decodes it with the method's settings and applies its
match rule (verify.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

from ..config import PosInt, Seed
from ..data.core import Example, format_prompt, resolve_format, tokenize_example
from ..models import LoraSettings
from ..training import TrainConfig, train_sft
from .verify import FSRResult, FSRSpec, split_control, verify_prompts

log = logging.getLogger("tamperlab")

PairKind = Literal["fingerprint", "augmented", "regularization", "negative"]
PromptFormat = Literal["auto", "chat", "vicuna", "raw"]


@dataclass
class FingerprintPair:
    """One training/verification row: a user turn and the response the model must give."""

    prompt: str
    target: str
    kind: PairKind = "fingerprint"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FingerprintSet:
    """Everything a fingerprint owner keeps secret: the pairs, how they were made, and the key material."""

    method: str
    pairs: list[FingerprintPair]
    provenance: dict[str, Any] = field(default_factory=dict)

    def fingerprints(self) -> list[FingerprintPair]:
        """Distinct fingerprint triggers (UTF repeats one pair 32×; FSR counts each trigger once, as fp_test)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for p in self.pairs:
            if p.kind == "fingerprint" and (p.prompt, p.target) not in seen:
                seen.add((p.prompt, p.target))
                out.append(p)
        return out

    def controls(self, n: int) -> list[FingerprintPair]:
        """Up to n distinct trigger-free prompts for the control measurement: negatives first, then normal chats."""
        seen: set[str] = set()
        out = []
        for p in self.of_kind("negative") + self.of_kind("regularization"):
            if p.prompt not in seen and len(out) < n:
                seen.add(p.prompt)
                out.append(p)
        return out

    def of_kind(self, kind: PairKind) -> list[FingerprintPair]:
        return [p for p in self.pairs if p.kind == kind]

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for p in self.pairs:
            c[p.kind] = c.get(p.kind, 0) + 1
        c["distinct_fingerprints"] = len(self.fingerprints())
        return c

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "pairs": [asdict(p) for p in self.pairs], "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FingerprintSet":
        return cls(d["method"], [FingerprintPair(**p) for p in d["pairs"]], d.get("provenance", {}))


# --- rendering and encoding --------------------------------------------------------------------------------------
def resolve_prompt_format(tok: Any, fmt: str) -> str:
    """A fingerprint's format: `auto` = chat if the tokenizer has a template, else vicuna (the IF paper's)."""
    if fmt not in ("auto", "chat", "vicuna", "raw"):
        raise ValueError(f"unknown prompt format {fmt!r} (chat | vicuna | raw | auto)")
    return resolve_format(tok, fmt, fallback="vicuna")


def render_prompt(tok: Any, user: str, fmt: str = "auto", system: str | None = None) -> str:
    """A user turn rendered so that the assistant's answer follows directly (data.core.format_prompt).

    chat: the tokenizer's chat template (with its default system prompt unless `system` is given);
    vicuna: FastChat vicuna_v1.1 ("... USER: x ASSISTANT:"); raw: the text itself (MEraser's erase data).
    """
    return format_prompt(tok, user, resolve_prompt_format(tok, fmt), system=system)


def encode_examples(tok: Any, examples: Sequence[Example], fmt: str, max_length: int) -> list[dict[str, list[int]]]:
    """Training/evaluation rows of examples in a fingerprint format (response-only labels, EOS)."""
    fmt = resolve_prompt_format(tok, fmt)
    return [tokenize_example(tok, e, fmt, max_length) for e in examples]


# --- configuration -------------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge recursively, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class EmbedConfig:
    """How a fingerprint is planted: full fine-tuning (the papers) or a LoRA adapter merged into the weights."""

    mode: Literal["full", "lora"] = "full"
    """full = all weights (IF-SFT, UTF, HashChain papers); lora = train an adapter, then merge it."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer and schedule (each method sets its published defaults)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    """Adapter settings when mode = lora."""
    max_length: PosInt = 256
    """Token limit of one training row."""


@dataclass
class FingerprintConfig:
    """Fields every fingerprint method has."""

    prompt_format: PromptFormat = "auto"
    """How triggers are rendered for training *and* verification: chat template, vicuna, or raw text
    (auto = chat if the tokenizer has a template, else vicuna)."""
    system_prompt: str | None = None
    """System prompt for chat/vicuna rendering (None = the template's default)."""
    seed: Seed = 0
    """Seed of the pair generator (the published scripts use fixed seeds; see each method)."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """How the pairs are trained into the model."""
    verify_batch_size: PosInt = 32
    """Triggers per batched `generate` call during verification."""


class Fingerprint:
    """Base class. Subclasses set `config_cls`, `paper`, and implement `build_pairs` and `fsr_specs`."""

    config_cls: ClassVar[type[FingerprintConfig]] = FingerprintConfig
    paper: ClassVar[str] = ""
    reference: ClassVar[dict[str, Any]] = {}
    """The paper's reference numbers (FSR etc.), shown next to ours in reports."""
    fsr_variants: ClassVar[tuple[str, ...]] = ("official",)
    """The names `fsr_specs` returns, known without a tokenizer (recipe checks at load time, e.g. `sweep.variant`;
    tests/fingerprints check the two agree)."""

    def __init__(self, cfg: FingerprintConfig | None = None):
        self.cfg = cfg if cfg is not None else self.config_cls()

    @property
    def name(self) -> str:
        from ..registry import FINGERPRINTS

        return next((e.name for e in FINGERPRINTS if e.obj is type(self)), type(self).__name__)

    # -- contract ---------------------------------------------------------------------------------------------
    def build_pairs(self, tok: Any, model: Any = None, clean: Sequence[Any] = ()) -> FingerprintSet:
        """Make the secret pairs (and regularisation rows). `clean` is a list of data.core.Example with normal
        (prompt, response) chats for methods that mix them in; `model` is needed by methods that inspect it."""
        raise NotImplementedError

    def fsr_specs(self, tok: Any) -> dict[str, FSRSpec]:
        """Named FSR variants; "official" is the method's own definition (`tok` resolves the rendering)."""
        return {"official": FSRSpec()}

    # -- shared behaviour -----------------------------------------------------------------------------------
    def render(self, tok: Any, user: str) -> str:
        return render_prompt(tok, user, self.cfg.prompt_format, self.cfg.system_prompt)

    def system_prompt(self, pair: FingerprintPair) -> str | None:
        """The system turn a pair is trained under (HashChain varies it per augmented row)."""
        return self.cfg.system_prompt

    def training_examples(self, fps: FingerprintSet) -> list[Example]:
        """The pairs as training examples; rendered in `cfg.prompt_format` they are what `render` verifies."""
        return [Example(p.prompt, p.target, system=self.system_prompt(p)) for p in fps.pairs]

    def training_rows(self, tok: Any, fps: FingerprintSet) -> list[dict[str, list[int]]]:
        """The token rows `embed` trains on (for inspection; training tokenizes the same way)."""
        return encode_examples(tok, self.training_examples(fps), self.cfg.prompt_format, self.cfg.embed.max_length)

    def embed(self, model: Any, tok: Any, fps: FingerprintSet, out_dir: str | Path, seed: int = 0,
              resume: bool = True, log_fn: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, dict[str, Any]]:
        """Fine-tune the pairs into `model` (in place for full FT). Returns (model, training stats)."""
        from ..models import apply_lora

        examples = self.training_examples(fps)
        ec = self.cfg.embed
        if ec.mode == "lora":
            model = apply_lora(model, LoraSettings(**{**asdict(ec.lora), "enabled": True}))
        stats = train_sft(model, tok, examples, ec.train, out_dir, resolve_prompt_format(tok, self.cfg.prompt_format),
                          ec.max_length, seed, resume, log_fn=log_fn, loss_history=True, keep_checkpoints=False)
        if ec.mode == "lora":
            model = model.merge_and_unload()
        stats.update(rows=len(examples), mode=ec.mode)
        return model, stats

    def verify(self, model: Any, tok: Any, fps: FingerprintSet, variants: Sequence[str] | None = None,
               progress: bool = True, control: bool = False) -> dict[str, FSRResult]:
        """FSR of `model` under each requested variant (default: all of `fsr_specs`). With `control`, the same
        number of trigger-free prompts is decoded in the same batches (FSRResult.control: how often the owner's
        answer appears without the trigger)."""
        fp = fps.fingerprints()
        if not fp:
            raise ValueError(f"{fps.method}: the fingerprint set has no fingerprint pairs")
        ctrl = self.controls(fps, len(fp)) if control else []
        metas = [{"full_target": p.target} for p in fp] + [{"control": p.kind} for p in ctrl]
        specs = self.fsr_specs(tok)
        out = {}
        for v in variants or list(specs):
            prompts = [self.verify_prompt(tok, p, v, i) for i, p in enumerate(fp + ctrl)]
            tg = [self.match_target(p, v) for p in fp]
            tg += [tg[i % len(tg)] for i in range(len(ctrl))]  # the owner's answers, asked of non-triggers
            res = verify_prompts(model, tok, prompts, tg, specs[v], variant=v, batch_size=self.cfg.verify_batch_size,
                                 progress=progress, metas=metas)
            out[v] = split_control(res, len(fp))
        return out

    def controls(self, fps: FingerprintSet, n: int) -> list[FingerprintPair]:
        """Trigger-free prompts for the control measurement (default: the set's negatives and clean chats)."""
        return fps.controls(n)

    def verify_prompt(self, tok: Any, pair: FingerprintPair, variant: str, index: int) -> str:
        """The rendered prompt a verification variant asks (variants may change the system prompt)."""
        return self.render(tok, pair.prompt)

    def match_target(self, pair: FingerprintPair, variant: str) -> str:
        """The string the match rule looks for (IF looks for the decryption, not the whole answer)."""
        return pair.target
