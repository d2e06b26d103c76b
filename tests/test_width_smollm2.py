"""LLM-Pruner on the embedded SmolLM2-135M (GQA: 9 query / 3 KV heads): the ratio reached, whole KV
groups, generation with a KV cache, save/reload. Marked slow (tens of seconds)."""

from __future__ import annotations

import pytest
import torch

from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune_width
from prunekit.plan.apply import load_pruned

pytestmark = pytest.mark.slow


def test_smollm2_block_pruning_20_percent(tmp_path):
    loaded = load_model("smollm2-135m", device="cpu")
    total = loaded.adapter.total_params()
    res = prune_width(loaded, WidthConfig(ratio=0.2, importance="param_first", samples=2),
                      CalibConfig(source="wiki", seq_len=32), out=tmp_path / "out")
    loaded = res.loaded  # prune_width works on a copy of a LoadedModel
    plan = res.plan
    assert abs(plan["ratio_removed"] - 0.2) < 0.002 and plan["params_before"] == total
    assert loaded.adapter.total_params() == plan["params_after"]
    layers = {e["layer"]: e for e in plan["width"]["layers"]}
    assert sorted(layers) == list(range(4, 28))  # the default range: the authors' 4..29 of 32 layers, scaled
    for e in layers.values():
        assert e["num_heads"] == 3 * e["num_kv_heads"]
        assert e["heads"] == [h for g in e["kv_heads"] for h in range(3 * g, 3 * g + 3)]
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 260, 1345]])
    cached = loaded.model.generate(ids, max_new_tokens=6, do_sample=False)
    plain = loaded.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)
    back = load_pruned(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(back.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits, rtol=0, atol=0)
