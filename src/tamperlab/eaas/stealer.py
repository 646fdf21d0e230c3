"""The stealer's copy model: sentence-transformers fine-tuning on the embeddings an EaaS returned.

Architecture (EmbMarker's copier, `src/model/copier/bert.py`, with a local backbone):
    backbone transformer → mean pooling → Linear(d→h) → ReLU → Linear(h→D) → L2-normalise
trained with MSE to the provider's (watermarked) embeddings (`sentence_transformers.losses.MSELoss`, i.e. the
distillation loss), AdamW, a few epochs, through `SentenceTransformerTrainer`.

Backbone choice (offline stand-in, documented in docs/methods/eaas.md): the paper uses bert-base-cased, which
cannot be fetched here. The default backbone is the *first `n_layers` layers* of the packaged all-MiniLM-L6-v2
(a truncated public checkpoint, so it trains in minutes on 2 CPU cores), followed by a freshly initialised MLP
head. The head starts from random weights, so everything the copy knows about the provider's output space —
the watermark included — is learnt from the stolen embeddings. Any sentence-transformers folder or hub id works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..config import Fraction, PosInt, check_positive
from ..errors import ConfigError

log = logging.getLogger("tamperlab")


@dataclass
class StealerConfig:
    """Copy-model (model extraction) settings."""

    backbone: str = "embedded"
    """Sentence-transformers backbone: 'embedded' (packaged all-MiniLM-L6-v2), a folder, or a hub id."""
    n_layers: int = 3
    """Keep only the first n transformer layers of the backbone (0 = all): a smaller, faster copier."""
    head: Literal["mlp", "none"] = "mlp"
    """'mlp': Linear→ReLU→Linear head as EmbMarker's copier; 'none': pooling output (dims must match)."""
    head_hidden: int = 768
    """Hidden width of the head (EmbMarker: 1536 for ada-002's 1536-d output; here 2× MiniLM's 384)."""
    epochs: int = 3
    """Full fine-tuning epochs through SentenceTransformerTrainer (EmbMarker: 3; 0 = head only)."""
    head_epochs: int = 0
    """Epochs of head-only warm-up on cached backbone features before full fine-tuning (cheap on CPU: one
    backbone forward pass per text; a randomly initialised head otherwise drags the first epochs)."""
    head_batch_size: PosInt = 128
    """Batch size of the head warm-up."""
    lr: float = 1e-4
    """Backbone learning rate (EmbMarker: 5e-5 for bert-base; a smaller backbone takes a larger one)."""
    head_lr: float = 1e-3
    """Learning rate of the freshly initialised head (it starts from random weights)."""
    batch_size: int = 32
    """Training batch size (EmbMarker: 32)."""
    freeze_embeddings: bool = True
    """Freeze the backbone's token-embedding matrix (most of a small model's parameters; saves backward and
    optimizer time on CPU without hurting the copy)."""
    max_seq_length: int = 64
    """Tokens per text seen by the copier."""
    warmup_ratio: Fraction = 0.1
    """Linear warm-up fraction."""
    query_batch: int = 64
    """Texts per HTTP request when querying the service."""
    query_concurrency: int = 2
    """Requests in flight at once."""

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.head_epochs < 0 or self.epochs + self.head_epochs == 0:
            raise ConfigError("stealer: epochs and head_epochs must be >= 0 and not both 0")
        check_positive("stealer", lr=self.lr, head_lr=self.head_lr, batch_size=self.batch_size,
                       max_seq_length=self.max_seq_length, head_hidden=self.head_hidden,
                       query_batch=self.query_batch, query_concurrency=self.query_concurrency)
        if self.n_layers < 0:
            raise ConfigError("stealer.n_layers must be >= 0 (0 = keep all layers)")


def _modules() -> tuple[Any, Any]:
    try:
        from sentence_transformers.base.modules import Dense, Normalize
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize  # type: ignore[no-redef]
    return Dense, Normalize


def build_copier(cfg: StealerConfig, out_dim: int, seed: int = 0) -> Any:
    """Backbone (optionally truncated) + pooling from the backbone folder, then the copier head."""
    import torch
    from sentence_transformers import SentenceTransformer

    from .embedder import load_sentence_model

    base = load_sentence_model(cfg.backbone)
    modules = [m for m in base if type(m).__name__ not in ("Normalize", "Dense")]  # transformer + pooling
    transformer = modules[0]
    auto = getattr(transformer, "auto_model", None) or getattr(transformer, "model", None)
    if cfg.n_layers:
        layers = getattr(getattr(auto, "encoder", None), "layer", None)
        if layers is None:
            raise ConfigError(f"stealer.n_layers: cannot truncate {type(auto).__name__} (no encoder.layer list)")
        if cfg.n_layers > len(layers):
            raise ConfigError(f"stealer.n_layers={cfg.n_layers} but the backbone has {len(layers)} layers")
        auto.encoder.layer = layers[: cfg.n_layers]
        auto.config.num_hidden_layers = cfg.n_layers
    transformer.max_seq_length = cfg.max_seq_length
    if cfg.freeze_embeddings and hasattr(auto, "embeddings"):
        for p in auto.embeddings.parameters():
            p.requires_grad_(False)
    Dense, Normalize = _modules()
    d = int(auto.config.hidden_size)
    torch.manual_seed(seed)
    if cfg.head == "mlp":
        modules += [Dense(d, cfg.head_hidden, activation_function=torch.nn.ReLU()),
                    Dense(cfg.head_hidden, out_dim, activation_function=torch.nn.Identity())]
    elif d != out_dim:
        raise ConfigError(f"stealer.head=none needs backbone dim {d} == service dim {out_dim}")
    modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


