"""Fixtures for defense tests: the tiny random-init Llama with a LoRA adapter and synthetic alignment data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tamperlab.defenses.base import AlignmentData, Defense
from tamperlab.models import LoraSettings, apply_lora
from tamperlab.training import TrainConfig

from ctrap.helpers import harmful_pairs, helpful, refusals  # tests/ is on sys.path (rootdir, no __init__.py)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every defense test runs on one torch thread (tests/conftest.py)."""


@pytest.fixture
def align_data() -> AlignmentData:
    return AlignmentData(refusals(8), harmful_pairs(8, offset=100), helpful(8))


@pytest.fixture
def lora_model(tiny_model):
    model, tok = tiny_model
    return apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])), tok


def trainer_for(defense: Defense, model: Any, tok: Any, data: AlignmentData, out: Path, **train: Any) -> Any:
    cfg = TrainConfig(**{"batch_size": 2, "max_steps": 1, "save_steps": 1000, **train})
    return defense.make_trainer(model, tok, data, cfg, out)


def first_batch(trainer: Any) -> dict[str, Any]:
    return next(iter(trainer.get_train_dataloader()))


def trainable_grads(model: Any) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]
