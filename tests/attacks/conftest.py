"""Fixtures of the attack tests: the tiny released model (helpers.py explains its shape)."""

from __future__ import annotations

import copy

import pytest

from tamperlab.data.core import DataSplit
from tamperlab.eaas.embedder import torch_threads
from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_tokenizer

from .helpers import REFUSE, Released, benign, fit, harmful, impossible, tiny_llama


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every attack test runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> Released:
    with torch_threads(1):
        tok = load_tokenizer(ModelConfig(name_or_path="tiny:llama"))
        base = tiny_llama(tok)
        fit(base, tok, harmful(8) + benign(8) + impossible(8), steps=20, lr=1e-2)  # complies with harmful requests
        aligned = apply_lora(copy.deepcopy(base), LoraSettings(r=16, alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
        fit(aligned, tok, harmful(8, response=REFUSE) + benign(8), steps=30, lr=1e-2)  # the defender's alignment
        out = tmp_path_factory.mktemp("released") / "adapter"
        aligned.save_pretrained(out, safe_serialization=True)
    return Released(tok, base, out, DataSplit("harmful-pool", harmful(24, offset=50), {"source": "test"}),
                    DataSplit("benign-pool", benign(24, offset=50), {"source": "test"}))
