"""budget-greedy's early exit (issue 29): exact, ties included.

A candidate is dropped once the lower bound its partial total gives on its key (every window's NLL is
>= 0, and each key grows with the total) is above the step's best complete key, or equal to it while the
best's unit is the lower one (a tie goes to the lower unit). On every tiny family, for budget-greedy and
its variants, the cached search with early exit takes the naive search's units; against the strict rule
(no drop on a tie) the plan is the same float for float and the counted work is no larger; and a step
of ties drops every candidate that the tie cannot go to.
"""

from __future__ import annotations

import math

import pytest

from conftest import random_windows
from prunekit.engine import Engine
from prunekit.engine.runner import block_macs_per_token
from prunekit.methods.depth import search as search_module
from prunekit.methods.depth.budget import budget_greedy, budget_greedy_lookahead, budget_greedy_mac
from prunekit.methods.depth.planner import stop_rule
from prunekit.methods.depth.search import GreedySearch, Selection
from prunekit.methods.depth.units import make_units, unit_name
from prunekit.methods.options import DepthConfig
from prunekit.models.contract import Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import FAMILY_OVERRIDES, family_model, tiny_tokenizer
from test_budget_greedy import naive_budget_greedy

VARIANTS = {"budget-greedy": (budget_greedy, "params", 1), "budget-greedy-mac": (budget_greedy_mac, "macs", 1),
            "budget-greedy-la": (budget_greedy_lookahead, "params", 2)}
RATIO = 0.35
WINDOWS, SEQ = 4, 16


def _strict(unit, keys, best) -> bool:
    """The rule before issue 29: dropped only when each key is ineligible or above the best."""
    return all(not key < math.inf or key > b[0] for key, b in zip(keys, best))


def _search(loaded, windows, method: str, *, batch_size: int = 1):
    run = VARIANTS[method][0]
    units = make_units(loaded.adapter, "mix+layers")
    stop = stop_rule(loaded, units, DepthConfig(method=method, ratio=RATIO), "mix+layers")
    engine = Engine(loaded.adapter, windows, batch_size=batch_size, cache_bytes=1e9)
    out = run(loaded, engine, units, stop, DepthConfig(method=method, ratio=RATIO, cache="trajectory", early_exit=True))
    return out, engine.counter.total_macs


@pytest.mark.parametrize("family", sorted(FAMILY_OVERRIDES))
@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_early_exit_keeps_the_naive_choice_and_does_no_more_work(family, method, monkeypatch, one_thread):
    loaded = wrap_model(family_model(family), tiny_tokenizer())
    adapter = loaded.adapter
    w = random_windows(WINDOWS, SEQ)
    units = make_units(adapter, "mix+layers")
    _, cost, landing = VARIANTS[method]
    macs = {u: sum(block_macs_per_token(adapter, Block(b), SEQ) for b in u) for u in units}
    ref = naive_budget_greedy(adapter, w, units, RATIO * adapter.total_params(), landing=landing,
                              cost=(lambda u: macs[u]) if cost == "macs" else None)
    out, work = _search(loaded, w, method)  # one window per batch: an exit point after each window
    assert [unit_name(u) for u in out.units] == [unit_name(u) for u, _ in ref]
    for rec, (_, total) in zip(out.records, ref):
        assert math.isclose(rec["score"], total, rel_tol=1e-5), (rec["score"], total)
    with monkeypatch.context() as m:
        m.setattr(search_module, "_beaten", _strict)
        before, work_before = _search(loaded, w, method)
    assert out.units == before.units
    assert [r["score"] for r in out.records] == [r["score"] for r in before.records]  # float for float
    assert work <= work_before


class Flat(Selection):
    """Every candidate ties on the key, so each step goes to the lowest unit left."""

    def keys(self, unit, total):
        return (0.0,)


def test_a_tie_that_goes_to_the_best_drops_the_candidate(monkeypatch, one_thread):
    """From the second step the previous step's lowest unit runs first (the lead); every later, higher
    unit can only tie with it and lose, so it is dropped after its first window. The strict rule runs
    them all to the end; the choices and their totals are the same."""
    loaded = wrap_model(family_model("llama"), tiny_tokenizer())
    w = random_windows(WINDOWS, SEQ)
    units = make_units(loaded.adapter, "mix")
    runs = {}
    for rule in ("strict", "ties"):
        engine = Engine(loaded.adapter, w, batch_size=1, cache_bytes=1e9)
        search = GreedySearch(engine, units, selection=Flat())
        with monkeypatch.context() as m:
            if rule == "strict":
                m.setattr(search_module, "_beaten", _strict)
            runs[rule] = (search.run(lambda removed: len(removed) >= 3), engine.counter.total_macs)
    (strict, work_strict), (ties, work_ties) = runs["strict"], runs["ties"]
    assert [r.unit for r in ties] == [r.unit for r in strict] == sorted(units)[:3]
    assert [r.score for r in ties] == [r.score for r in strict]
    assert [r.dropped for r in strict] == [0, 0, 0]
    assert ties[0].dropped == 0 and all(r.evaluated == 1 and r.dropped > 0 for r in ties[1:])
    assert work_ties < work_strict
