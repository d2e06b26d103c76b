"""Paired-bootstrap intervals of perplexity ratios (evaluation/intervals.py) and the per-window NLLs they need."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import random_windows
from prunekit.evaluation.intervals import paired_ppl_ratio, versus_best
from prunekit.evaluation.perplexity import perplexity, window_nll
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel
from prunekit.models.registry import get_adapter
from prunekit.models.tiny import tiny_model


def test_ratio_is_the_closed_form_and_the_interval_brackets_it():
    rng = np.random.default_rng(1)
    tokens = [31] * 40
    b = rng.uniform(60, 120, size=40)
    a = b + rng.normal(-1.0, 3.0, size=40)  # lower on average, noisy
    ratio, low, high = paired_ppl_ratio(list(a), list(b), tokens, resamples=4000, seed=3)
    assert ratio == pytest.approx(math.exp((a.sum() - b.sum()) / sum(tokens)), rel=1e-12)
    assert low < ratio < high
    assert paired_ppl_ratio(list(a), list(b), tokens, resamples=4000, seed=3) == (ratio, low, high)  # seeded


def test_identical_models_give_one_and_a_model_lower_everywhere_an_interval_below_one():
    nll, tokens = [50.0, 70.0, 65.0, 80.0], [31, 31, 31, 31]
    assert paired_ppl_ratio(nll, nll, tokens) == (1.0, 1.0, 1.0)
    lower = [x - 2.0 for x in nll]
    ratio, low, high = paired_ppl_ratio(lower, nll, tokens)
    assert ratio == pytest.approx(math.exp(-2.0 / 31)) and high < 1.0
    with pytest.raises(ValueError):
        paired_ppl_ratio(nll, nll[:3], tokens)


def test_window_nll_gives_perplexitys_value_and_sums_to_it():
    model = tiny_model("llama", num_hidden_layers=3)
    loaded = LoadedModel(model, None, get_adapter(model), "tiny")
    windows = random_windows(n=5, seq_len=16)
    ppl, nll, tokens = window_nll(loaded, windows, batch_size=2)
    assert ppl == perplexity(loaded, windows, 2)  # the same sums in the same order
    assert len(nll) == len(tokens) == 5 and tokens == [15] * 5
    assert math.exp(sum(nll) / sum(tokens)) == pytest.approx(ppl, rel=1e-9)


def test_window_nll_without_removed_blocks_is_the_model_with_them_removed():
    model = tiny_model("llama", num_hidden_layers=3)
    loaded = LoadedModel(model, None, get_adapter(model), "tiny")
    windows = random_windows(n=4, seq_len=16)
    skipped = window_nll(loaded, windows, batch_size=2, removed=frozenset({1, 4}))
    assert skipped[1] != window_nll(loaded, windows, batch_size=2)[1]
    for b in (1, 4):
        loaded.adapter.remove_block(Block(b))
    assert window_nll(loaded, windows, batch_size=2)[1] == pytest.approx(skipped[1], rel=1e-6)


def test_versus_best_compares_each_cell_with_the_best_other_at_its_ratio():
    w = {"s": [10.0, 12.0, 11.0]}
    t = {"s": [9, 9, 9]}
    rows = [
        {"method": "dense", "search": "", "target_ratio": 0.0, "ppl": {"s": 2.0}, "window_nll": w, "window_tokens": t},
        {"method": "a", "search": "greedy", "target_ratio": 0.2, "ppl": {"s": 3.0},
         "window_nll": {"s": [13.0, 14.0, 13.5]}, "window_tokens": t},
        {"method": "b", "search": "greedy", "target_ratio": 0.2, "ppl": {"s": 4.0},
         "window_nll": {"s": [14.0, 15.0, 15.0]}, "window_tokens": t},
        {"method": "c", "search": "greedy", "target_ratio": 0.2, "ppl": {"s": 5.0}},  # an older cell: no windows
        {"method": "a", "search": "greedy", "target_ratio": 0.4, "unreachable": "no", "ppl": {}},
    ]
    vs = versus_best(rows, ["s"], resamples=500)
    assert sorted(vs) == [1, 2]  # the dense row and the lone or unmeasured cells have nothing to compare
    assert vs[1]["s"]["other"] == 2 and vs[2]["s"]["other"] == 1
    assert vs[1]["s"]["ratio"] == pytest.approx(math.exp((40.5 - 44.0) / 27)) and vs[1]["s"]["high"] < 1
    assert vs[2]["s"]["ratio"] == pytest.approx(1 / vs[1]["s"]["ratio"])
