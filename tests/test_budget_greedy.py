"""budget-greedy (issue 16): the cached search equals a naive reference, the criterion a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAMILIES, random_windows
from prunekit.engine import Engine, reference_nll
from prunekit.methods.depth.budget import budget_greedy
from prunekit.methods.depth.planner import Budgets, stop_rule
from prunekit.methods.depth.units import make_units, unit_name, unit_params
from prunekit.methods.options import DepthConfig
from prunekit.models.contract import Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer

CONFIGS = [("none", False, 1e9), ("prefix", True, 1e9), ("trajectory", False, 1e9), ("trajectory", True, 1e9),
           ("trajectory", True, 30_000)]


def _total(adapter, windows, removed_blocks) -> float:
    """Summed next-token NLL of a full ``model.forward`` with ``removed_blocks`` skipped (no engine)."""
    with adapter.skipping([Block(b) for b in removed_blocks]), torch.inference_mode():
        logits = adapter.model(input_ids=windows.ids, use_cache=False).logits.double()
    return reference_nll(logits, windows.ids, None)


def naive_budget_greedy(adapter, windows, units, target, *, landing=1, cost=None):
    """The reference, from full forwards: per step, every candidate's total; if some candidate
    reaches ``target`` parameters, a landing option is the path so far plus the lowest total among
    those; after ``landing`` such steps the option of lowest total is the answer. The path takes the
    lowest rise per parameter (per ``cost(unit)`` when given)."""
    cost = cost or (lambda u: unit_params(adapter, u))
    removed, out, options = [], [], []
    current = _total(adapter, windows, [])
    while True:
        done = sum(unit_params(adapter, u) for u in removed)
        blocks = {b for u in removed for b in u}
        cands = [u for u in units if not set(u) & blocks]
        totals = {u: _total(adapter, windows, sorted(blocks | set(u))) for u in cands}
        reaching = [u for u in cands if done + unit_params(adapter, u) >= target]
        if reaching:
            u = min(reaching, key=lambda v: (totals[v], v))
            options.append((totals[u], len(out), out + [(u, totals[u])]))
            if len(options) == landing or len(cands) == 1:
                return min(options, key=lambda o: (o[0], o[1]))[2]
        u = min(cands, key=lambda v: ((totals[v] - current) / cost(v), v))
        removed.append(u)
        out.append((u, totals[u]))
        current = totals[u]


def _loaded(family, layers=4):
    return wrap_model(tiny_model(family, num_hidden_layers=layers), tiny_tokenizer())


def _run(loaded, windows, ratios, *, cache="trajectory", early_exit=True, budget=1e9, landing=1, start=None,
         on_record=None):
    adapter = loaded.adapter
    units = make_units(adapter, "mix+layers")
    stops = [stop_rule(loaded, units, DepthConfig(method="budget-greedy", ratio=r), "mix+layers") for r in ratios]
    engine = Engine(adapter, windows, batch_size=2, cache_bytes=budget)
    depth = DepthConfig(method="budget-greedy", ratio=max(ratios), cache=cache, early_exit=early_exit)
    stop = Budgets(stops) if len(stops) > 1 else stops[0]
    return budget_greedy(loaded, engine, units, stop, depth, start=start, on_record=on_record, landing=landing), engine


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_budget_greedy_equals_naive(family, one_thread):
    loaded = _loaded(family)
    adapter = loaded.adapter
    w = random_windows(4, 16)
    units = make_units(adapter, "mix+layers")
    assert len(units) == 3 * adapter.num_layers
    ratio = 0.35
    ref = naive_budget_greedy(adapter, w, units, ratio * adapter.total_params())
    assert len(ref) >= 3  # several per-parameter steps, then the landing
    for cache, early_exit, budget in CONFIGS:
        out, engine = _run(loaded, w, [ratio], cache=cache, early_exit=early_exit, budget=budget)
        assert [unit_name(u) for u in out.units] == [unit_name(u) for u, _ in ref], (cache, early_exit, budget)
        for rec, (_, total) in zip(out.records, ref):
            assert math.isclose(rec["score"], total, rel_tol=1e-5), (rec["score"], total)
        assert out.records[-1]["landing"] and out.extra["criterion"] == "ppl_rise_per_param"
        if budget < 1e9:
            assert engine.store.peak <= budget


def test_several_budgets_equal_separate_runs(one_thread):
    loaded = _loaded("llama", layers=5)
    w = random_windows(4, 16)
    ratios = [0.1, 0.25, 0.4]
    both, _ = _run(loaded, w, ratios)
    levels = both.extra["levels"]
    assert len(levels) == 3
    for r, level in zip(ratios, levels):
        alone, _ = _run(loaded, w, [r])
        assert level.units == alone.units, r
        assert [x["score"] for x in level.records] == pytest.approx([x["score"] for x in alone.records], rel=1e-9)
        n = sum(unit_params(loaded.adapter, u) for u in level.units)
        assert n >= r * loaded.adapter.total_params()


def test_criterion_picks_the_hand_computed_unit(one_thread):
    """First step by hand: every unit's total from a full forward, the rise over the dense total
    divided by the unit's parameters (attention and MLP blocks differ in size), the lowest wins."""
    loaded = _loaded("llama", layers=4)
    adapter = loaded.adapter
    w = random_windows(4, 16)
    units = make_units(adapter, "mix+layers")
    dense = _total(adapter, w, [])
    sizes = {u: sum(p.numel() for b in u for m in adapter.block_modules(Block(b)) for p in m.parameters()) for u in units}
    assert len({sizes[u] for u in units}) == 3  # attention block, MLP block, layer: three sizes
    totals = {u: _total(adapter, w, list(u)) for u in units}
    by_hand = min(units, key=lambda u: (totals[u] - dense) / sizes[u])
    by_total = min(units, key=lambda u: totals[u])
    assert by_hand != by_total  # on these windows the price per parameter changes the choice
    out, _ = _run(loaded, w, [0.6])
    assert out.units[0] == by_hand


