"""Fingerprint tests run tiny models: one torch thread is as fast for their matrices as two, and does not stall
in OpenMP barriers when the machine's cores are shared with other jobs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
