"""Shared fixtures: tiny random models of every supported family, built in memory."""

from __future__ import annotations

import pytest
import torch

from prunekit.data.windows import Windows
from prunekit.models.tiny import tiny_model

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


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


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored afterwards: tiny models run ~30x faster on one
    thread than on two contended ones on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
