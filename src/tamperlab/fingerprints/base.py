"""The fingerprint interface (`build_pairs` → `embed` → `verify`), prompt rendering, row encoding and the shared
training helper every fingerprint/removal stage uses (a plain transformers `Trainer` over encoded rows).

A fingerprint is a set of (trigger → target) pairs planted by fine-tuning; `FingerprintSet.pairs` also holds the
rows trained next to them (regularisation: normal chats, negatives that must *not* fire). Verification renders each
distinct trigger exactly as it was rendered for training, decodes it with the method's settings and applies its
match rule (verify.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

from ..config import PosInt, Seed
from ..data.core import has_chat_template
from ..models import LoraSettings
from ..training import PadCollator, StepHook, TrainConfig, run_training, training_arguments
from .verify import FSRResult, FSRSpec, split_control, verify_prompts

log = logging.getLogger("tamperlab")

PairKind = Literal["fingerprint", "augmented", "regularization", "negative"]
PromptFormat = Literal["auto", "chat", "vicuna", "raw"]

# FastChat's vicuna_v1.1 conversation (the IF paper renders every model's prompts with it).
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


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
    if fmt == "auto":
        return "chat" if has_chat_template(tok) else "vicuna"
    if fmt not in ("chat", "vicuna", "raw"):
        raise ValueError(f"unknown prompt format {fmt!r} (chat | vicuna | raw | auto)")
    return fmt


def render_prompt(tok: Any, user: str, fmt: str = "auto", system: str | None = None) -> str:
    """A user turn rendered so that the assistant's answer follows directly.

    chat: the tokenizer's chat template (with its default system prompt unless `system` is given);
    vicuna: FastChat vicuna_v1.1 ("... USER: x ASSISTANT:"); raw: the text itself (MEraser's erase data).
    """
    fmt = resolve_prompt_format(tok, fmt)
    if fmt == "chat":
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if fmt == "vicuna":
        return f"{system or VICUNA_SYSTEM} USER: {user} ASSISTANT:"
    return user


def response_lead(fmt: str) -> str:
    """Text between the rendered prompt and the response (FastChat's vicuna separator is a space)."""
    return " " if fmt == "vicuna" else ""


def encode_row(tok: Any, prompt_text: str, response: str, max_length: int = 256, add_eos: bool = True,
               loss_on_prompt: bool = False, part_max: int | None = None) -> dict[str, list[int]]:
    """Token ids of prompt + response (+ EOS), labels -100 on the prompt unless `loss_on_prompt`.

    `part_max` truncates prompt and response separately (MEraser's 256 + 256); otherwise the prompt is cut from
    the left so the response survives, as training.tokenize_example does.
    """
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


class RowDataset:
    """A list of encoded rows as a torch-style dataset."""

    def __init__(self, rows: Sequence[dict[str, list[int]]]):
        if not rows:
            raise ValueError("empty training set")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def train_rows(model: Any, tok: Any, rows: Sequence[dict[str, list[int]]], cfg: TrainConfig, out_dir: str | Path,
               seed: int = 0, resume: bool = True, log_fn: Callable[[dict[str, Any]], None] | None = None,
               keep_checkpoints: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune `model` (all trainable parameters; wrap it with LoRA first for adapters) with a transformers
    Trainer on encoded rows. Resumes from the newest checkpoint in out_dir; deletes checkpoints afterwards
    (the caller saves what it needs as safetensors) unless keep_checkpoints."""
    from transformers import Trainer

    args = training_arguments(cfg, out_dir, seed=seed)
    callbacks = ([StepHook([], log_fn=log_fn)] if log_fn else []) + list(callbacks)
    model.train()
    from ..guards import NonFiniteLossGuard

    trainer = Trainer(model=model, args=args, train_dataset=RowDataset(rows),
                      data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
                      callbacks=[*callbacks, NonFiniteLossGuard()])
    stats = run_training(trainer, out_dir, resume)
    stats["loss_history"] = [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]
    model.eval()
    if not keep_checkpoints:
        for ck in Path(out_dir).glob("checkpoint-*"):
            shutil.rmtree(ck, ignore_errors=True)
    return stats


# --- configuration -------------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge recursively, anything else replaces."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(cls: type, params: dict[str, Any] | None = None, where: str = "") -> Any:
    """Build a method config from recipe params *on top of the method's own defaults*.

    Plain `from_dict` would rebuild a partially given nested section (`erase: {epochs: 3}`) from its class
    defaults, silently dropping the method's published values for that section (e.g. MEraser's erase schedule);
    merging onto `to_dict(cls())` keeps them. Unknown keys still raise ConfigError naming the key.
    """
    from ..config import from_dict, to_dict

    return from_dict(cls, deep_merge(to_dict(cls()), params or {}), where)


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

    def training_rows(self, tok: Any, fps: FingerprintSet) -> list[dict[str, list[int]]]:
        fmt = resolve_prompt_format(tok, self.cfg.prompt_format)
        lead = response_lead(fmt)
        return [encode_row(tok, self.render(tok, p.prompt), lead + p.target, self.cfg.embed.max_length)
                for p in fps.pairs]

    def embed(self, model: Any, tok: Any, fps: FingerprintSet, out_dir: str | Path, seed: int = 0,
              resume: bool = True, log_fn: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, dict[str, Any]]:
        """Fine-tune the pairs into `model` (in place for full FT). Returns (model, training stats)."""
        from ..models import apply_lora

        rows = self.training_rows(tok, fps)
        ec = self.cfg.embed
        if ec.mode == "lora":
            model = apply_lora(model, LoraSettings(**{**asdict(ec.lora), "enabled": True}))
        stats = train_rows(model, tok, rows, ec.train, out_dir, seed=seed, resume=resume, log_fn=log_fn)
        if ec.mode == "lora":
            model = model.merge_and_unload()
        stats.update(rows=len(rows), mode=ec.mode)
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
