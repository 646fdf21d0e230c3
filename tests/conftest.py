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
