"""Fingerprint removal: the interface and the baseline attacks of the MEraser paper.

A removal is what a model thief does to a stolen, fingerprinted model without knowing the fingerprint. It gets
the model, clean data, and (where the attack needs it) the public base model; `apply` yields one or more
`RemovalStage`s (MEraser yields `erase` then `recover`), each of which the experiment verifies (FSR) and
measures (PPL, accuracy).

Baselines (registry names):
* `finetune` — incremental fine-tuning on clean instruction data (the paper: Guanaco / ShareGPT);
* `prune_magnitude`, `prune_wanda`, `prune_random` — unstructured pruning at a ratio (pruning.py);
* `merge_task_arithmetic`, `merge_ties`, `merge_dare` — merge the stolen model with a donor model of the same
  base (by default the base fine-tuned on clean data, trained once per run), merging.py;
* `token_forcing` — detect-and-suppress: force every probe token after BOS (and after the assistant header),
  decode greedily, flag continuations the model emits with high confidence from many unrelated probes (the
  memorised fingerprint answer), and ban them at generation time (`bad_words_ids`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

from .. import distributed
from ..config import Fraction, PosInt
from ..models import LoraSettings
from ..registry import REMOVALS
from ..training import TrainConfig, train_sft
from .base import render_prompt, resolve_prompt_format
from .cleandata import CleanData

log = logging.getLogger("tamperlab")


@dataclass
class RemovalContext:
    """What a removal may use. It never sees the fingerprint pairs."""

    tok: Any
    clean: CleanData
    work_dir: Path
    """Artifacts of this (removal, fingerprinted model): adapters, checkpoints."""
    shared_dir: Path
    """Artifacts shared by every fingerprinted model of the run (donor model, transferable erase LoRA)."""
    load_base: Callable[[], Any]
    """Returns a fresh copy of the clean base model (the public model the stolen one was derived from)."""
    seed: int = 0
    resume: bool = True
    log_fn: Callable[[dict[str, Any]], None] | None = None
    monitor: Callable[[Any], dict[str, float]] | None = None
    """Measurement only (the experiment's FSR probe): called on the model being trained every `monitor_every`
    optimizer steps of a removal's training phases; the removal's own logic never sees its result."""
    monitor_every: int = 0


@dataclass
class RemovalStage:
    """One model state after (part of) a removal."""

    name: str
    model: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RemovalConfig:
    """Fields every removal has."""

    prompt_format: Literal["auto", "chat", "vicuna", "raw"] = "auto"
    """How clean training pairs are rendered (auto = chat template when the tokenizer has one)."""


class Removal:
    """Base class: subclasses set `config_cls` and implement `apply`."""

    config_cls: ClassVar[type[RemovalConfig]] = RemovalConfig
    paper: ClassVar[str] = ""
    reference: ClassVar[dict[str, Any]] = {}
    """The MEraser paper's Llama2-7B FSR after this attack (IF-SFT / UTF / HC), where reported."""

    def __init__(self, cfg: RemovalConfig | None = None):
        self.cfg = cfg if cfg is not None else self.config_cls()

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        raise NotImplementedError


def train_clean(model: Any, ctx: RemovalContext, examples: Sequence[Any], cfg: TrainConfig, fmt: str,
                max_length: int, out_dir: Path) -> dict[str, Any]:
    """Fine-tune `model` on clean (prompt, response) pairs rendered in a fingerprint format (response-only)."""
    return train_sft(model, ctx.tok, examples, cfg, out_dir, resolve_prompt_format(ctx.tok, fmt), max_length,
                     ctx.seed, ctx.resume, log_fn=ctx.log_fn, loss_history=True, keep_checkpoints=False)


# --- incremental fine-tuning -------------------------------------------------------------------------------
def _ft_train() -> TrainConfig:
    return TrainConfig(learning_rate=2e-5, epochs=2.0, max_steps=0, batch_size=8, grad_accum=1, weight_decay=0.0,
                       lr_scheduler="cosine", save_steps=500, logging_steps=5)


@dataclass
class FinetuneConfig(RemovalConfig):
    """Incremental fine-tuning on clean instruction data."""

    mode: Literal["full", "lora"] = "full"
    """Full fine-tuning or a merged LoRA adapter."""
    n_examples: PosInt = 600
    """Clean pairs trained on."""
    train: TrainConfig = field(default_factory=_ft_train)
    """Optimizer and schedule (stand-in: lr 2e-5, 2 epochs, cosine)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, target_modules=["q_proj", "v_proj"]))
    """Adapter settings when mode = lora."""
    max_length: PosInt = 256
    """Token limit per row."""


@REMOVALS.register("finetune", config=FinetuneConfig)
class IncrementalFinetune(Removal):
    """Incremental fine-tuning of the stolen model on clean instruction data."""

    config_cls = FinetuneConfig
    reference = {"llama2_7b_fsr": {"guanaco": {"instructional": 1.0, "utf": 0.75, "hashchain": 0.0},
                                   "sharegpt": {"instructional": 1.0, "utf": 0.03125, "hashchain": 0.0}}}
    cfg: FinetuneConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        from ..models import apply_lora

        c = self.cfg
        data = ctx.clean.train.examples[: c.n_examples]
        if c.mode == "lora":
            model = apply_lora(model, LoraSettings(**{**asdict(c.lora), "enabled": True}))
        stats = train_clean(model, ctx, data, c.train, c.prompt_format, c.max_length, ctx.work_dir / "train")
        if c.mode == "lora":
            model = model.merge_and_unload()
        yield RemovalStage("after", model, {"train": stats, "n_examples": len(data)})


# --- pruning ------------------------------------------------------------------------------------------------
@dataclass
class PruneConfig(RemovalConfig):
    """Unstructured pruning of the decoder linear layers."""

    ratio: Fraction = 0.2
    """Fraction of weights zeroed per layer (the paper's table: 5% L1/L2, 20% random/Taylor)."""
    n_calibration: PosInt = 32
    """Wanda only: clean texts whose activations weight the magnitudes."""
    calibration_length: PosInt = 128
    """Wanda only: token limit per calibration text."""


class _Prune(Removal):
    config_cls = PruneConfig
    method: ClassVar[str] = "magnitude"
    cfg: PruneConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        from .pruning import input_norms, prune_model

        norms = None
        if self.method == "wanda":
            texts = [render_prompt(ctx.tok, e.prompt, self.cfg.prompt_format) + e.response
                     for e in ctx.clean.train.examples[: self.cfg.n_calibration]]
            norms = input_norms(model, ctx.tok, texts, self.cfg.calibration_length)
        info = prune_model(model, self.method, self.cfg.ratio, norms, seed=ctx.seed)  # type: ignore[arg-type]
        yield RemovalStage("after", model, info)


@REMOVALS.register("prune_magnitude", config=PruneConfig)
class MagnitudePrune(_Prune):
    """Magnitude (L1) pruning: zero the smallest |w| of each decoder weight matrix at a ratio."""

    method = "magnitude"
    reference = {"llama2_7b_fsr_l1_5pct": {"instructional": 0.875, "utf": 0.03125, "hashchain": 0.30}}


@REMOVALS.register("prune_wanda", config=PruneConfig)
class WandaPrune(_Prune):
    """Wanda pruning: |w|·‖x‖ scores on clean calibration text, pruned per output row at a ratio."""

    method = "wanda"


@REMOVALS.register("prune_random", config=PruneConfig)
class RandomPrune(_Prune):
    """Random unstructured pruning at a ratio."""

    method = "random"
    reference = {"llama2_7b_fsr_20pct": {"instructional": 0.5, "utf": 0.0, "hashchain": 0.30}}


# --- merging ------------------------------------------------------------------------------------------------
def _donor_train() -> TrainConfig:
    return TrainConfig(learning_rate=2e-5, epochs=1.0, max_steps=0, batch_size=8, grad_accum=1, weight_decay=0.0,
                       lr_scheduler="cosine", save_steps=500, logging_steps=5)


@dataclass
class MergeConfig(RemovalConfig):
    """Merge the stolen model with a donor model of the same base."""

    donor: str = "finetuned"
    """finetuned = the base fine-tuned on clean data (trained once per run); base = the clean base itself;
    or a local model directory of the same architecture."""
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    """Weights of [stolen model, donor] task vectors."""
    density: Fraction = 0.5
    """TIES / DARE: fraction of each task vector kept."""
    scale: float = 1.0
    """λ: scale of the merged task vector added to the base."""
    donor_examples: PosInt = 200
    """finetuned donor: clean pairs it is trained on."""
    donor_train: TrainConfig = field(default_factory=_donor_train)
    """finetuned donor: optimizer and schedule."""
    max_length: PosInt = 256
    """finetuned donor: token limit per row."""


def donor_state_dict(ctx: RemovalContext, cfg: MergeConfig) -> dict[str, Any]:
    """The donor's weights; a fine-tuned donor is trained once and cached as safetensors in the shared dir."""
    import torch
    from safetensors.torch import load_file
    from safetensors.torch import save as safetensors_bytes

    from ..runs import atomic_write_bytes

    if cfg.donor == "base":
        return {k: v.detach().clone() for k, v in ctx.load_base().state_dict().items()}
    if cfg.donor != "finetuned":
        from transformers import AutoModelForCausalLM

        from ..errors import ResourceError

        if not Path(cfg.donor).is_dir():
            raise ResourceError(f"merge donor {cfg.donor!r} is not a local model directory (or 'finetuned'/'base')")
        m = AutoModelForCausalLM.from_pretrained(cfg.donor, dtype=torch.float32)
        return m.state_dict()
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([cfg.donor_examples, asdict(cfg.donor_train), cfg.max_length, cfg.prompt_format],
                                    sort_keys=True).encode()).hexdigest()[:10]
    path = ctx.shared_dir / f"donor-{key}" / "model.safetensors"
    # Multi-process: the main process decides, so that no rank loads while another trains (see meraser.train_phase)
    if distributed.run_collectively(path.exists):
        return load_file(str(path))
    base = ctx.load_base()
    # The donor is trained on the *end* of the clean pool, the incremental-FT attack on its start: two
    # different fine-tunes of the same base, as in the paper's merging setting.
    train_clean(base, ctx, ctx.clean.train.examples[-cfg.donor_examples:], cfg.donor_train, cfg.prompt_format,
                cfg.max_length, path.parent / "train")
    sd = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
    if "lm_head.weight" in sd and getattr(base.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight")  # shared storage; safetensors refuses aliases
    distributed.run_collectively(lambda: atomic_write_bytes(path, lambda f: f.write(safetensors_bytes(sd))))
    return sd


class _Merge(Removal):
    config_cls = MergeConfig
    method: ClassVar[str] = "task_arithmetic"
    cfg: MergeConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        from .merging import merge_state_dicts

        c = self.cfg
        if len(c.weights) != 2:
            raise ValueError(f"merge weights must be [stolen, donor], got {c.weights}")
        base_sd = ctx.load_base().state_dict()
        donor = donor_state_dict(ctx, c)
        mine = model.state_dict()
        keys = [k for k in mine if k in donor]  # tied lm_head may be absent from a saved donor
        merged = merge_state_dicts({k: base_sd[k] for k in keys}, [{k: mine[k] for k in keys},
                                                                   {k: donor[k] for k in keys}],
                                   list(c.weights), self.method, c.density, c.scale, seed=ctx.seed)  # type: ignore[arg-type]
        model.load_state_dict(merged, strict=False)
        yield RemovalStage("after", model, {"method": self.method, "weights": c.weights, "density": c.density,
                                             "scale": c.scale, "donor": c.donor})


@REMOVALS.register("merge_task_arithmetic", config=MergeConfig)
class TaskArithmeticMerge(_Merge):
    """Task Arithmetic merge of the stolen model with a donor of the same base."""

    method = "task_arithmetic"
    reference = {"llama2_7b_fsr": {"instructional": 0.0, "utf": 0.0, "hashchain": "0.5-0.9"}}


@REMOVALS.register("merge_ties", config=MergeConfig)
class TiesMerge(_Merge):
    """TIES merge (trim, elect sign, disjoint mean) with a donor of the same base."""

    method = "ties"


@dataclass
class DareConfig(MergeConfig):
    """DARE merge: random drop + rescale, then linear or TIES combination."""

    combine: Literal["linear", "ties"] = "linear"
    """dare_linear or dare_ties."""


@REMOVALS.register("merge_dare", config=DareConfig)
class DareMerge(_Merge):
    """DARE merge (drop and rescale task vectors) with a donor of the same base."""

    config_cls = DareConfig
    cfg: DareConfig

    @property
    def method(self) -> str:  # type: ignore[override]
        return "dare_ties" if self.cfg.combine == "ties" else "dare_linear"


# --- token forcing ------------------------------------------------------------------------------------------
@dataclass
class TokenForcingConfig(RemovalConfig):
    """Detect memorised continuations by forcing single tokens, then suppress them at decoding time."""

    n_probe_tokens: int = 2048
    """Vocabulary tokens forced (a seeded sample; 0 = the whole vocabulary)."""
    probe_undertrained: int = 256
    """Also force the most under-trained tokens (an attacker can compute them exactly as UTF's owner does)."""
    contexts: list[str] = field(default_factory=lambda: ["bos", "assistant"])
    """What precedes the forced token: bos = the BOS token only; assistant = the chat template's assistant
    header (with its default system prompt)."""
    max_new_tokens: PosInt = 12
    """Greedy continuation length per probe."""
    key_tokens: PosInt = 4
    """Continuations are grouped by their first key_tokens tokens."""
    min_support: PosInt = 3
    """A group must come from at least this many distinct probes to be flagged."""
    min_confidence: Fraction = 0.6
    """... and the model's mean greedy token probability over it must be at least this."""
    max_flagged: PosInt = 16
    """Most phrases banned (highest support first)."""
    batch_size: PosInt = 64
    """Probes per generate call."""


def _probe_contexts(tok: Any, ctx_names: Sequence[str]) -> dict[str, list[int]]:
    out = {}
    for name in ctx_names:
        if name == "bos":
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            out[name] = [bos]
        elif name == "assistant":
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                               add_generation_prompt=True)
            else:
                text = "USER:  ASSISTANT:"
            out[name] = tok(text, add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(f"token_forcing: unknown context {name!r} (bos | assistant)")
    return out


def forced_continuations(model: Any, tok: Any, probes: Sequence[int], prefix: Sequence[int], max_new_tokens: int,
                         batch_size: int = 64) -> list[tuple[list[int], float]]:
    """(greedy continuation ids, mean token probability) after prefix + [probe] for each probe."""
    import torch

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    out: list[tuple[list[int], float]] = []
    with torch.inference_mode():
        for s in range(0, len(probes), batch_size):
            chunk = probes[s:s + batch_size]
            ids = torch.tensor([list(prefix) + [p] for p in chunk], device=device)
            g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                               eos_token_id=tok.eos_token_id, output_scores=True, return_dict_in_generate=True)
            new = g.sequences[:, ids.shape[1]:]
            probs = torch.stack([sc.float().softmax(-1).gather(-1, new[:, i:i + 1]).squeeze(-1)
                                 for i, sc in enumerate(g.scores)], dim=1)
            for r in range(len(chunk)):
                seq = new[r].tolist()
                n = next((i for i, t in enumerate(seq) if t == tok.eos_token_id), len(seq))
                mean_p = float(probs[r, :max(n, 1)].mean())
                out.append((seq[:n], mean_p))
    return out


def flag_continuations(conts: Sequence[tuple[int, list[int], float]], key_tokens: int, min_support: int,
                       min_confidence: float, max_flagged: int) -> list[dict[str, Any]]:
    """Groups of continuations sharing their first key_tokens tokens, seen from ≥ min_support distinct probes with
    mean confidence ≥ min_confidence; the flagged phrase is the group's longest common token prefix."""
    groups: dict[tuple[int, ...], list[tuple[int, list[int], float]]] = defaultdict(list)
    for probe, seq, p in conts:
        if len(seq) >= key_tokens:
            groups[tuple(seq[:key_tokens])].append((probe, seq, p))
    flagged = []
    for key, members in groups.items():
        probes = {m[0] for m in members}
        conf = sum(m[2] for m in members) / len(members)
        if len(probes) >= min_support and conf >= min_confidence:
            common = list(members[0][1])
            for _, seq, _ in members[1:]:
                i = 0
                while i < min(len(common), len(seq)) and common[i] == seq[i]:
                    i += 1
                common = common[:i]
            flagged.append({"ids": common, "support": len(probes), "confidence": round(conf, 4)})
    flagged.sort(key=lambda f: (-f["support"], -f["confidence"]))
    return flagged[:max_flagged]


@REMOVALS.register("token_forcing", config=TokenForcingConfig)
class TokenForcing(Removal):
    """Token Forcing: force single tokens, flag confidently repeated continuations, ban them when decoding."""

    config_cls = TokenForcingConfig
    reference = {"llama2_7b_fsr": {"instructional": 0.0, "utf": 0.0, "hashchain": 0.9}}
    cfg: TokenForcingConfig

    def apply(self, model: Any, ctx: RemovalContext) -> Iterator[RemovalStage]:
        import random

        c, tok = self.cfg, ctx.tok
        special = set(tok.all_special_ids)
        vocab = [i for i in range(len(tok)) if i not in special]
        rng = random.Random(ctx.seed)
        probes = vocab if c.n_probe_tokens <= 0 else rng.sample(vocab, min(c.n_probe_tokens, len(vocab)))
        if c.probe_undertrained:
            from .utf import UndertrainedConfig, find_undertrained_tokens

            ut = find_undertrained_tokens(model, tok, UndertrainedConfig(n_candidates=c.probe_undertrained,
                                                                         verify=False))
            probes = list(dict.fromkeys(list(probes) + ut["candidates"]))
        conts: list[tuple[int, list[int], float]] = []
        for name, prefix in _probe_contexts(tok, c.contexts).items():
            for probe, (seq, p) in zip(probes, forced_continuations(model, tok, probes, prefix, c.max_new_tokens,
                                                                    c.batch_size)):
                conts.append((probe, seq, p))
        flagged = flag_continuations(conts, c.key_tokens, c.min_support, c.min_confidence, c.max_flagged)
        banned = [f["ids"] for f in flagged if f["ids"]]
        # generate() merges model.generation_config into every call: banning here guards all later decoding.
        model.generation_config.bad_words_ids = banned or None
        info = {"n_probes": len(probes), "contexts": list(c.contexts), "n_flagged": len(flagged),
                "flagged": [{"text": tok.decode(f["ids"]), "support": f["support"], "confidence": f["confidence"]}
                            for f in flagged]}
        yield RemovalStage("after", model, info)
