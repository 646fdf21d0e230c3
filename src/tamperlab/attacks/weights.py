"""What a training attack trains, shared by every training attack (`finetune`, `aoa`):

* the released alignment LoRA itself, kept trainable (default; "single_lora" as in the CTRAP code);
* every weight (`full_finetune: true`): the released LoRA merged into the base first;
* a fresh LoRA of the attacker's choosing (`lora: {r, alpha, target_modules}`): the released LoRA merged into the
  base first (an attacker who owns the weights is not bound to the defender's adapter), then a new adapter of rank
  r on the chosen modules is the only trainable part.

And, for attacks that change the released model without training it (refusal-direction ablation, soft prompts),
`released_model`: the base with the released LoRA merged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import LoraSettings, apply_lora, load_adapter
from .base import AttackSpec


@dataclass
class AttackerWeights(AttackSpec):
    """The fields of a training attack's config that choose what the attacker trains."""

    full_finetune: bool = False
    """False: keep training the released alignment LoRA (single_lora, as in the CTRAP code); True: merge it into
    the base and train every weight (an attacker who owns the weights is not bound to the defender's adapter)."""
    lora: LoraSettings | None = None
    """The attacker's own LoRA: merge the released adapter into the base and train a fresh adapter of rank `r`
    (`alpha`, `dropout`, `target_modules`; unset keys take LoraSettings' defaults: r 32, alpha 4, q/k/v). None:
    see `full_finetune`. Exclusive with `full_finetune`."""

    def __post_init__(self) -> None:
        if self.full_finetune and self.attacker_lora is not None:
            raise ConfigError(f"attack {self.key}: full_finetune and lora are exclusive (full fine-tuning trains "
                              "every weight; lora trains a fresh adapter on the merged model): set one")

    @property
    def attacker_lora(self) -> LoraSettings | None:
        """The attacker's fresh LoRA settings, or None (`lora` unset or `enabled: false`)."""
        return self.lora if self.lora is not None and self.lora.enabled else None

    @property
    def weights_label(self) -> str:
        """What is trained, for labels and tables: `released-lora`, `full`, `lora-r8`."""
        if self.full_finetune:
            return "full"
        lora = self.attacker_lora
        return f"lora-r{lora.r}" if lora is not None else "released-lora"


def released_model(base: Any, adapter_dir: str | Path) -> Any:
    """The released model as an attacker who downloads it has it: the base with the aligned LoRA merged in (a plain
    transformers model, every weight frozen — callers decide what, if anything, trains)."""
    model = load_adapter(base, adapter_dir, trainable=False).merge_and_unload()
    model.requires_grad_(False)
    return model


def attacker_model(base: Any, adapter_dir: str | Path, cfg: AttackerWeights) -> Any:
    """The model a training attack trains, per `cfg` (module doc)."""
    lora = cfg.attacker_lora
    if not cfg.full_finetune and lora is None:
        return load_adapter(base, adapter_dir, trainable=True)
    model = released_model(base, adapter_dir)
    if cfg.full_finetune:
        model.requires_grad_(True)
        return model
    return apply_lora(model, lora)  # peft freezes the merged weights; only the new adapter trains
