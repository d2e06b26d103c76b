"""The engine's CPU kernels of issue 29 leave every float as it was: the head's workspace (logits into a kept
buffer, log-softmax in place) and lanes (a group's candidates side by side on worker threads of one
intra-op thread each) give bit-identical scores, searches and plan files."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import random_windows
from helpers import make_tiny_workspace, run_cli
from prunekit.engine import Engine, window_nll
from prunekit.engine.lanes import Lanes
from prunekit.engine.loss import Workspace
from prunekit.methods.depth.search import GreedySearch
from prunekit.methods.depth.units import make_units
from prunekit.models import get_adapter
from prunekit.models.tiny import family_model


def _final(adapter, w, batch):
    e = Engine(adapter, w, batch_size=batch, lanes=1)
    return e, e.run(0, e.h0(0), 0, e.num_blocks, frozenset())


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite", "qwen2_moe"])
def test_head_workspace_is_bit_identical(family):
    """Plain head, soft-cap (gemma2), logit divisor (granite), MoE: the NLL per window with the workspace equals
    ``F.cross_entropy`` on fresh logits bit for bit, with an ignored label, chunks that split windows, and a
    workspace reused across calls of other sizes."""
    adapter = get_adapter(family_model(family, num_hidden_layers=4))
    w = random_windows(3, 16)
    e, h = _final(adapter, w, 3)
    ids = w.ids
    ignore = int(ids[1, 5])
    ws = Workspace()
    for chunk in (7, 30, 2048, 7):
        plain = window_nll(adapter.logits, h, ids, ignore, chunk)
        kept = window_nll(adapter.logits, h, ids, ignore, chunk, workspace=ws, vocab=e.vocab)
        assert torch.equal(plain, kept), (chunk, plain, kept)
    assert torch.equal(e.score(0, h), window_nll(adapter.logits, h, ids, None, e.chunk_tokens))  # the engine uses it


def test_head_workspace_half_precision_and_fallback():
    """A bf16 head writes bf16 logits into the buffer and widens them (as ``.float()`` does); a head that cannot
    write into the buffer (here: a bias) gives its own tensor, and the NLL is still the plain one."""
    model = family_model("llama", num_hidden_layers=2)
    adapter = get_adapter(model.to(torch.bfloat16))
    w = random_windows(2, 16)
    e, h = _final(adapter, w, 2)
    assert torch.equal(window_nll(adapter.logits, h, w.ids, None), window_nll(adapter.logits, h, w.ids, None, workspace=Workspace(),
                                                                               vocab=e.vocab))
    model = family_model("llama", num_hidden_layers=2)
    lm = model.lm_head
    biased = torch.nn.Linear(lm.in_features, lm.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(lm.weight)
        biased.bias.normal_()
    model.lm_head = biased
    adapter = get_adapter(model)
    e, h = _final(adapter, w, 2)
    buf = torch.empty(5, e.vocab)
    assert adapter.logits(h[0, :5], out=buf).data_ptr() != buf.data_ptr()
    assert torch.equal(window_nll(adapter.logits, h, w.ids, None), window_nll(adapter.logits, h, w.ids, None, workspace=Workspace(),
                                                                               vocab=e.vocab))


def test_logits_into_a_buffer_equal_the_module():
    adapter = get_adapter(family_model("gemma2", num_hidden_layers=4))
    x = torch.randn(9, adapter.model.config.hidden_size)
    buf = torch.full((9, adapter.lm_head.weight.shape[0]), float("nan"))
    with torch.inference_mode():
        got = adapter.logits(x, out=buf)
        assert got.data_ptr() == buf.data_ptr()
        assert torch.equal(got, adapter.logits(x))
        assert torch.equal(F.log_softmax(adapter.logits(x), -1), torch.log_softmax(got, -1, out=got))


def _search(adapter, w, units, *, lanes, k, cache="trajectory", early_exit=True, budget=1e9, criterion="ppl", steps=3):
    engine = Engine(adapter, w, batch_size=2, cache_bytes=budget, criterion=criterion, lanes=lanes)
    search = GreedySearch(engine, units, cache=cache, early_exit=early_exit, candidate_batch=k)
    return search.run(lambda removed: len(removed) >= steps), engine


def _finished(result):
    return {u: total for u, total, _ in result.ranking if total is not None}


@pytest.mark.parametrize("family,kind", [("llama", "mix"), ("qwen3", "layer"), ("gemma2", "mix"), ("granite", "attn")])
def test_lanes_search_is_bit_identical(family, kind):
    """A search whose groups run side by side in 2 lanes (groups of 2 and of 3) chooses the same units with the
    same totals, bit for bit, as one candidate at a time; every candidate both finished has the same total; with
    early exit off the counted work is the same; under a tight state budget and with FinerCut's criterion too."""
    adapter = get_adapter(family_model(family, num_hidden_layers=4))
    w = random_windows(6, 16)
    units = make_units(adapter, kind)
    for cfg in ({}, {"early_exit": False}, {"budget": 30_000}, {"criterion": "js", "steps": 2}):
        ref, e1 = _search(adapter, w, units, lanes=1, k=1, **cfg)
        for k in (2, 3):
            got, e2 = _search(adapter, w, units, lanes=2, k=k, **cfg)
            assert [(r.unit, r.score) for r in got] == [(r.unit, r.score) for r in ref], (cfg, k)
            for a, b in zip(got, ref):
                fa, fb = _finished(a), _finished(b)
                assert all(fa[u] == fb[u] for u in fa.keys() & fb.keys())
            if cfg == {"early_exit": False}:
                assert e2.counter.as_dict() == e1.counter.as_dict()


def test_lanes_pin_only_their_own_threads():
    """Each lane runs on its own intra-op thread count; the caller's count, and that of threads started later,
    stay the process's; an exception in a lane reaches the caller."""
    torch.set_num_threads(2)
    pool = Lanes(2, 1)
    assert torch.get_num_threads() == 2
    assert pool.map(lambda _: torch.get_num_threads(), range(5)) == [1] * 5
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [2]

    def boom(i):
        raise ValueError(f"lane {i}")

    with pytest.raises(ValueError, match="lane 0"):
        pool.map(boom, range(2))


def test_engine_lanes_follow_the_threads():
    adapter = get_adapter(family_model("llama", num_hidden_layers=2))
    w = random_windows(2, 8)
    assert Engine(adapter, w).lanes == 1 and Engine(adapter, w).auto_candidate_batch() == 1  # the suite's one thread
    torch.set_num_threads(2)
    e = Engine(adapter, w)
    assert e.lanes == 2 and e.auto_candidate_batch() == 2
    assert Engine(adapter, w, lanes=1).auto_candidate_batch() == 1


def test_plan_file_is_the_same_with_lanes(tmp_path):
    """``prunekit prune`` on 2 threads (lanes, groups of 2 by default; and --candidate-batch 3) writes the
    plan.json of a one-thread run, byte for byte."""
    model_dir, calib = make_tiny_workspace(tmp_path, layers=4)
    common = ["prune", str(model_dir), "--remove", "3", "--calib", str(calib), "--seq-len", "16", "--windows", "6",
              "--batch-size", "2"]
    plans = {}
    for name, threads, extra in (("one", 1, []), ("lanes", 2, []), ("lanes-k3", 2, ["--candidate-batch", "3"])):
        torch.set_num_threads(threads)
        r = run_cli(*common, *extra, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        plans[name] = (tmp_path / name / "plan.json").read_bytes()
    assert plans["lanes"] == plans["one"] and plans["lanes-k3"] == plans["one"]
