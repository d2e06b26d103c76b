"""Depth baselines (issue 4): plan shape, determinism, scores against independent references, budgets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import random_windows
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.engine import Engine, reference_nll
from prunekit.methods.depth.baselines import (
    alone_totals,
    block_influence,
    block_relative_magnitude,
    layer_block_influence,
    rank_and_remove,
    relative_magnitude,
    taylor_kept_layers,
    taylor_scores,
)
from prunekit.methods.depth.units import make_units, unit_name, unit_params
from prunekit.methods.options import DepthConfig
from prunekit.methods.registry import method_for
from prunekit.methods.width.options import WidthConfig
from prunekit.models import get_adapter
from prunekit.models.contract import Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from prunekit.pipeline import prune as api

METHODS = ("shortgpt", "sleb", "layer-ppl", "taylor", "relative-magnitude", "blockpruner-oneshot", "finercut")
LAYER_METHODS = {"shortgpt", "sleb", "layer-ppl", "taylor"}


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 30, encoding="utf-8")
    return str(path)


def _prune(method: str, calib_file: str, ratio: float = 0.3, layers: int = 5, **kw):
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=layers), tiny_tokenizer())
    depth = DepthConfig(method=method, ratio=ratio, **kw)
    return api.prune(loaded, depth, CalibConfig(source=calib_file, seq_len=24, windows=4, batch_size=2))


def test_block_influence_hand_checked():
    h_in = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    h_out = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    s, n = block_influence(h_in, h_out)          # cos = 1 and 1/sqrt(2)
    assert n == 2
    assert 1.0 - s / n == pytest.approx(1.0 - (1.0 + 2 ** -0.5) / 2, abs=1e-7)  # BI = 0.146447
    s, n = relative_magnitude(h_in, h_out)       # f = (1,0) twice; ||h_out|| = 2 and sqrt(2)
    assert s / n == pytest.approx((0.5 + 2 ** -0.5) / 2, abs=1e-7)


def _hooked_io(model, adapter, ids):
    """Inputs and outputs of every decoder layer from the model's own forward (forward hooks)."""
    seen = {}

    def hook(i):
        return lambda m, a, kw, out: seen.__setitem__(
            i, (kw.get("hidden_states", a[0] if a else None), out[0] if isinstance(out, tuple) else out))

    hooks = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(adapter.layers)]
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_shortgpt_bi_matches_layer_hooks():
    model = tiny_model("qwen2", num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(4, 16)
    engine = Engine(adapter, w, batch_size=2)
    units = make_units(adapter, "layer")
    ours = layer_block_influence(engine, units)
    io = _hooked_io(model, adapter, w.ids)
    for i, u in enumerate(units):
        h_in, h_out = io[i]
        ref = 1.0 - F.cosine_similarity(h_in.double(), h_out.double(), dim=-1).mean().item()
        assert ours[u] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    rm = block_relative_magnitude(engine, make_units(adapter, "mix"))
    assert all(0.0 <= v for v in rm.values()) and len(rm) == 8


def test_alone_totals_match_full_forward():
    model = tiny_model("llama", num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(4, 16)
    engine = Engine(adapter, w, batch_size=2)
    for kind in ("layer", "mix"):
        units = make_units(adapter, kind)
        totals = alone_totals(engine, units)
        for u in units:
            with adapter.skipping([Block(b) for b in u]), torch.inference_mode():
                ref = reference_nll(model(input_ids=w.ids).logits.double(), w.ids, None)
            assert totals[u] == pytest.approx(ref, rel=1e-5)


def test_taylor_scores_match_autograd_reference():
    model = tiny_model("mistral", num_hidden_layers=3)
    adapter = get_adapter(model)
    w = random_windows(4, 16)
    engine = Engine(adapter, w, batch_size=2)
    units = make_units(adapter, "layer")
    ours = taylor_scores(None, engine, units)
    assert all(p.grad is None for p in model.parameters())
    logits = model(input_ids=w.ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), w.ids[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, list(model.model.layers.parameters()))
    by_param = {id(p): g for p, g in zip(model.model.layers.parameters(), grads)}
    for i, u in enumerate(units):
        ref = sum(float((p.detach() * by_param[id(p)]).abs().sum()) for p in model.model.layers[i].parameters())
        assert ours[u] == pytest.approx(ref, rel=1e-4)


def test_taylor_plus_keeps_first_and_last_layers():
    assert taylor_kept_layers(32) == {0, 1, 2, 3, 30, 31}     # the authors' choice for 32 layers
    assert taylor_kept_layers(30) == {0, 1, 2, 3, 28, 29}
    assert taylor_kept_layers(4) == set()


@pytest.mark.parametrize("method", METHODS)
def test_plan_shape_and_determinism(method, calib_file):
    a = _prune(method, calib_file).plan
    b = _prune(method, calib_file).plan
    assert a["removed"] == b["removed"] and a["ratio_removed"] == b["ratio_removed"]
    assert a["method"] == method
    steps = a["removed"]
    assert [s["step"] for s in steps] == list(range(len(steps)))
    for s in steps:
        assert s["unit"] == unit_name(tuple(s["blocks"]))
        assert math.isfinite(s["score"]) and math.isfinite(s["value"])
        if method in LAYER_METHODS:
            assert len(s["blocks"]) == 2 and s["blocks"][0] % 2 == 0 and s["blocks"][1] == s["blocks"][0] + 1
        else:
            assert len(s["blocks"]) == 1
    # the budget is met, and not by more than the last unit
    assert a["ratio_removed"] >= 0.3
    last = steps[-1]["ratio_removed"] - (steps[-2]["ratio_removed"] if len(steps) > 1 else 0.0)
    assert a["ratio_removed"] - last < 0.3
    if method not in ("sleb", "finercut"):   # one shot: scores in increasing order
        scores = [s["score"] for s in steps]
        assert scores == sorted(scores)
    assert a["options"]["criterion"] == {"shortgpt": "block_influence", "taylor": "taylor", "relative-magnitude": "relative_magnitude",
                                         "layer-ppl": "ppl_alone", "blockpruner-oneshot": "ppl_alone", "finercut": "js",
                                         "sleb": "ppl"}[method]


def test_layer_budget_accounting_hand_checked(calib_file):
    """Tiny llama, 4 layers, hidden 64, 4/2 heads of 16, MLP 96, vocab 256, untied head."""
    attn = 64 * 64 * 2 + 64 * 32 * 2 + 64        # q, o; k, v; pre-norm
    mlp = 3 * 64 * 96 + 64                       # gate, up, down; pre-norm
    total = 2 * 256 * 64 + 4 * (attn + mlp) + 64
    res = _prune("shortgpt", calib_file, ratio=0.3, layers=4)
    assert res.plan["params_before"] == total == 156_224
    # one layer is 19.7% < 30%: two whole layers, 39.5%, recorded exactly
    assert len(res.plan["removed"]) == 2
    assert res.plan["ratio_removed"] == 2 * (attn + mlp) / total
    assert res.plan["params_after"] == res.loaded.adapter.total_params() == total - 2 * (attn + mlp)


def test_finercut_follows_naive_js_greedy():
    model = tiny_model("llama", num_hidden_layers=4)
    adapter = get_adapter(model)
    w = random_windows(4, 16)
    units = make_units(adapter, "mix")
    from prunekit.methods.depth.baselines import finercut

    engine = Engine(adapter, w, batch_size=2)
    out = finercut(None, engine, units, lambda removed: len(removed) >= 3, DepthConfig(method="finercut", remove=3))
    with torch.inference_mode():
        dense = F.log_softmax(model(input_ids=w.ids).logits.double(), -1)
    chosen = []
    for step in range(3):
        best = None
        for u in units:
            if u in chosen:
                continue
            with adapter.skipping([Block(b) for v in chosen + [u] for b in v]), torch.inference_mode():
                q = F.log_softmax(model(input_ids=w.ids).logits.double(), -1)
            m = torch.logaddexp(dense, q) - math.log(2)
            js = float((0.5 * ((dense.exp() * (dense - m)).sum(-1) + (q.exp() * (q - m)).sum(-1))).sum())
            if best is None or js < best[0]:
                best = (js, u)
        chosen.append(best[1])
        assert out.records[step]["score"] == pytest.approx(best[0], rel=1e-4, abs=1e-7)
    assert out.units == chosen
    assert engine.counter.block_runs > 0  # the JS engine's work is counted on the caller's engine


def test_one_shot_resume_gives_the_same_list():
    scores = {(0,): 3.0, (1,): 1.0, (2,): 2.0, (3,): 1.0}
    stop = lambda removed: len(removed) >= 3  # noqa: E731
    full = rank_and_remove(scores, stop)
    assert [r["blocks"] for r in full] == [[1], [3], [2]]
    resumed = rank_and_remove(scores, stop, start=full[:1])
    assert resumed == full
    with pytest.raises(PrunekitError, match="ran out of units"):
        rank_and_remove(scores, lambda removed: len(removed) >= 4, excluded={(0,)}, method="taylor")


def test_search_flag_refused_for_one_shot_methods():
    with pytest.raises(PrunekitError, match="`search` beam:2 applies to the greedy methods"):
        method_for(DepthConfig(method="shortgpt", ratio=0.2, search="beam:2"))
    model = tiny_model("llama", num_hidden_layers=2)
    layer0 = sum(p.numel() for p in model.model.layers[0].parameters())
    assert unit_params(get_adapter(model), (0, 1)) == layer0  # a layer unit counts both blocks with their norms


def test_the_registry_refuses_options_of_the_other_kind():
    with pytest.raises(PrunekitError, match="`method` llm-pruner is a width method, given a DepthConfig"):
        method_for(DepthConfig(method="llm-pruner", ratio=0.2))
    assert method_for(WidthConfig(ratio=0.2)).kind == "width"
    with pytest.raises(PrunekitError, match="Did you mean 'sleb'"):
        method_for(DepthConfig(method="slep", ratio=0.2))
