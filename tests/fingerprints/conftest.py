"""Fingerprint tests run tiny models: one torch thread is as fast for their matrices as two, and does not stall
in OpenMP barriers when the machine's cores are shared with other jobs."""

from __future__ import annotations

import pytest

from tamperlab.eaas.embedder import torch_threads


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    # Package-scoped, not the per-test `one_torch_thread` of tests/conftest.py: the module-scoped fixtures here
    # (the fingerprinted model of test_fp_pipeline) train before any per-test fixture starts.
    with torch_threads(1):
        yield
