"""The linear patch (``--patch linear``): the fit against closed forms, the fold's transposes, what it never does
(change a plan that removes nothing, move the stream further from the dense one), re-application through an hf
export, the refusals (width methods, bad ridge, families whose structure forbids the fold) and compare's cells."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import prunekit as pk
from conftest import random_windows
from helpers import make_tiny_workspace, run_cli
from prunekit.core.errors import PrunekitError
from prunekit.export import export
from prunekit.methods.depth.patch import PatchConfig, fit_linear_patch, patch_refusal, solve_patch
from prunekit.models.contract import Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import family_model, tiny_model, tiny_tokenizer
from prunekit.pipeline.compare import compare
from prunekit.plan.patch import read_patch, removed_runs
from prunekit.plan.schema import build_plan, model_record, read_plan, validate_plan

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _plan(loaded, blocks: list[int]) -> dict:
    """A depth plan removing ``blocks`` (one step each), as a method would build it."""
    a = loaded.adapter
    steps = [(a.block_params(Block(b)), {"step": i, "unit": str(Block(b)), "blocks": [b], "score": 0.0, "value": 0.0})
             for i, b in enumerate(blocks)]
    return build_plan("sleb", {}, model_record(loaded), {}, a.total_params(), decoder_params=a.decoder_params(), steps=steps)


def _states(loaded, ids: torch.Tensor, removed=frozenset(), patches=None) -> list[torch.Tensor]:
    """The residual stream at every boundary 0..2L (independent of the engine): blocks run one by one with
    ``adapter.run_block``; ``patches`` {block: T} replaces what a block writes, M, by M T."""
    a = loaded.adapter
    with torch.no_grad():
        h, kwargs = a.capture_inputs(ids)
        out = [h]
        for b in range(a.num_blocks):
            if b not in removed:
                new = a.run_block(Block(b), h, kwargs[b // 2])
                h = h + (new - h) @ patches[b] if patches and b in patches else new
            out.append(h)
    return out


def _lstsq(m: torch.Tensor, r: torch.Tensor) -> np.ndarray:
    m, r = m.reshape(-1, m.shape[-1]).double().numpy(), r.reshape(-1, r.shape[-1]).double().numpy()
    return np.linalg.lstsq(m, r, rcond=None)[0]


def test_removed_runs():
    assert removed_runs({9, 3, 4, 5}) == [[3, 4, 5], [9]]
    assert removed_runs([]) == []


@pytest.mark.parametrize("ridge", [0.0, 1e-2, 1.0])
def test_solve_matches_numpy(ridge):
    g = np.random.default_rng(0)
    m, r = g.normal(size=(200, 8)), g.normal(size=(200, 8))
    gram, cross = m.T @ m, m.T @ r
    got = solve_patch(torch.from_numpy(gram), torch.from_numpy(cross), ridge).numpy()
    if ridge == 0.0:
        want = np.linalg.lstsq(m, r, rcond=None)[0]
    else:  # argmin ||M T - R||^2 + lam ||T - I||^2, lam = ridge * mean diag(M^T M)
        lam = ridge * np.trace(gram) / 8
        want = np.linalg.solve(gram + lam * np.eye(8), cross + lam * np.eye(8))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


def test_singular_gram_gives_least_norm_solution():
    m = np.random.default_rng(1).normal(size=(3, 6))  # fewer tokens than channels
    r = np.random.default_rng(2).normal(size=(3, 6))
    got = solve_patch(torch.from_numpy(m.T @ m), torch.from_numpy(m.T @ r), 0.0).numpy()
    np.testing.assert_allclose(m @ got, r, atol=1e-8)  # fits exactly, like lstsq
    np.testing.assert_allclose(got, np.linalg.pinv(m) @ r, atol=1e-8)


def test_fit_equals_closed_form_on_a_tiny_model():
    """Two runs (layer 1's MLP + layer 2's attention; layer 3's MLP after the first is patched), plain least squares:
    each map is numpy's lstsq of (what the block before writes) -> (dense stream after the run - pruned stream before it)."""
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4))
    w = random_windows(n=8, seq_len=32)
    plan, tensors, _ = fit_linear_patch(loaded, _plan(loaded, [3, 4, 7]), w, PatchConfig(ridge=0.0), batch_size=3)
    runs = plan["patch"]["runs"]
    assert [(r["blocks"], r["into"], r["module"]) for r in runs] == [([3, 4], 2, "model.layers.1.self_attn.o_proj"),
                                                                    ([7], 6, "model.layers.3.self_attn.o_proj")]
    dense = _states(loaded, w.ids)
    m1 = dense[3] - dense[2]  # what attn 1 writes
    t1 = _lstsq(m1, dense[5] - dense[2])
    np.testing.assert_allclose(tensors["run_0"].double().numpy(), t1, rtol=1e-4, atol=1e-4)
    pruned = _states(loaded, w.ids, removed={3, 4, 7}, patches={2: tensors["run_0"]})
    m2 = _states(loaded, w.ids, removed={3, 4}, patches={2: tensors["run_0"]})[7] - pruned[6]
    t2 = _lstsq(m2, dense[8] - pruned[6])
    np.testing.assert_allclose(tensors["run_1"].double().numpy(), t2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "granite", "phi3"])