def _save_copier(model: Any, folder: Path) -> None:
    """Save the copy model as a whole folder (safetensors), atomically (runs.atomic_dir)."""
    from ..runs import atomic_dir

    with atomic_dir(folder) as tmp:
        model.save(str(tmp), safe_serialization=True)


def train_copier(texts: Sequence[str], targets: np.ndarray, cfg: StealerConfig, out_dir: str | Path,
                 seed: int = 0) -> Any:
    """Fine-tune a fresh copier on (text, stolen embedding) pairs; saves it (safetensors) to `out_dir`."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MSELoss

    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts but {len(targets)} target embeddings")
    out_dir = Path(out_dir)
    model = build_copier(cfg, targets.shape[1], seed)
    summary: dict[str, Any] = {}
    if cfg.head_epochs and cfg.head == "mlp":
        summary["head_loss_last"] = _warm_up_head(model, texts, targets, cfg, seed)
    if cfg.epochs == 0:
        _save_copier(model, out_dir / "model")
        model.train_summary = summary
        return model
    ds = Dataset.from_dict({"text": list(texts), "label": np.asarray(targets, np.float32).tolist()})
    mapping = {r"(^|\.)\d+\.linear\.": cfg.head_lr} if cfg.head == "mlp" else {}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / "trainer"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, learning_rate_mapping=mapping, warmup_steps=cfg.warmup_ratio, seed=seed,
        save_strategy="no", logging_steps=max(1, len(texts) // cfg.batch_size // 4), report_to="none",
        use_cpu=True, dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=MSELoss(model))
    result = trainer.train()
    _save_copier(model, out_dir / "model")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.train_summary = {**summary, "train_loss_first": losses[0] if losses else None,
                           "train_loss_last": losses[-1] if losses else None,
                           "steps": int(result.global_step), "seconds": round(result.metrics.get("train_runtime", 0), 1)}
    return model


def _warm_up_head(model: Any, texts: Sequence[str], targets: np.ndarray, cfg: StealerConfig, seed: int) -> float:
    """Train only the Dense head on frozen, cached backbone features (MSE to the stolen embeddings)."""
    import torch

    mods = list(model)
    n_body = next(i for i, m in enumerate(mods) if type(m).__name__ == "Dense")
    body, head = mods[:n_body], mods[n_body:]
    from sentence_transformers import SentenceTransformer

    feats = SentenceTransformer(modules=body, device="cpu").encode(
        list(texts), batch_size=64, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False)
    feats = feats.detach().float()
    y = torch.tensor(np.asarray(targets), dtype=torch.float32)
    params = [p for m in head for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.head_lr)
    g = torch.Generator().manual_seed(seed)
    for m in head:
        m.train()
    from .embedder import torch_threads

    with torch_threads(1):  # small matmuls: one thread beats two contending ones
        _head_epochs(head, feats, y, opt, g, cfg)
    return float(_head_loss(head, feats, y))


def _head_loss(head: list[Any], feats: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        h = {"sentence_embedding": feats}
        for m in head:
            h = m(h)
        return float(torch.nn.functional.mse_loss(h["sentence_embedding"], y).item())


def _head_epochs(head: list[Any], feats: Any, y: Any, opt: Any, g: Any, cfg: StealerConfig) -> None:
    import torch
    from tqdm.auto import tqdm

    for _ in tqdm(range(cfg.head_epochs), desc="copier head warm-up", leave=False):
        perm = torch.randperm(len(feats), generator=g)
        for i in range(0, len(feats), cfg.head_batch_size):
            idx = perm[i:i + cfg.head_batch_size]
            h = {"sentence_embedding": feats[idx]}
            for m in head:
                h = m(h)
            loss = torch.nn.functional.mse_loss(h["sentence_embedding"], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def load_copier(folder: str | Path) -> Any:
    from .embedder import load_sentence_model

    return load_sentence_model(str(Path(folder) / "model"))


def copier_encode(model: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)