def test_last_step_lands_on_the_budget(one_thread):
    """With a budget one step reaches, the lowest total among the units that reach it is taken."""
    loaded = _loaded("llama", layers=4)
    adapter = loaded.adapter
    w = random_windows(4, 16)
    units = make_units(adapter, "mix+layers")
    layer = unit_params(adapter, units[-1])
    ratio = layer / adapter.total_params()  # only whole layers reach it in one step
    out, _ = _run(loaded, w, [ratio])
    reaching = [u for u in units if unit_params(adapter, u) >= layer]
    assert out.units == [min(reaching, key=lambda u: _total(adapter, w, list(u)))]


@pytest.mark.parametrize("family", FAMILIES)
def test_landing_lookahead_equals_naive(family, one_thread):
    """``landing`` 2 (budget-greedy-la): the better of landing now and one per-parameter step later."""
    loaded = _loaded(family)
    adapter = loaded.adapter
    w = random_windows(4, 16)
    units = make_units(adapter, "mix+layers")
    ratio = 0.35
    ref = naive_budget_greedy(adapter, w, units, ratio * adapter.total_params(), landing=2)
    for cache, early_exit, budget in CONFIGS[::2]:
        out, _ = _run(loaded, w, [ratio], cache=cache, early_exit=early_exit, budget=budget, landing=2)
        assert [unit_name(u) for u in out.units] == [unit_name(u) for u, _ in ref], (cache, early_exit, budget)
        for rec, (_, total) in zip(out.records, ref):
            assert math.isclose(rec["score"], total, rel_tol=1e-5), (rec["score"], total)
        assert len(out.extra["landings"]) == 2 and out.extra["landing"] == 2


def test_landing_lookahead_resumes_from_its_journal(one_thread):
    """A run resumed from any prefix of its journaled steps (the landing options seen so far in
    them) gives the same answer; resumed from the whole journal it does not search again."""
    loaded = _loaded("llama", layers=5)
    w = random_windows(4, 16)
    journal = []
    whole, _ = _run(loaded, w, [0.3], landing=3, on_record=journal.append)
    assert journal[-1]["landing"] and [tuple(r["blocks"]) for r in journal[:-1]][:len(whole.units) - 1] == whole.units[:-1]
    assert any("landing_options" in r for r in journal)
    for cut in range(1, len(journal) + 1):
        again, _ = _run(loaded, w, [0.3], landing=3, start=[dict(r) for r in journal[:cut]])
        assert again.units == whole.units, cut


def test_several_budgets_resume_from_every_prefix_of_the_journal(one_thread):
    """Several budgets, ``landing`` 1: each step that offers a landing journals its options and its clock, so a
    run resumed from any prefix of the journal gives every budget's answer of the uninterrupted run, and a
    budget that closed within the prefix keeps the stamp (seconds, MACs) at which it closed; the others'
    stamps count on from the last journaled step's clock (never from zero)."""
    loaded = _loaded("llama", layers=5)
    w = random_windows(4, 16)
    ratios = [0.1, 0.25, 0.4]
    journal = []
    whole, _ = _run(loaded, w, ratios, on_record=journal.append)
    levels = whole.extra["levels"]
    closing = [i for i, r in enumerate(journal) if any(o is not None for o in r.get("landing_options") or [])]
    assert closing and closing[0] < len(journal) - 1  # a budget lands while the search goes on
    assert all("clock" in r for r in journal)
    for cut in range(len(journal) + 1):
        again, _ = _run(loaded, w, ratios, start=[dict(r) for r in journal[:cut]])
        for k, (a, b) in enumerate(zip(again.extra["levels"], levels)):
            assert a.units == b.units, (cut, k)
            assert [x["score"] for x in a.records] == [x["score"] for x in b.records], (cut, k)
            closed_at = next((i for i in closing if (journal[i]["landing_options"][k] or {}).get("landing")), None)
            if closed_at is not None and closed_at < cut:  # landed before the cut: restored, stamp and all
                assert (a.extra["seconds"], a.extra["macs"]) == (b.extra["seconds"], b.extra["macs"]), (cut, k)
            elif cut:
                assert a.extra["seconds"] >= journal[cut - 1]["clock"]["seconds"]
                assert a.extra["macs"] >= journal[cut - 1]["clock"]["macs"]
