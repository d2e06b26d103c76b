"""LLM-Pruner width pruning on tiny random models: slicing is exact, GQA groups stay whole,
parameter counts follow the plan's arithmetic, pruned models save, reload and generate."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.models.groups import kv_readers
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune_width
from prunekit.plan.apply import apply_plan, load_pruned

pytestmark = pytest.mark.usefixtures("one_thread")


IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 40)
    return str(path)


def _calib(path, seq_len=32):
    return CalibConfig(source=path, seq_len=seq_len)


def _loaded(model_type="llama", **kw):
    return wrap_model(tiny_model(model_type, **kw), tiny_tokenizer())


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _zero_structures(model, layer, kv_groups, channels):
    """Zero every weight (and bias) of KV groups ``kv_groups`` and MLP channels ``channels`` of ``layer``."""
    a = wrap_model(model).adapter.attention(layer)
    m = wrap_model(model).adapter.mlp(layer)
    n_rep, hd = a.num_heads // a.num_kv_heads, a.head_dim
    with torch.no_grad():
        for g in kv_groups:
            q = slice(g * n_rep * hd, (g + 1) * n_rep * hd)
            kv = slice(g * hd, (g + 1) * hd)
            for lin, rows in ((a.q, q), (a.k, kv), (a.v, kv)):
                lin.weight[rows] = 0
                if lin.bias is not None:
                    lin.bias[rows] = 0
            a.o.weight[:, q] = 0
        for j in channels:
            m.gate.weight[j] = 0
            m.up.weight[j] = 0
            m.down.weight[:, j] = 0


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_removing_zero_structures_leaves_logits_unchanged(model_type, calib_file):
    """l1 importance picks the zeroed KV group and channels; slicing them out changes no logit."""
    loaded = _loaded(model_type)
    model = loaded.model
    H, inter = model.config.hidden_size, model.config.intermediate_size
    zero_channels = [3, 17, 40, 41, 90]
    for layer in (1, 2):
        _zero_structures(model, layer, [1], zero_channels)
    before = _logits(model)
    a = loaded.adapter.attention(1)
    group = 2 * (a.num_heads // a.num_kv_heads) * a.head_dim * H + 2 * a.head_dim * H + (
        (a.num_heads // a.num_kv_heads + 2) * a.head_dim if model_type == "qwen2" else 0)
    # The ratio whose uniform per-layer fraction removes exactly one of 2 KV groups and 5 of 96 channels:
    # round(f*2) = 1 needs f >= 0.25, so use --global (score per parameter, zero scores first).
    removed = 2 * (group + len(zero_channels) * 3 * inter // inter * H)
    total = loaded.adapter.total_params()
    res = prune_width(loaded, WidthConfig(ratio=removed / total, importance="l1", global_=True), _calib(calib_file))
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    assert res.plan["params_after"] == total - removed
    for entry in res.plan["width"]["layers"]:
        assert entry["kv_heads"] == [0]
        assert [c for c in range(inter) if c not in entry["mlp_channels"]] == zero_channels
    torch.testing.assert_close(_logits(model), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("importance,glob", [("random", False), ("random", True), ("param_first", False), ("vector", True)])
def test_slicing_equals_masking(model_type, importance, glob, calib_file):
    """Whatever is chosen, the sliced model computes what the dense model computes with the removed
    groups' outputs masked (o columns of their query heads, down columns of the channels)."""
    loaded = _loaded(model_type, num_attention_heads=6, num_key_value_heads=3, hidden_size=48,
                     **({"head_dim": 8} if model_type == "qwen3" else {}))
    dense = copy.deepcopy(loaded.model)
    res = prune_width(loaded, WidthConfig(ratio=0.12, importance=importance, global_=glob, layers="0:4"), _calib(calib_file))
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    w = res.plan["width"]
    assert w["layers"], "nothing was pruned"
    da = wrap_model(dense).adapter
    with torch.no_grad():
        for e in w["layers"]:
            a, m = da.attention(e["layer"]), da.mlp(e["layer"])
            if "kv_heads" in e:
                # GQA: the kept query heads are exactly the readers of the kept KV heads.
                readers = kv_readers(a.num_heads, a.num_kv_heads)
                assert e["heads"] == sorted(h for g in e["kv_heads"] for h in readers[g])
                assert len(e["heads"]) == len(e["kv_heads"]) * (a.num_heads // a.num_kv_heads)
                for h in range(a.num_heads):
                    if h not in e["heads"]:
                        a.o.weight[:, h * a.head_dim:(h + 1) * a.head_dim] = 0
            if "mlp_channels" in e:
                for j in range(m.down.in_features):
                    if j not in e["mlp_channels"]:
                        m.down.weight[:, j] = 0
    torch.testing.assert_close(_logits(loaded.model), _logits(dense), rtol=1e-4, atol=1e-4)
    for e in w["layers"]:
        pa = loaded.adapter.attention(e["layer"])
        if "kv_heads" in e:
            assert (pa.num_heads, pa.num_kv_heads) == (e["num_heads"], e["num_kv_heads"])
            assert pa.num_heads // pa.num_kv_heads == 2  # never a split group
        if "mlp_channels" in e:
            assert loaded.adapter.mlp(e["layer"]).gate.out_features == e["intermediate_size"]


@pytest.mark.parametrize("model_type,kw", [("llama", {"attention_bias": True, "mlp_bias": True}), ("qwen2", {})])
def test_parameter_count_matches_plan_arithmetic(model_type, kw, calib_file):
    loaded = _loaded(model_type, **kw)
    cfg = loaded.model.config
    H, inter, nq, nkv = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = H // nq
    before = sum(p.numel() for p in loaded.model.parameters())
    res = prune_width(loaded, WidthConfig(ratio=0.15, importance="element2"), _calib(calib_file))
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    q_bias = hd * (nq // nkv) if (kw.get("attention_bias") or model_type == "qwen2") else 0
    kv_bias = 2 * hd if (kw.get("attention_bias") or model_type == "qwen2") else 0
    per_group = (2 * (nq // nkv) * hd * H) + 2 * hd * H + q_bias + kv_bias
    per_channel = 3 * H + (2 if kw.get("mlp_bias") else 0)
    removed = 0
    for e in res.plan["width"]["layers"]:
        removed += (nkv - len(e.get("kv_heads", range(nkv)))) * per_group
        removed += (inter - len(e.get("mlp_channels", range(inter)))) * per_channel
    after = sum(p.numel() for p in loaded.model.parameters())
    assert res.plan["params_before"] == before
    assert after == before - removed == res.plan["params_after"]
    assert res.plan["ratio_removed"] == pytest.approx(removed / before)
    assert abs(res.plan["ratio_removed"] - 0.15) < 0.01


def test_channel_strategy_params_and_shapes(calib_file):
    loaded = _loaded("llama", tie_word_embeddings=True)
    loaded.model.tie_weights()
    before = loaded.adapter.total_params()
    res = prune_width(loaded, WidthConfig(ratio=0.2, strategy="channel", importance="param_first"), _calib(calib_file))
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    w = res.plan["width"]
    k = 64 - w["hidden_size"]
    assert len(w["hidden"]) == w["hidden_size"] and k > 0
    # Per hidden channel: embedding column (tied head), 2 norms per layer + the final one, q/k/v/gate/up columns, o/down rows.
    cfg = loaded.model.config
    per_layer = 2 + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * 16 + cfg.num_attention_heads * 16 + 3 * cfg.intermediate_size
    per_channel = cfg.vocab_size + cfg.num_hidden_layers * per_layer + 1
    assert loaded.adapter.total_params() == before - k * per_channel == res.plan["params_after"]
    assert loaded.adapter.lm_head.weight is loaded.adapter.embed.weight
    assert loaded.model.config.prunekit_width["hidden_size"] == w["hidden_size"]
    out = loaded.model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_save_reload_same_logits(strategy, tmp_path, calib_file):
    loaded = _loaded("qwen2")
    res = prune_width(loaded, WidthConfig(ratio=0.15, strategy=strategy, importance="param_mix"), _calib(calib_file),
                      out=tmp_path / "out")
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    want = _logits(loaded.model)
    back = load_pruned(tmp_path / "out")
    torch.testing.assert_close(_logits(back.model), want, rtol=0, atol=0)
    assert back.adapter.total_params() == res.plan["params_after"]
    assert back.model.config.prunekit_width == loaded.model.config.prunekit_width
    again = load_model(str(tmp_path / "out"), device="cpu")
    torch.testing.assert_close(_logits(again.model), want, rtol=0, atol=0)


def test_plan_reapplies_to_base_model(calib_file):
    base = tiny_model("llama")
    loaded = wrap_model(copy.deepcopy(base), tiny_tokenizer())
    res = prune_width(loaded, WidthConfig(ratio=0.15, importance="element1"), _calib(calib_file))
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    apply_plan(base, res.plan)
    torch.testing.assert_close(_logits(base), _logits(loaded.model), rtol=0, atol=0)
    with pytest.raises(PrunekitError, match="already width-pruned"):
        apply_plan(base, res.plan, check=False)


def test_generate_with_kv_cache_matches_no_cache(calib_file):
    loaded = _loaded("mistral", num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    loaded = prune_width(loaded, WidthConfig(ratio=0.12, importance="random", layers="0:4"), _calib(calib_file)).loaded
    prompt = IDS[:1, :6]
    cached = loaded.model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    plain = loaded.model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape == (1, 14)


def test_same_inputs_same_plan(calib_file):
    plans = [prune_width(_loaded("llama"), WidthConfig(ratio=0.15, importance="vector"), _calib(calib_file)).plan for _ in range(2)]
    assert plans[0] == plans[1]
    assert plans[0]["method"] == "llm-pruner" and plans[0]["removed"] == []


def test_pruned_input_is_refused(calib_file):
    loaded = _loaded("llama")
    loaded = prune_width(loaded, WidthConfig(ratio=0.15, importance="l2"), _calib(calib_file)).loaded
    with pytest.raises(PrunekitError, match="already pruned"):
        prune_width(loaded, WidthConfig(ratio=0.15, importance="l2"), _calib(calib_file))


def test_shared_gradients_and_copy_give_the_same_plan(calib_file):
    from prunekit.methods.width.llm_pruner import width_gradients

    loaded = _loaded("qwen2")
    before = _logits(loaded.model)
    grads = width_gradients(loaded, WidthConfig(ratio=0.15), _calib(calib_file), fisher=True)
    for importance in ("param_first", "param_mix", "vector"):
        cfg = WidthConfig(ratio=0.15, importance=importance)
        shared = prune_width(loaded, cfg, _calib(calib_file), gradients=grads)
        fresh = prune_width(_loaded("qwen2"), cfg, _calib(calib_file))
        assert shared.plan == fresh.plan
        torch.testing.assert_close(_logits(shared.loaded.model), _logits(fresh.loaded.model), rtol=0, atol=0)
    torch.testing.assert_close(_logits(loaded.model), before, rtol=0, atol=0)  # the original is untouched


def test_public_prune_dispatches_width_configs(calib_file):
    import prunekit

    loaded = _loaded("llama")
    before = loaded.adapter.total_params()
    res = prunekit.prune(loaded, prunekit.WidthConfig(ratio=0.15, importance="l1"), _calib(calib_file))
    assert res.plan["method"] == "llm-pruner" and res.loaded.adapter.total_params() == res.plan["params_after"]
    assert loaded.adapter.total_params() == before == res.plan["params_before"]  # the caller's model is not pruned


def test_tied_embeddings_save_and_reload(tmp_path, calib_file):
    """safetensors keeps one name of a tied pair; the reload re-ties the head to the (sliced) embedding."""
    for strategy in ("block", "channel"):
        loaded = _loaded("llama", tie_word_embeddings=True)
        loaded.model.tie_weights()
        loaded = prune_width(loaded, WidthConfig(ratio=0.2, strategy=strategy, importance="l2"), _calib(calib_file),
                    out=tmp_path / strategy).loaded
        back = load_pruned(tmp_path / strategy)
        assert back.model.lm_head.weight is back.model.model.embed_tokens.weight
        torch.testing.assert_close(_logits(back.model), _logits(loaded.model), rtol=0, atol=0)


@pytest.mark.parametrize("kw", [{}, {"global_": True}, {"strategy": "channel"}])
def test_at_least_reaches_the_budget_with_the_smallest_step(kw, calib_file):
    """``--at-least`` (compare's rule, as the depth methods): removed >= ratio, and never more than the
    closest choice's step above it; without it the closest reachable amount is taken."""
    ratio = 0.13
    closest = prune_width(_loaded("llama"), WidthConfig(ratio=ratio, importance="l2", **kw), _calib(calib_file))
    least = prune_width(_loaded("llama"), WidthConfig(ratio=ratio, importance="l2", at_least=True, **kw), _calib(calib_file))
    assert least.plan["ratio_removed"] >= ratio
    assert least.plan["ratio_removed"] >= closest.plan["ratio_removed"]
    if closest.plan["ratio_removed"] >= ratio:
        assert least.plan["ratio_removed"] == closest.plan["ratio_removed"]
    assert least.plan["options"]["at_least"] is True
