"""Sequential onloading under ``--max-memory``: weights stay stored (memory-mapped, checkpoint dtype),
blocks come in converted under the cap, and the plan is the uncapped run's, byte for byte."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from helpers import CALIB_TEXT, run_cli
from prunekit.engine.onload import Onloader
from prunekit.methods.depth.workcount import count_onload
from prunekit.models.adapter import Block
from prunekit.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A tiny Llama stored as bfloat16 (what large checkpoints ship as), and a calibration file."""
    d = tmp_path_factory.mktemp("onload")
    tiny_model("llama", num_hidden_layers=6).to(torch.bfloat16).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    (d / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    return d


def _prune(d, out, **depth):
    calib = pk.CalibConfig(source=str(d / "calib.txt"), seq_len=32, windows=8, batch_size=2)
    return pk.prune(str(d / "model"), pk.DepthConfig(remove=4, **depth), calib, out=out, device="cpu")


def test_weights_over_the_cap_prune_to_the_uncapped_plan(bf16_checkpoint, tmp_path, one_thread):
    d = bf16_checkpoint
    free = _prune(d, tmp_path / "free")
    model_bytes = 4 * free.loaded.adapter.total_params()
    cap_gib = model_bytes / 4 / 2**30  # a quarter of the float32 weights
    capped = _prune(d, tmp_path / "capped", max_memory=cap_gib)
    assert (tmp_path / "capped" / "plan.json").read_bytes() == (tmp_path / "free" / "plan.json").read_bytes()
    w = json.loads((tmp_path / "capped" / "timing.json").read_text())["weights"]
    assert w["model_bytes"] > 4 * w["cap_bytes"] * 0.9 and 0 < w["peak_resident_bytes"] <= w["cap_bytes"]
    assert w["moved_bytes"] > w["model_bytes"] and w["compute_dtype"] == "float32"
    # the capped run's own model stayed in the checkpoint's dtype
    assert {p.dtype for p in capped.loaded.model.parameters()} == {torch.bfloat16}
    one = _prune(d, tmp_path / "one-by-one", max_memory=cap_gib, candidate_batch=1)
    assert (tmp_path / "one-by-one" / "plan.json").read_bytes() == (tmp_path / "free" / "plan.json").read_bytes()
    w1 = json.loads((tmp_path / "one-by-one" / "timing.json").read_text())["weights"]
    assert w1["moved_bytes"] > 2 * w["moved_bytes"]  # block-major groups bring each block in once per group and batch
    # the count from shapes alone (what projects a 70B run) agrees with what the onloader measured
    a = pk.load_model(str(d / "model"), device="cpu").adapter  # the unpruned shapes
    blocks = [4 * a.block_params(Block(b)) for b in range(a.num_blocks)]
    order = [tuple(s["blocks"]) for s in capped.plan["removed"]]
    head, embed = 4 * (a.lm_head.weight.numel() + a.final_norm.weight.numel()), 4 * a.embed.weight.numel()
    for timing, group in ((w1, 1), (w, 16)):
        counted = count_onload(blocks, head, order, [(b,) for b in range(a.num_blocks)], 4, group, 1, w["cap_bytes"], embed)
        assert counted["rank_bytes"] == pytest.approx(timing["moved_bytes"], rel=0.02)


def test_onloader_keeps_the_cap_and_gives_the_stored_weights_back(one_thread):
    model = tiny_model("llama", num_hidden_layers=2).to(torch.bfloat16)
    adapter = pk.wrap_model(model).adapter
    stored = {n: p for n, p in model.named_parameters()}
    block_bytes = 4 * adapter.block_params(Block(1))
    onload = Onloader(adapter, "cpu", torch.float32, cap_bytes=block_bytes * 1.5)
    onload.bring(1)
    assert adapter.mlp(0).up.weight.dtype == torch.float32
    onload.bring(3)  # the MLP of layer 1: layer 0's is given back to stay under the cap
    assert adapter.mlp(0).up.weight is stored["model.layers.0.mlp.up_proj.weight"]
    assert onload.peak_bytes <= onload.cap_bytes and onload.moved_bytes == 2 * block_bytes
    onload.release()
    assert all(p is stored[n] for n, p in model.named_parameters())
    with pytest.raises(pk.PrunekitError, match="cannot hold"):
        Onloader(adapter, "cpu", torch.float32, cap_bytes=block_bytes / 2)


def test_a_cap_below_one_block_is_one_line_exit_2(bf16_checkpoint, tmp_path):
    d = bf16_checkpoint
    r = run_cli("prune", str(d / "model"), "--remove", "2", "--calib", str(d / "calib.txt"), "--seq-len", "16",
                "--windows", "2", "--max-memory", "0.000001", "--out", str(tmp_path / "o"))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # after transformers' loading bar
    assert r.returncode == 2 and len(errors) == 1 and "--max-memory" in errors[0] and r.stderr.strip().endswith(errors[0])
    assert not (tmp_path / "o").exists()


def test_the_cli_reports_the_weights_brought_in_under_the_cap(bf16_checkpoint, tmp_path):
    d = bf16_checkpoint
    r = run_cli("prune", str(d / "model"), "--remove", "2", "--calib", str(d / "calib.txt"), "--seq-len", "16",
                "--windows", "2", "--max-memory", "0.0002", "--out", str(tmp_path / "o"), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "weights onloaded" in r.stderr and "GiB brought in; peak resident" in r.stdout
    w = json.loads((tmp_path / "o" / "timing.json").read_text())["weights"]
    assert 0 < w["peak_resident_bytes"] <= w["cap_bytes"] < w["model_bytes"]


@pytest.mark.parametrize("method", ["sleb", "finercut", "shortgpt", "layer-ppl", "blockpruner-oneshot"])
def test_every_engine_method_under_the_cap_gives_the_uncapped_plan(bf16_checkpoint, tmp_path, one_thread, method):
    d = bf16_checkpoint
    free = _prune(d, tmp_path / "free", method=method)
    cap_gib = free.loaded.adapter.total_params() / 2**30  # under a quarter of the float32 weights
    capped = _prune(d, tmp_path / "capped", method=method, max_memory=cap_gib)
    assert (tmp_path / "capped" / "plan.json").read_bytes() == (tmp_path / "free" / "plan.json").read_bytes()
    w = capped.timing["weights"]
    assert w["moved_bytes"] > w["model_bytes"]
    # one-shot scores step block-major: the dense total and one walk (shortgpt), or per window batch (4 here)
    # a dense walk and one walk of all units together (layer-ppl, blockpruner-oneshot), not a walk per unit
    bound = {"shortgpt": 2, "layer-ppl": 1 + 2 * 4, "blockpruner-oneshot": 1 + 2 * 4}.get(method)
    assert bound is None or w["moved_bytes"] <= bound * w["model_bytes"]


def test_evaluation_under_the_cap_gives_the_uncapped_perplexity(bf16_checkpoint, tmp_path, one_thread):
    d = bf16_checkpoint
    plan = _prune(d, tmp_path / "free").plan
    model_bytes = 4 * pk.load_model(str(d / "model"), device="cpu").adapter.total_params()
    args = (str(d / "model"), [str(d / "calib.txt")], 16, 4, 2)
    for p in (None, plan):
        free = pk.evaluate(*args, plan=p, device="cpu")
        capped = pk.evaluate(*args, plan=p, device="cpu", max_memory=model_bytes / 4 / 2**30)
        assert capped["perplexity"] == free["perplexity"] and capped["parameters"] == free["parameters"]
        assert 0 < capped["weights"]["peak_resident_bytes"] <= capped["weights"]["cap_bytes"]
    r = run_cli("eval", str(d / "model"), "--data", str(d / "calib.txt"), "--seq-len", "16", "--windows", "2",
                "--device", "cpu", "--max-memory", f"{model_bytes / 4 / 2**30:.6f}", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "GiB brought in" in r.stdout, r.stderr[-2000:]


def _same_plan_up_to_rounding(capped: dict, free: dict) -> None:
    """Equal plans except the last digits of the recorded scores (a layer-by-layer backward rounds its own way)."""
    def strip(plan):
        return {k: v for k, v in plan.items() if k != "removed"}
    assert strip(capped) == strip(free)
    assert [r["blocks"] for r in capped["removed"]] == [r["blocks"] for r in free["removed"]]
    for a, b in zip(capped["removed"], free["removed"]):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5) and a["value"] == pytest.approx(b["value"], rel=1e-5)


@pytest.mark.parametrize("cache_gb", [None, 1e-7])
def test_taylor_under_the_cap_gives_the_uncapped_plan(bf16_checkpoint, tmp_path, one_thread, cache_gb):
    """Taylor+'s gradients layer by layer (states kept on the device, or in chunks on the CPU when the
    state budget is tiny): the same layers removed, the same scores up to rounding."""
    d = bf16_checkpoint
    free = _prune(d, tmp_path / "free", method="taylor")
    cap_gib = free.loaded.adapter.total_params() / 2**30  # under a quarter of the float32 weights
    capped = _prune(d, tmp_path / "capped", method="taylor", max_memory=cap_gib, cache_gb=cache_gb)
    _same_plan_up_to_rounding(capped.plan, free.plan)
    assert (tmp_path / "capped" / "plan.json").read_bytes() == (tmp_path / "free" / "plan.json").read_bytes()  # on this CPU
    w = capped.timing["weights"]
    assert 0 < w["peak_resident_bytes"] <= w["cap_bytes"] < w["model_bytes"]
    # forward and backward: the weights come in twice per chunk (one chunk, or one per window batch: 4 here)
    passes = 2 if cache_gb is None else 2 * 4
    assert (passes - 0.5) * w["model_bytes"] <= w["moved_bytes"] <= (passes + 1.5) * w["model_bytes"]
