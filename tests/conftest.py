"""Shared fixtures: tiny random-init Llama with the real SmolLM2 tokenizer (fast, CPU)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from tamperlab.models import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="tiny:llama"))


@pytest.fixture
def tiny_model(tokenizer):
    from tamperlab.models import ModelConfig, load_model

    model, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    return model, tok


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread during the test, restored after it: at tiny-model sizes a second thread adds
    nothing but contention, and stalls in OpenMP barriers when the machine's 2 shared cores are busy. Opt-in: a
    test directory requests it from an autouse fixture in its conftest.py (attacks, defenses, fingerprints)."""
    from tamperlab.eaas.embedder import torch_threads

    with torch_threads(1):
        yield