def test_fold_writes_m_times_t(family):
    """After the fold, a block writes M T (row vectors; granite's residual scale, qwen2's biases, phi3's fused
    rows): the transposes of W <- T^T W, b <- T^T b."""
    loaded = wrap_model(family_model(family))
    w = random_windows(n=4, seq_len=16)
    plan, tensors, _ = fit_linear_patch(loaded, _plan(loaded, [4, 5]), w, PatchConfig(ridge=1e-3))
    t = tensors["run_0"]
    before = _states(loaded, w.ids)
    pk.apply_plan(loaded.model, plan, check=False, patch=tensors)
    after = _states(loaded, w.ids)
    torch.testing.assert_close(after[4] - after[3], (before[4] - before[3]) @ t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 1e6])
def test_fit_never_moves_the_stream_further_from_the_dense_one(ridge):
    """On the fit data, the patched stream after a run is no further from the dense stream than the unpatched one
    (T = I is a candidate); the recorded figure is that distance, measured again on the patched model; a huge
    ridge gives T ~ I."""
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4))
    w = random_windows(n=6, seq_len=32)
    plan, tensors, _ = fit_linear_patch(loaded, _plan(loaded, [4, 5, 6]), w, PatchConfig(ridge=ridge))
    fit = plan["patch"]["runs"][0]["fit"]
    assert fit["mse"] <= fit["mse_identity"] * (1 + 1e-9)
    dense = _states(loaded, w.ids)
    pk.apply_plan(loaded.model, plan, check=False, patch=tensors)
    h = _states(loaded, w.ids)[7]
    measured = float(((h - dense[7]).double() ** 2).sum()) / w.n_tokens
    assert measured == pytest.approx(fit["mse"], rel=1e-3)
    if ridge == 0.0:
        assert fit["mse"] < 0.9 * fit["mse_identity"]
    if ridge == 1e6:
        torch.testing.assert_close(tensors["run_0"], torch.eye(64), atol=1e-3, rtol=0)


def test_a_plan_that_removes_nothing_is_unchanged_by_its_patch():
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4))
    with torch.no_grad():
        want = loaded.model(input_ids=IDS).logits
    plan, tensors, _ = fit_linear_patch(loaded, _plan(loaded, []), random_windows(n=2, seq_len=16), PatchConfig())
    assert plan["patch"]["runs"] == [] and plan["patch"]["skipped"] == [] and tensors == {}
    pk.apply_plan(loaded.model, plan, check=False, patch=tensors)
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=IDS).logits, want)


def test_a_run_at_block_zero_is_skipped_and_recorded():
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4))
    plan, tensors, _ = fit_linear_patch(loaded, _plan(loaded, [0, 1, 5]), random_windows(n=4, seq_len=16), PatchConfig())
    assert plan["patch"]["skipped"][0]["blocks"] == [0, 1] and "block 0" in plan["patch"]["skipped"][0]["reason"]
    assert [r["blocks"] for r in plan["patch"]["runs"]] == [[5]] and list(tensors) == ["run_0"]


def _prune(model_dir, calib, out, **patch):
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)
    return pk.prune(str(model_dir), pk.DepthConfig(method="blockpruner", remove=2), cal, out=out, device="cpu",
                    patch=PatchConfig(tokens=256, **patch))


