"""SAW — the semantic-aware watermark, SPA's proposed mitigation (brief §2, `semantic_aware_watermark/`).

Why it should resist SPA: trigger-based watermarks add the *same* target to every triggered embedding, so the
embeddings of a text and of its semantically perturbed versions stay tied together (SPA's tightness signal).
SAW instead adds a perturbation that is a learned function of the embedding itself and of a secret message:

    u   = Enc([e, 2m−1]) projected orthogonal to e, unit norm
    e_w = normalise(e + α·u),   α = tan(arccos(c))   ⇒ cos(e_w, e) = c exactly (default c = 0.96, the SAW log)
    m̂  = Dec(e_w) ∈ {0,1}^L                          (L = 24 bits)

HiDDeN-style training on clean embeddings of the provider's corpus: random messages, Gaussian noise between
encoder and decoder (robustness to a copier's imprecision), BCE on the bits. Our addition, documented as such:
a decorrelation penalty on the perturbation directions of different texts carrying the same message, so the
encoder cannot fall back to one fixed direction per message (which would be trigger-based again and as fragile).
Only texts with ≥1 trigger word are watermarked (trigger selection as EmbMarker).

Verification: the suspect embeds D_b (trigger sentences) and D_n (ordinary sentences); the per-sample statistic
is the bit accuracy of Dec(e) against the owner's message; Δ = mean_b − mean_n and the KS p-value of the two sets.
The SAW README leaves robustness under model extraction "still need exploration"; we measure it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import check_positive, check_range
from ..errors import TamperlabError
from ..registry import WATERMARKS


@dataclass
class SAWConfig:
    """Semantic-aware watermark (SPA's defence) hyper-parameters."""

    n_triggers: int = 20
    """Trigger words deciding which texts are watermarked (selected as EmbMarker)."""
    max_trigger_num: int = 4
    """Length of the verification sentences (as EmbMarker's m)."""
    freq_source: str = "wordfreq"
    """wordfreq or corpus (see EmbMarkerConfig)."""
    freq_band: list[float] | None = None
    """Trigger frequency band; None = EmbMarker's default."""
    trigger_seed: int = 2022
    """Seed of the trigger sample."""
    triggers: list[str] | None = None
    """Explicit trigger words (overrides the band)."""
    message_bits: int = 24
    """Length L of the owner's secret message (SAW: 24 bits)."""
    message_seed: int = 7
    """Seed of the owner's message."""
    strength_cos: float = 0.96
    """cos(e_w, e) of every watermarked embedding (SAW's log: encoder_cos 0.9602)."""
    hidden: int = 256
    """Hidden width of the encoder and decoder MLPs."""
    train_steps: int = 1500
    """Encoder/decoder training steps (batch `batch_size` of clean corpus embeddings)."""
    batch_size: int = 128
    """Training batch size."""
    lr: float = 1e-3
    """Adam learning rate."""
    noise_std: float = 0.003
    """Gaussian noise added to e_w before decoding during training, per coordinate (norm ≈ std·√d: keep it
    well below the watermark's own size tan(arccos(strength_cos)) ≈ 0.29, or nothing can be decoded)."""
    decorrelation: float = 1.0
    """Weight of the mean squared cosine between perturbation directions of different texts (our addition)."""
    seed: int = 0
    """Torch seed of the encoder/decoder initialisation and training."""

    def __post_init__(self) -> None:
        check_positive("watermark", n_triggers=self.n_triggers, message_bits=self.message_bits,
                       hidden=self.hidden, train_steps=self.train_steps, batch_size=self.batch_size, lr=self.lr)
        check_range("watermark", "strength_cos", self.strength_cos, 0.5, 0.9999)


def _mlp(d_in: int, hidden: int, d_out: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


@WATERMARKS.register("saw", config=SAWConfig)
class SAW:
    """SAW: semantic-aware watermark, a learned embedding-dependent perturbation carrying a secret message."""

    name = "saw"
    paper = "Fei et al., Your Semantic-Independent Watermark is Fragile (SPA), EMNLP Findings 2025 — SAW mitigation"

    def __init__(self, cfg: SAWConfig):
        from .watermarks import EmbMarker, EmbMarkerConfig

        self.cfg = cfg
        kw: dict[str, Any] = dict(n_triggers=cfg.n_triggers, max_trigger_num=cfg.max_trigger_num,
                                  freq_source=cfg.freq_source, trigger_seed=cfg.trigger_seed)
        if cfg.freq_band is not None:
            kw["freq_band"] = list(cfg.freq_band)
        if cfg.triggers:
            kw["triggers"] = list(cfg.triggers)
        self._trig = EmbMarker(EmbMarkerConfig(**kw))  # reused for trigger selection/counting/verify sentences
        self.message = np.zeros(0, dtype=np.int64)
        self.enc: Any = None
        self.dec: Any = None
        self.train_log: dict[str, float] = {}

    @property
    def triggers(self) -> list[str]:
        return self._trig.triggers

    @property
    def alpha(self) -> float:
        return math.tan(math.acos(self.cfg.strength_cos))

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, corpus: Sequence[str], embed: Any) -> None:
        import torch

        c = self.cfg
        self._trig.triggers = self._trig._choose_triggers(corpus)
        self._trig.groups = [list(self._trig.triggers)]
        self._trig.targets = np.zeros((1, 1), dtype=np.float32)  # unused; marks the trigger part as set up
        self.message = np.array(random.Random(c.message_seed).choices([0, 1], k=c.message_bits), dtype=np.int64)
        clean = torch.tensor(np.asarray(embed(list(corpus))), dtype=torch.float32)
        d = clean.shape[1]
        g = torch.Generator().manual_seed(c.seed)
        torch.manual_seed(c.seed)
        self.enc, self.dec = _mlp(d + c.message_bits, c.hidden, d), _mlp(d, c.hidden, c.message_bits)
        opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=c.lr)
        bce = torch.nn.BCEWithLogitsLoss()
        from tqdm.auto import tqdm

        for step in tqdm(range(c.train_steps), desc="SAW encoder/decoder", leave=False):
            idx = torch.randint(0, len(clean), (c.batch_size,), generator=g)
            e = clean[idx]
            # One message per half-batch: the decorrelation term compares texts that carry the same message.
            m = torch.randint(0, 2, (2, c.message_bits), generator=g).float().repeat_interleave(
                c.batch_size // 2 + 1, 0)[: c.batch_size]
            u = self._direction(e, m)
            ew = torch.nn.functional.normalize(e + self.alpha * u, dim=1)
            noisy = torch.nn.functional.normalize(ew + c.noise_std * torch.randn(ew.shape, generator=g), dim=1)
            loss_bits = bce(self.dec(noisy), m)
            half = c.batch_size // 2
            sim = u[:half] @ u[:half].T
            off = sim - torch.diag(torch.diag(sim))
            loss_dec = (off ** 2).sum() / (half * (half - 1))
            loss = loss_bits + c.decorrelation * loss_dec
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mm = torch.tensor(self.message, dtype=torch.float32).expand(len(clean), -1)
            ew = torch.nn.functional.normalize(clean + self.alpha * self._direction(clean, mm), dim=1)
            acc_w = (self.dec(ew) > 0).float().eq(mm).float().mean().item()
            acc_c = (self.dec(clean) > 0).float().eq(mm).float().mean().item()
        self.train_log = {"bit_acc_watermarked": acc_w, "bit_acc_clean": acc_c, "final_loss": float(loss.item()),
                          "final_decorrelation": float(loss_dec.item())}

    def _direction(self, e: Any, m: Any) -> Any:
        import torch

        raw = self.enc(torch.cat([e, 2 * m - 1], dim=1))
        raw = raw - (raw * e).sum(1, keepdim=True) * e  # orthogonal to e ⇒ cos(e_w, e) is exactly strength_cos
        return torch.nn.functional.normalize(raw, dim=1)

    def state(self) -> dict[str, Any]:
        return {"triggers": self.triggers, "message": self.message.tolist(), "train_log": self.train_log,
                "weights": "saw.safetensors"}

    def save(self, folder: str | Path) -> Path:
        from dataclasses import asdict

        from safetensors.torch import save_file

        from ..runs import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"enc.{k}": v.contiguous() for k, v in self.enc.state_dict().items()}
        tensors.update({f"dec.{k}": v.contiguous() for k, v in self.dec.state_dict().items()})
        save_file(tensors, str(folder / "saw.safetensors"))
        atomic_write_json(folder / "watermark.json", {"name": self.name, "config": asdict(self.cfg),
                                                      "state": self.state()})
        return folder / "watermark.json"

    def load_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        from safetensors.torch import load_file

        if folder is None:
            raise TamperlabError("SAW.load_state needs the folder holding saw.safetensors")
        self._trig.triggers = list(state["triggers"])
        self._trig.groups = [list(self._trig.triggers)]
        self._trig.targets = np.zeros((1, 1), dtype=np.float32)
        self.message = np.asarray(state["message"], dtype=np.int64)
        self.train_log = dict(state.get("train_log", {}))
        t = load_file(str(Path(folder) / state["weights"]))
        d = t["dec.0.weight"].shape[1]
        self.enc = _mlp(d + self.cfg.message_bits, self.cfg.hidden, d)
        self.dec = _mlp(d, self.cfg.hidden, self.cfg.message_bits)
        self.enc.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("enc.")})
        self.dec.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("dec.")})

    # -- service path ---------------------------------------------------------------------------------------
    def trigger_counts(self, texts: Sequence[str]) -> np.ndarray:
        return self._trig.trigger_counts(texts)

    def apply(self, texts: Sequence[str], clean: np.ndarray) -> np.ndarray:
        import torch

        if self.enc is None:
            raise TamperlabError("saw: call setup() or load() before use")
        out = np.array(clean, dtype=np.float32, copy=True)
        hit = np.nonzero(self.trigger_counts(texts) > 0)[0]
        if len(hit):
            with torch.no_grad():
                e = torch.tensor(out[hit])
                m = torch.tensor(self.message, dtype=torch.float32).expand(len(hit), -1)
                ew = torch.nn.functional.normalize(e + self.alpha * self._direction(e, m), dim=1)
            out[hit] = ew.numpy()
        return out

    # -- verification ---------------------------------------------------------------------------------------
    def bit_accuracy(self, emb: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            bits = (self.dec(torch.tensor(np.asarray(emb), dtype=torch.float32)) > 0).long().numpy()
        return (bits == self.message[None, :]).mean(axis=1)

    def verify(self, embed: Any, size: int = 20, seed: int = 0, alpha: float = 0.05,
               target_source: str = "provider") -> dict[str, Any]:
        from .verify import score_stats

        backdoor, benign = self._trig.verification_sets(size, seed)
        st = score_stats(self.bit_accuracy(embed(backdoor[0])), self.bit_accuracy(embed(benign)))
        return {"statistic": "bit_acc", "delta": st["delta"], "p_value": st["p_value"],
                "bit_acc_backdoor": st["backdoor_mean"], "bit_acc_benign": st["benign_mean"],
                "n_backdoor": size, "n_benign": size,
                "detected": bool(st["p_value"] < alpha and st["delta"] > 0)}
