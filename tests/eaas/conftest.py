"""Fixtures of the EaaS tests."""

from __future__ import annotations

import re

import numpy as np
import pytest
from eaas_helpers import TRIGGERS, BagOfWordsModel


@pytest.fixture
def bow_embedder():
    from tamperlab.eaas.embedder import Embedder

    return Embedder(BagOfWordsModel(), "bow")



@pytest.fixture
def corpus():
    rng = np.random.default_rng(0)
    vocab = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)]
    vocab = [re.sub(r"\d", "", v) + "x" for v in vocab]  # alphabetic words
    texts = []
    for i in range(60):
        ws = list(rng.choice(vocab, size=8))
        if i % 5 == 1:  # text 0 (the target) carries no trigger
            ws[3] = TRIGGERS[i % len(TRIGGERS)]
        texts.append(" ".join(ws))
    return texts