def test_patched_plan_reapplies_and_exports(tmp_path):
    """plan -> apply -> export (hf) -> reload: the same logits; the pruned directory reloads the same; the same
    inputs give byte-identical plans and patch files; a patch file that is not the plan's is refused."""
    model_dir, calib = make_tiny_workspace(tmp_path, "llama", layers=4)
    res = _prune(model_dir, calib, tmp_path / "out")
    assert res.plan["patch"]["runs"] and res.timing["patch"]["work"]["block_runs"] > 0
    assert "| linear patch | ridge 0.0001, 256 tokens; blocks" in (tmp_path / "out" / "report.md").read_text()
    with torch.no_grad():
        pruned = res.loaded.model(input_ids=IDS).logits
        unpatched = pk.load_model(str(model_dir), device="cpu")
        pk.apply_plan(unpatched.model, {k: v for k, v in res.plan.items() if k != "patch"})
        assert (unpatched.model(input_ids=IDS).logits - pruned).abs().max() > 1e-3  # the patch does something
        base = pk.load_model(str(model_dir), device="cpu")
        plan = read_plan(tmp_path / "out")
        pk.apply_plan(base.model, plan, patch=read_patch(tmp_path / "out" / "plan.json", plan))
        torch.testing.assert_close(base.model(input_ids=IDS).logits, pruned, rtol=0, atol=1e-6)
        reloaded = pk.load_model(str(tmp_path / "out"), device="cpu")
        torch.testing.assert_close(reloaded.model(input_ids=IDS).logits, pruned, rtol=0, atol=1e-6)
        export(base, "hf", tmp_path / "hf", verify=False)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, trust_remote_code=True).eval()
        torch.testing.assert_close(hf(input_ids=IDS).logits, pruned, rtol=0, atol=1e-5)
    with pytest.raises(PrunekitError, match="matrices were not given"):
        pk.apply_plan(pk.load_model(str(model_dir), device="cpu").model, plan)
    _prune(model_dir, calib, tmp_path / "again")
    for name in ("plan.json", "patch.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    _prune(model_dir, calib, tmp_path / "other", ridge=0.5)
    (tmp_path / "out" / "patch.safetensors").write_bytes((tmp_path / "other" / "patch.safetensors").read_bytes())
    with pytest.raises(PrunekitError, match="sha256 differs"):
        pk.load_model(str(tmp_path / "out"), device="cpu")


def test_plan_patch_record_is_validated():
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4))
    plan, _, _ = fit_linear_patch(loaded, _plan(loaded, [3, 4]), random_windows(n=2, seq_len=16), PatchConfig())
    bad = json.loads(json.dumps(plan))
    bad["patch"]["runs"][0]["into"] = 1
    with pytest.raises(PrunekitError, match=r"patch.runs\[0\]"):
        validate_plan(bad)
    bad = json.loads(json.dumps(plan))
    bad["patch"]["file"] = "../elsewhere.safetensors"
    with pytest.raises(PrunekitError, match="plain file name"):
        validate_plan(bad)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "olmo2", "mixtral", "qwen2_moe", "qwen3_5_text", "nemotron_h"])
def test_families_whose_structure_forbids_the_fold_are_refused(family):
    loaded = wrap_model(family_model(family), tiny_tokenizer(300))
    reason = patch_refusal(loaded.adapter)
    assert reason and ("output norm" in reason or "mixture-of-experts" in reason or "mixer" in reason)
    cal = pk.CalibConfig(source="wiki", seq_len=16, windows=2)
    with pytest.raises(PrunekitError, match="`patch` linear folds a map") as e:
        pk.prune(loaded, pk.DepthConfig(method="sleb", remove=1), cal, patch=PatchConfig())
    assert "\n" not in str(e.value)


def test_families_that_take_the_fold_are_not_refused():
    for family in ("llama", "mistral", "qwen2", "qwen3", "phi3", "granite"):
        assert patch_refusal(wrap_model(family_model(family)).adapter) is None, family


