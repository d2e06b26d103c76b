"""Plans: round trip, re-application to the base model, refusal of foreign or corrupted plans."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from helpers import make_tiny_workspace
from prunekit.core.errors import PrunekitError
from prunekit.plan.schema import read_plan, validate_plan


def _prune(model_dir, calib, out=None, **kw):
    depth = pk.DepthConfig(remove=kw.pop("remove", 3), **kw)
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)
    return pk.prune(str(model_dir), depth, cal, out=out, device="cpu")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_plan_round_trip(tmp_path, family):
    model_dir, calib = make_tiny_workspace(tmp_path, family)
    res = _prune(model_dir, calib, out=tmp_path / "out")
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pruned = res.loaded.model(input_ids=ids).logits
        reloaded = pk.load_model(str(tmp_path / "out"), device="cpu")
        again = reloaded.model(input_ids=ids).logits
        base = pk.load_model(str(model_dir), device="cpu")
        pk.apply_plan(base.model, pk.read_plan(tmp_path / "out"))
        reapplied = base.model(input_ids=ids).logits
    torch.testing.assert_close(again, pruned, rtol=0, atol=1e-6)
    torch.testing.assert_close(reapplied, pruned, rtol=0, atol=1e-6)
    assert reloaded.adapter.total_params() == res.plan["params_after"] < res.plan["params_before"]
    plan = res.plan
    assert len(plan["removed"]) == 3 and plan["removed"][0]["step"] == 0
    assert plan["model"]["weights_sha256"] and plan["calibration"]["text_sha256"]
    assert (tmp_path / "out" / "timing.json").exists() and (tmp_path / "out" / "journal.jsonl").exists()


def test_ratio_budget_reaches_at_least_the_ratio(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    res = _prune(model_dir, calib, remove=None, ratio=0.2)
    plan = res.plan
    assert plan["ratio_removed"] >= 0.2
    without_last = plan["removed"][-2]["ratio_removed"] if len(plan["removed"]) > 1 else 0.0
    assert without_last < 0.2
    assert plan["params_after"] == res.loaded.adapter.total_params()


def test_same_inputs_give_byte_identical_plans(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    _prune(model_dir, calib, out=tmp_path / "a")
    _prune(model_dir, calib, out=tmp_path / "b")
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()


def test_plan_from_another_model_is_refused(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    res = _prune(model_dir, calib)
    other = pk.load_model(str(make_tiny_workspace(tmp_path / "o", layers=6)[0]), device="cpu")
    with pytest.raises(PrunekitError, match="num_hidden_layers"):
        pk.apply_plan(other.model, res.plan)
    same_shape = pk.wrap_model(pk.models.tiny.tiny_model("llama", seed=7))
    with pytest.raises(PrunekitError, match="weights hash differs"):
        pk.apply_plan(same_shape.model, res.plan)


def test_plan_searched_in_bfloat16_applies_to_the_float32_model(tmp_path):
    """The hash is of the weights as ``weights_dtype``: a bf16 search's plan fits the float32 model it
    was cast from, and still refuses other weights."""
    model_dir, calib = make_tiny_workspace(tmp_path)
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)
    res = pk.prune(str(model_dir), pk.DepthConfig(remove=2), cal, dtype="bfloat16", device="cpu")
    assert res.plan["model"]["weights_dtype"] == "bfloat16"
    base = pk.load_model(str(model_dir), device="cpu")
    assert next(base.model.parameters()).dtype == torch.float32
    pk.apply_plan(base.model, res.plan)
    assert base.adapter.total_params() == res.plan["params_after"]
    other = pk.wrap_model(pk.models.tiny.tiny_model("llama", seed=7))
    with pytest.raises(PrunekitError, match="weights hash differs"):
        pk.apply_plan(other.model, res.plan)


def test_corrupted_plans_are_refused(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    _prune(model_dir, calib, out=tmp_path / "out")
    path = tmp_path / "out" / "plan.json"
    plan = json.loads(path.read_text())
    cases = {
        "not json": "{broken",
        "version": json.dumps(plan | {"prunekit_plan": 99}),
        "missing": json.dumps({k: v for k, v in plan.items() if k != "removed"}),
        "bad blocks": json.dumps(plan | {"removed": [{"blocks": ["x"]}]}),
    }
    matches = {"not json": "not valid JSON", "version": "plan version 99", "missing": "lacks the field 'removed'",
               "bad blocks": "valid 'blocks'"}
    for name, text in cases.items():
        path.write_text(text)
        with pytest.raises(PrunekitError, match=matches[name]):
            pk.read_plan(path)


def _edited(plan: dict, steps: list[tuple[int, list[int]]]) -> dict:
    return plan | {"removed": [{"step": n, "unit": "x", "blocks": b, "score": 0.0, "value": 0.0} for n, b in steps]}


@pytest.mark.parametrize("steps,message", [
    ([(0, [2]), (1, [2])], r"removed\[1\] removes attn 1 again \(already removed at removed\[0\]\)"),
    ([(0, [2, 3]), (1, [3])], r"removed\[1\] removes mlp 1 again"),
    ([(0, [8])], r"removed\[0\] names block 8 \(attn 4\), outside the model's 8 blocks"),
    ([(1, [2]), (0, [3])], r"removed\[0\] is step 1, out of order \(expected step 0\)"),
])
def test_a_hand_edited_plan_is_refused_naming_the_entry(tmp_path, steps, message):
    model_dir, calib = make_tiny_workspace(tmp_path)
    plan = _prune(model_dir, calib, remove=2).plan
    bad = _edited(plan, steps)
    with pytest.raises(PrunekitError, match=message):
        validate_plan(bad)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(PrunekitError, match=message):
        read_plan(path)
    base = pk.load_model(str(model_dir), device="cpu")
    with pytest.raises(PrunekitError, match=message):
        pk.apply_plan(base.model, bad)
    assert base.adapter.removed_blocks() == []  # refused before anything was removed
    validate_plan(_edited(plan, [(0, [2]), (1, [5])]))  # the same shape, done right, is accepted


def test_evaluate_with_a_plan_leaves_the_callers_model_as_it_is(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    plan = _prune(model_dir, calib, remove=2).plan
    base = pk.load_model(str(model_dir), device="cpu")
    before = base.adapter.total_params()
    res = pk.evaluate(base, [str(calib)], seq_len=16, windows=2, plan=plan)
    assert res["parameters"] == plan["params_after"] < before
    assert base.adapter.total_params() == before and base.adapter.removed_blocks() == []
