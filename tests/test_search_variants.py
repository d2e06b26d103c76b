"""Search variants (issue 4): beam:K and greedy+swap are exact, deterministic and never worse on calibration."""

from __future__ import annotations

import itertools

import pytest

from conftest import random_windows
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.engine import Engine
from prunekit.methods.depth.beam import beam_search, swap_refine
from prunekit.methods.depth.planner import Budgets
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units, unit_params
from prunekit.methods.options import DepthConfig, parse_search
from prunekit.methods.registry import method_for
from prunekit.models import get_adapter
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from prunekit.pipeline import prune as api


def _setup(family="llama", layers=4, budget=1e9, kind="mix", batch_size=2):
    adapter = get_adapter(tiny_model(family, num_hidden_layers=layers))
    w = random_windows(6, 12)
    engine = Engine(adapter, w, batch_size=batch_size, cache_bytes=budget)
    return adapter, engine, make_units(adapter, kind)


def _count(n):
    return lambda removed: len(removed) >= n


def _param_stop(adapter, ratio):
    target = ratio * adapter.total_params()
    return lambda removed: sum(unit_params(adapter, u) for u in removed) >= target


@pytest.mark.parametrize("family,kind", [("llama", "mix"), ("qwen2", "mix"), ("llama", "layer")])
def test_beam_of_one_is_greedy(family, kind):
    adapter, engine, units = _setup(family, kind=kind)
    steps = GreedySearch(engine, units).run(_count(3))
    (res,), _ = beam_search(engine, units, [_count(3)], width=1)
    assert res.path == [s.unit for s in steps]
    assert res.totals == [s.score for s in steps]   # the same floats, not just close


def _brute_beam(engine, units, width, depth):
    """Reference beam: every expansion scored by a full forward, no early exit, no caches."""
    beam = [((), frozenset())]
    for _ in range(depth):
        scored = {}
        for rank, (path, removed) in enumerate(beam):
            for u in units:
                new = removed | set(u)
                if set(u) & removed or new in scored:
                    continue
                scored[new] = (engine.total_score(new), rank, u, path)
        best = sorted(scored.values(), key=lambda t: (t[0], t[1], t[2]))[:width]
        beam = [(path + (u,), frozenset(b for v in path + (u,) for b in v)) for _, _, u, path in best]
    return beam


@pytest.mark.parametrize("budget", [1e9, 20_000])  # 20 kB: most prefix states recomputed
def test_beam_matches_brute_force(budget):
    adapter, engine, units = _setup(budget=budget)
    (res,), _ = beam_search(engine, units, [_count(3)], width=3, early_exit=True)
    ref = _brute_beam(engine, units, 3, 3)
    assert tuple(res.path) == ref[0][0]
    assert engine.store.peak <= budget


def test_beam_levels_equal_separate_runs():
    adapter, engine, units = _setup(layers=5)
    stops = [_param_stop(adapter, 0.15), _param_stop(adapter, 0.3)]
    both, _ = beam_search(engine, units, stops, width=2)
    for stop, got in zip(stops, both):
        (alone,), _ = beam_search(engine, units, [stop], width=2)
        assert (alone.path, alone.totals) == (got.path, got.totals)
        assert stop(got.path) and not stop(got.path[:-1])


def _greedy(engine, units, stop):
    steps = GreedySearch(engine, units).run(stop)
    return [s.unit for s in steps], steps[-1].score


def test_swap_never_worsens_and_is_exact():
    adapter, engine, units = _setup(layers=5)
    stop = _param_stop(adapter, 0.3)
    path, total = _greedy(engine, units, stop)
    res = swap_refine(engine, units, path, total, stop, patience=None)
    assert res.total <= total
    assert stop(res.path)
    assert res.total == engine.total_score(frozenset(b for u in res.path for b in u))
    assert len(res.swaps) == 0 or res.total < total
    # a local optimum: no single swap that keeps the budget lowers the total
    removed = frozenset(b for u in res.path for b in u)
    for r, a in itertools.product(res.path, units):
        if a in res.path or not stop([u for u in res.path if u != r] + [a]):
            continue
        assert engine.total_score((removed - set(r)) | set(a)) >= res.total


def test_swap_result_is_the_same_with_and_without_early_exit():
    adapter, engine, units = _setup(layers=5, batch_size=1)
    stop = _param_stop(adapter, 0.3)
    path, total = _greedy(engine, units, stop)
    for patience in (None, 2):
        a = swap_refine(engine, units, path, total, stop, early_exit=True, patience=patience)
        b = swap_refine(engine, units, path, total, stop, early_exit=False, patience=patience)
        assert (a.path, a.total, a.swaps) == (b.path, b.total, b.swaps)
        assert a.evaluated + a.dropped == b.evaluated and b.dropped == 0
        assert a.total <= total and a.total == engine.total_score(frozenset(x for u in a.path for x in u))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 30, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("search", ["beam:2", "greedy+swap"])
def test_prune_with_search_variant(search, calib_file):
    def run():
        loaded = wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer())
        return api.prune(loaded, DepthConfig(ratio=0.3, search=search), CalibConfig(source=calib_file, seq_len=24, windows=4, batch_size=2))

    a, b = run(), run()
    assert a.plan["removed"] == b.plan["removed"]
    assert a.plan["ratio_removed"] >= 0.3
    assert a.plan["options"]["search"] == search
    greedy = api.prune(wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer()), DepthConfig(ratio=0.3),
                       CalibConfig(source=calib_file, seq_len=24, windows=4, batch_size=2))
    if search == "greedy+swap":  # swap starts from greedy and only accepts improvements
        assert a.plan["removed"][-1]["value"] <= greedy.plan["removed"][-1]["value"]


def test_search_parsing_and_errors():
    assert parse_search("greedy") == ("greedy", 1)
    assert parse_search("beam:4") == ("beam", 4)
    assert parse_search("greedy+swap") == ("greedy+swap", 1)
    for bad in ("beam:1", "beam:", "beam:x", "swap", "beam4"):
        with pytest.raises(PrunekitError, match="`search`"):
            DepthConfig(ratio=0.2, search=bad)
    with pytest.raises(PrunekitError, match="one shot"):
        method_for(DepthConfig(method="layer-ppl", ratio=0.2, search="greedy+swap"))
    assert Budgets([_count(1), _count(2)])([(0,), (1,)])
