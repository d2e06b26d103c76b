"""Shared fixtures: tiny random models of every supported family, built in memory.

Every test runs torch on one thread (set here, before any test, and restored by :func:`one_thread` for a test
that changes it): tiny models run far faster on one thread than on two contended ones, and with
``pytest -n 2`` each worker has a core of its own. Fresh processes the tests start inherit
``OMP_NUM_THREADS=1`` unless a test gives its own.
"""

from __future__ import annotations

import os

import pytest
import torch

from prunekit.data.windows import Windows
from prunekit.models.tiny import tiny_model

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def random_windows(n: int = 6, seq_len: int = 32, vocab: int = 256, seed: int = 0) -> Windows:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    return Windows(ids, "random", f"seed{seed}", {"seq_len": seq_len, "windows": n})


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def windows() -> Windows:
    return random_windows()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama", num_hidden_layers=6)


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread for every test (the default of the suite), restored if the test changed it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
