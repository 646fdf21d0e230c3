"""Downstream utility: an MLP classifier trained on embeddings (EmbMarker's `gpt_cls.py`).

emb → Linear(d→256) → ReLU → Dropout(0.2) → Linear(256→classes); Adam lr 1e-2, a few epochs, batch 32.
Accuracy on the test split measures how useful a set of embeddings (clean, watermarked, copied, purified) is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import check_positive, check_range


@dataclass
class DownstreamConfig:
    """Downstream classifier (utility) settings, defaults from EmbMarker's gpt_cls.py."""

    hidden: int = 256
    """Hidden width."""
    dropout: float = 0.2
    """Dropout after the hidden layer."""
    lr: float = 1e-2
    """Adam learning rate."""
    epochs: int = 3
    """Training epochs."""
    batch_size: int = 32
    """Batch size."""

    def __post_init__(self) -> None:
        check_positive("downstream", hidden=self.hidden, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size)
        check_range("downstream", "dropout", self.dropout, 0.0, 0.95)


def classify_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      cfg: DownstreamConfig, seed: int = 0) -> float:
    """Train the MLP on (x_train, y_train); accuracy on (x_test, y_test)."""
    return float(classify_correct(x_train, y_train, x_test, y_test, cfg, seed).mean())


def classify_correct(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     cfg: DownstreamConfig, seed: int = 0) -> np.ndarray:
    """Train the MLP on (x_train, y_train); per test item, whether it is classified correctly (accuracy = the
    mean; the flags let two embedding sources be compared on the same test texts)."""
    from .embedder import torch_threads

    with torch_threads(1):  # a tiny MLP: one thread is faster than two fighting over a busy CPU
        return _fit_predict(x_train, y_train, x_test, y_test, cfg, seed)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 cfg: DownstreamConfig, seed: int) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    n_cls = int(max(y_train.max(), y_test.max()) + 1)
    net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], cfg.hidden), torch.nn.ReLU(),
                              torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, n_cls))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    xt, yt = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    return pred == np.asarray(y_test)
