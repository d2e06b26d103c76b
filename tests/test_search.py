"""The cached greedy search makes exactly the naive search's choices (issues 3 and 9)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAMILIES, random_windows
from oracles import naive_greedy
from prunekit.core.errors import PrunekitError
from prunekit.engine import Engine, reference_nll
from prunekit.methods.depth.planner import stop_rule
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units, unit_name
from prunekit.methods.options import DepthConfig
from prunekit.models import get_adapter
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import tiny_model

CONFIGS = [
    ("prefix", False, 1e9),
    ("trajectory", False, 1e9),
    ("trajectory", True, 1e9),
    ("trajectory", True, 30_000),  # too small for all states: part of the work is recomputed
]


def _search(adapter, windows, units, steps, *, cache, early_exit, budget, criterion="ppl", candidate_batch=1):
    engine = Engine(adapter, windows, batch_size=2, cache_bytes=budget, criterion=criterion)
    search = GreedySearch(engine, units, cache=cache, early_exit=early_exit, candidate_batch=candidate_batch)
    results = search.run(lambda removed: len(removed) >= steps)
    search.results = results
    return [(r.unit, r.value) for r in results], engine, search


def _assert_same(got, ref):
    assert [unit_name(u) for u, _ in got] == [unit_name(u) for u, _ in ref]
    for (_, a), (_, b) in zip(got, ref):
        assert math.isclose(a, b, rel_tol=1e-5), (a, b)


CASES = [(f, "mix") for f in FAMILIES] + [("llama", k) for k in ("attn", "mlp", "layer")] + [("qwen3", "layer")]


@pytest.mark.parametrize("family,kind", CASES)
def test_cached_search_equals_naive(family, kind):
    model = tiny_model(family, num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(6, 16)
    units = make_units(adapter, kind)
    steps = 3
    ref = naive_greedy(adapter, w, units, steps, None, batch_size=2)
    for cache, early_exit, budget in CONFIGS:
        got, engine, _ = _search(adapter, w, units, steps, cache=cache, early_exit=early_exit, budget=budget)
        _assert_same(got, ref)
        if budget < 1e9:
            assert engine.store.peak <= budget


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_finercut_criterion_equals_naive(family):
    model = tiny_model(family, num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(4, 16)
    units = make_units(adapter, "mix")
    ref = naive_greedy(adapter, w, units, 3, None, batch_size=2, criterion="kl")
    for cache, early_exit, budget in CONFIGS:
        got, _, _ = _search(adapter, w, units, 3, cache=cache, early_exit=early_exit, budget=budget, criterion="kl")
        _assert_same(got, ref)


@pytest.mark.parametrize("family,kind", [("llama", "mix"), ("qwen2", "mix"), ("mistral", "layer"), ("qwen3", "attn")])
def test_candidate_batching_equals_naive(family, kind):
    """Several candidates stacked into one batch (the accelerator path) choose what naive chooses,
    with every cache mode, early exit, a budget that forces recomputation, and finercut's criterion."""
    model = tiny_model(family, num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(6, 16)
    units = make_units(adapter, kind)
    ref = naive_greedy(adapter, w, units, 3, None, batch_size=2)
    for cache, early_exit, budget in CONFIGS + [("none", True, 1e9)]:
        one, e1, s1 = _search(adapter, w, units, 3, cache=cache, early_exit=early_exit, budget=budget)
        for k in (3, 16):
            got, engine, search = _search(adapter, w, units, 3, cache=cache, early_exit=early_exit, budget=budget,
                                           candidate_batch=k)
            _assert_same(got, ref)
            assert [len(r.ranking) for r in search.results] == [len(units) - i for i in range(3)]  # every candidate ranked
            if not early_exit and budget >= 1e9:  # the same work, only grouped (early exit may drop fewer in a
                # group; a tight budget holds fewer states when a group keeps several per candidate)
                assert engine.counter.total_macs == pytest.approx(e1.counter.total_macs)
                assert search.naive_macs == s1.naive_macs
    ref_kl = naive_greedy(adapter, w, units, 2, None, batch_size=2, criterion="kl")
    got, _, _ = _search(adapter, w, units, 2, cache="trajectory", early_exit=True, budget=1e9, criterion="kl", candidate_batch=4)
    _assert_same(got, ref_kl)


def test_caches_count_less_work_than_naive():
    adapter = get_adapter(tiny_model("llama", num_hidden_layers=6))
    w = random_windows(4, 16)
    units = make_units(adapter, "mix")
    ratios = {}
    for cache in ("none", "prefix", "trajectory"):
        _, engine, search = _search(adapter, w, units, 4, cache=cache, early_exit=False, budget=1e9)
        ratios[cache] = search.naive_macs / engine.counter.total_macs
    assert ratios["none"] == pytest.approx(1.0)
    assert ratios["prefix"] > 1.3
    assert ratios["trajectory"] > ratios["prefix"]


def test_trajectory_cache_is_used():
    """After step 1, candidates before the removed block resume from their kept state: step 2 runs
    fewer blocks than with the prefix cache alone, and chooses the same unit."""
    adapter = get_adapter(tiny_model("llama", num_hidden_layers=6))
    w = random_windows(4, 16)
    units = make_units(adapter, "mix")
    runs, chosen = {}, {}
    for cache in ("prefix", "trajectory"):
        engine = Engine(adapter, w, batch_size=2, cache_bytes=1e9)
        search = GreedySearch(engine, units, cache=cache, early_exit=False)
        first = search.step()
        assert first.unit[0] > 0, "the fixed model must first remove a block with candidates before it"
        before = engine.counter.block_runs
        chosen[cache] = (first.unit, search.step().unit)
        runs[cache] = engine.counter.block_runs - before
    assert chosen["trajectory"] == chosen["prefix"]
    assert runs["trajectory"] < runs["prefix"], runs


def test_chunked_nll_matches_float64_reference():
    model = tiny_model("llama", num_hidden_layers=2, vocab_size=512)
    adapter = get_adapter(model)
    w = random_windows(3, 40, vocab=512)
    engine = Engine(adapter, w, batch_size=2, chunk_tokens=7)
    ours = engine.total_score(frozenset())
    with torch.inference_mode():
        ref = reference_nll(model(input_ids=w.ids).logits.double(), w.ids, None)
    assert math.isclose(ours, ref, rel_tol=1e-6)


def test_ignore_index_excludes_pad_targets():
    model = tiny_model("llama", num_hidden_layers=2)
    adapter = get_adapter(model)
    w = random_windows(2, 16)
    w.ids[:, 5:9] = 3
    engine = Engine(adapter, w, batch_size=2, ignore_index=3)
    with torch.inference_mode():
        ref = reference_nll(model(input_ids=w.ids).logits.double(), w.ids, 3)
    assert engine.n_targets == 2 * 15 - int((w.ids[:, 1:] == 3).sum())
    assert math.isclose(engine.total_score(frozenset()), ref, rel_tol=1e-6)


def test_an_unreachable_ratio_suggests_mix_only_when_the_search_is_narrower():
    loaded = wrap_model(tiny_model("llama"))
    for kind, suggests in (("mix", False), ("layer", False), ("attn", True), ("mlp", True)):
        with pytest.raises(PrunekitError, match="cannot be reached") as err:
            stop_rule(loaded, make_units(loaded.adapter, kind), DepthConfig(ratio=0.99, blocks_kind="mix"), kind)
        assert ("`blocks_kind` mix" in str(err.value)) is suggests, (kind, str(err.value))
