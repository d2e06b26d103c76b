"""``--importance fusion`` for llm-pruner (issue 27): per-layer blend of the fine and coarse estimates, chosen from data."""

from __future__ import annotations

import pytest
import torch

from helpers import CALIB_TEXT
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width import fusion
from prunekit.methods.width.llm_pruner import plan_width, width_gradients
from prunekit.methods.width.options import WidthConfig
from prunekit.models.loading import LoadedModel
from prunekit.models.registry import get_adapter
from prunekit.models.tiny import family_model, tiny_tokenizer


def test_fuse_is_each_ingredient_at_its_extreme_weight():
    gen = torch.Generator().manual_seed(0)
    fine, coarse = torch.rand(7, generator=gen, dtype=torch.float64) * 50, torch.rand(7, generator=gen, dtype=torch.float64) * 0.01
    assert torch.equal(fusion.fuse(fine, coarse, 1.0), fine)
    assert torch.equal(fusion.fuse(fine, coarse, 0.0), coarse)
    mid = fusion.fuse(fine, coarse, 0.5)  # the normalised halves, scaled by the geometric mean of the sums
    want = (fine.sum() * coarse.sum()).sqrt() * (0.5 * fine / fine.sum() + 0.5 * coarse / coarse.sum())
    assert torch.allclose(mid, want)


def _setup(tmp_path):
    model = family_model("llama", num_hidden_layers=6)
    loaded = LoadedModel(model, tiny_tokenizer(), get_adapter(model), "tiny-llama", {})
    path = tmp_path / "calib.txt"
    path.write_text(CALIB_TEXT, encoding="utf-8")
    return loaded, CalibConfig(source=str(path), seq_len=16, batch_size=2)


def _kept(plan: dict) -> list:
    return [(e["layer"], e.get("kv_heads"), e.get("mlp_channels")) for e in plan["width"]["layers"]]


@pytest.mark.parametrize("ratio", [0.2, 0.35])
def test_fusion_reduces_to_each_ingredient_and_records_its_weights(one_thread, tmp_path, monkeypatch, ratio):
    loaded, cal = _setup(tmp_path)
    width = WidthConfig(ratio=ratio, importance="fusion", samples=4)
    grads = width_gradients(loaded, width, cal)
    plan = plan_width(loaded, width, cal, gradients=grads).plan
    record = plan["width"]["fusion"]
    assert len(record) == 2 * 4  # attention and MLP of layers 1..4 (the default range of 6 layers)
    for r in record:
        assert r["alpha"] in fusion.ALPHAS
        if r["decided"]:  # the weight is the one whose pruning of that layer raised the calibration loss least
            assert r["losses"][fusion.ALPHAS.index(r["alpha"])] == min(r["losses"])
    assert any(r["decided"] for r in record)
    for alpha, ingredient in ((1.0, "param_first"), (0.0, "vector")):
        monkeypatch.setattr(fusion, "ALPHAS", (alpha,))
        fused = plan_width(loaded, width, cal, gradients=grads).plan
        alone = plan_width(loaded, WidthConfig(ratio=ratio, importance=ingredient, samples=4), cal, gradients=grads).plan
        assert _kept(fused) == _kept(alone) and fused["params_after"] == alone["params_after"]


def test_fusion_refuses_what_it_cannot_mask():
    with pytest.raises(PrunekitError, match="fusion"):
        WidthConfig(ratio=0.2, importance="fusion", strategy="channel")
    with pytest.raises(PrunekitError, match="aggregate"):
        WidthConfig(ratio=0.2, importance="fusion", aggregate="max")