@pytest.mark.parametrize("args, message", [
    (["--method", "llm-pruner", "--ratio", "0.2", "--patch", "linear"], "--patch linear applies to the depth methods"),
    (["--method", "sleb", "--remove", "1", "--patch", "linear", "--patch-ridge", "-1"], "--patch-ridge -1.0 is not a finite number"),
    (["--method", "sleb", "--remove", "1", "--patch", "affine"], "--patch 'affine' is not known"),
    (["--method", "sleb", "--remove", "1", "--patch", "linear", "--patch-tokens", "0"], "--patch-tokens 0 is out of range"),
    (["--method", "sleb", "--remove", "1", "--patch", "linear", "--patch-tokens", "100000000"], "--patch-tokens 100000000 needs"),
])
def test_bad_patch_input_is_one_line_exit_2(tmp_path, args, message):
    model_dir, calib = make_tiny_workspace(tmp_path, "llama", layers=4)
    res = run_cli("prune", str(model_dir), "--out", str(tmp_path / "out"), "--calib", str(calib), "--seq-len", "16",
                  "--windows", "4", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and res.stderr.rstrip().endswith(errors[0]), res.stderr
    assert not (tmp_path / "out").exists()


def test_compare_adds_patched_cells_and_resumes(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path, "llama", layers=4)
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)

    def run():
        return compare(str(model_dir), "sleb,shortgpt", "0.2,0.97", cal, ["wiki-test"], out=tmp_path / "cmp", eval_windows=2,
                       eval_seq_len=16, device="cpu", patch=PatchConfig(tokens=128))

    rows = run()
    labels = [(r["method"], bool(r.get("patch")), r["target_ratio"]) for r in rows[1:]]
    assert labels == [(m, p, r) for m in ("sleb", "shortgpt") for p in (False, True) for r in (0.2, 0.97)]
    for r in rows[1:]:
        if r["target_ratio"] == 0.97:
            assert r.get("unreachable")
            continue
        if r.get("patch"):
            plan = read_plan(tmp_path / "cmp" / r["plan"])
            assert plan["patch"]["runs"] and read_patch(tmp_path / "cmp" / r["plan"], plan)
            unpatched = next(x for x in rows if x["method"] == r["method"] and not x.get("patch") and x["target_ratio"] == 0.2)
            assert r["blocks"] == unpatched["blocks"] and r["ppl"] != unpatched["ppl"]
            assert r["search_seconds"] > unpatched["search_seconds"]
            evaluated = pk.evaluate(str(model_dir), ["wiki-test"], 16, 2, plan=plan, device="cpu",
                                    patch_tensors=read_patch(tmp_path / "cmp" / r["plan"], plan))
            assert evaluated["perplexity"]["wiki-test"] == pytest.approx(r["ppl"]["wiki-test"], rel=1e-5)
    table = list(csv.DictReader((tmp_path / "cmp" / "results.csv").open()))
    assert [t["patch"] for t in table[1:]] == ["", "", "linear", "linear"] * 2
    assert "sleb + linear patch" in (tmp_path / "cmp" / "results.md").read_text()
    cell, plan = tmp_path / "cmp" / "cells" / "sleb__patch-linear__r0.2.json", tmp_path / "cmp" / "plans" / "sleb__patch-linear__r0.2.json"
    before, plan_bytes = json.loads(cell.read_bytes()), plan.read_bytes()
    assert run() == rows  # all cells kept
    cell.unlink()  # a patched cell lost: made again from the unpatched cell's plan (no search), the same plan and perplexity
    again = run()
    assert plan.read_bytes() == plan_bytes and json.loads(cell.read_bytes())["ppl"] == before["ppl"]
    assert [r for r in again if r.get("plan") != before["plan"]] == [r for r in rows if r.get("plan") != before["plan"]]


def test_patch_under_a_memory_cap_is_the_same(tmp_path):
    """With the weights brought in under `max_memory`, the fit runs block-major on the onloading engine: the same matrices."""
    model_dir, calib = make_tiny_workspace(tmp_path, "llama", layers=4)
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)
    runs = [pk.prune(str(model_dir), pk.DepthConfig(method="blockpruner", remove=2, max_memory=cap), cal, device="cpu",
                     patch=PatchConfig(tokens=256)).plan["patch"] for cap in (None, 0.0005)]
    assert runs[0]["runs"] and runs[0] == runs[1]
