"""Sequential onloading under ``--max-memory``: weights stay stored (memory-mapped, checkpoint dtype),
blocks come in converted under the cap, and the plan is the uncapped run's, byte for byte (gradient
passes layer by layer: taylor's and llm-pruner's, the same choices, scores equal up to rounding)."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from helpers import CALIB_TEXT, run_cli
from prunekit.engine.onload import Onloader
from prunekit.methods.depth.workcount import count_onload
from prunekit.methods.width.importance import collect_gradients, collect_gradients_layerwise, needed_parameters, part_scores
from prunekit.models.contract import Block
from prunekit.models.groups import block_families, hidden_family
from prunekit.models.tiny import family_model, tiny_model, tiny_tokenizer


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
    _prune(d, tmp_path / "one-by-one", max_memory=cap_gib, candidate_batch=1)
    assert (tmp_path / "one-by-one" / "plan.json").read_bytes() == (tmp_path / "free" / "plan.json").read_bytes()
    w1 = json.loads((tmp_path / "one-by-one" / "timing.json").read_text())["weights"]
    assert w1["moved_bytes"] > 2 * w["moved_bytes"]  # block-major groups bring each block in once per group and batch
    # the count from shapes alone (what projects a 70B run) agrees with what the onloader measured
    a = pk.load_model(str(d / "model"), device="cpu").adapter  # the unpruned shapes
    blocks = [4 * a.block_params(Block(b)) for b in range(a.num_blocks)]
    order = [tuple(s["blocks"]) for s in capped.plan["removed"]]
    head, embed = 4 * (a.lm_head.weight.numel() + a.final_norm.weight.numel()), 4 * a.embed.weight.numel()
    for timing, group in ((w1, 1), (w, 16)):
        counted = count_onload(blocks, head, order, [(b,) for b in range(a.num_blocks)], 4, group=group, ranks=1,
                               cap_bytes=w["cap_bytes"], embed_bytes=embed)
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


# --- llm-pruner under the cap: its gradient pass layer by layer -----------------------------------
def _width(model_dir, out, calib_file, **width):
    calib = pk.CalibConfig(source=str(calib_file), seq_len=32, windows=8, batch_size=2)
    return pk.prune(str(model_dir), pk.WidthConfig(ratio=0.2, samples=4, **width), calib, out=out, device="cpu")


def _same_width_plan(capped: dict, free: dict) -> None:
    """The same kept heads and channels; the dense calibration value (from each window's loss) equal up to rounding."""
    def strip(plan):
        return {k: v for k, v in plan.items() if k != "dense_value"}
    assert strip(capped) == strip(free)
    assert (capped["dense_value"] is None) == (free["dense_value"] is None)
    assert capped["dense_value"] is None or capped["dense_value"] == pytest.approx(free["dense_value"], rel=1e-5)


def _same_weights(a, b) -> None:
    """Two pruned outputs hold the same kept weights (read back in float32)."""
    sa, sb = pk.load_pruned(a).model.state_dict(), pk.load_pruned(b).model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("width", [
    dict(),  # param_first, block strategy
    dict(importance="param_mix", global_=True),  # the Fisher diagonal, groups ranked across layers
    dict(importance="vector"),
    dict(importance="param_second", aggregate="last"),
    dict(importance="l2"),  # no gradient pass: only the scoring of stored weights as computed
    dict(strategy="channel", importance="element2"),  # hidden channels: the head's and the embedding's gradients too
])
def test_llm_pruner_under_the_cap_gives_the_uncapped_plan(bf16_checkpoint, tmp_path, one_thread, width):
    """A bf16 checkpoint computed in float32, its weights four times the cap: the plan of the uncapped
    run, and the same pruned weights saved (in the checkpoint's dtype under the cap)."""
    d = bf16_checkpoint
    free = _width(d / "model", tmp_path / "free", d / "calib.txt", **width)
    cap_gib = free.loaded.adapter.total_params() / 2**30  # a quarter of the float32 weights
    capped = _width(d / "model", tmp_path / "capped", d / "calib.txt", max_memory=cap_gib, **width)
    _same_width_plan(capped.plan, free.plan)
    assert "max_memory" not in capped.plan["options"]
    w = capped.timing["weights"]
    assert 0 < w["peak_resident_bytes"] <= w["cap_bytes"] < w["model_bytes"] / 3
    if capped.plan["dense_value"] is not None:  # forward, then backward: every block comes in twice (one chunk)
        assert 1.5 * w["model_bytes"] <= w["moved_bytes"] <= 2.5 * w["model_bytes"]
    assert {p.dtype for p in capped.loaded.model.parameters()} == {torch.bfloat16}
    _same_weights(tmp_path / "capped", tmp_path / "free")


@pytest.mark.parametrize("model_type", ["gemma2", "qwen2_moe"])  # soft-capped logits, routed experts' channels
def test_llm_pruner_under_the_cap_on_other_families(tmp_path, one_thread, model_type):
    family_model(model_type).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    free = _width(tmp_path / "model", tmp_path / "free", tmp_path / "calib.txt", importance="param_mix")
    cap = 4 * free.loaded.adapter.total_params() / 3 / 2**30  # a third of the float32 weights
    capped = _width(tmp_path / "model", tmp_path / "capped", tmp_path / "calib.txt", importance="param_mix", max_memory=cap)
    _same_width_plan(capped.plan, free.plan)
    assert capped.timing["weights"]["peak_resident_bytes"] <= capped.timing["weights"]["cap_bytes"]
    _same_weights(tmp_path / "capped", tmp_path / "free")


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    """A tiny Llama with tied embeddings (float32): the head and the embedding share one weight."""
    d = tmp_path_factory.mktemp("tied")
    tiny_model("llama", tie_word_embeddings=True).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    (d / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    return d


def test_layerwise_gradients_and_fisher_equal_the_whole_model_pass(tied_checkpoint, one_thread):
    """g and F of every hidden-channel part (embedding = LM head included) equal up to float32 rounding."""
    loaded = pk.load_model(str(tied_checkpoint / "model"), device="cpu")
    names = needed_parameters([hidden_family(loaded.adapter)])
    ids = torch.randint(2, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    ids[1, -5:] = 1  # an ignored target (the pad id below)
    free = collect_gradients(loaded.model, ids, names, True, ignore_index=1)
    stored = pk.load_model(str(tied_checkpoint / "model"), device="cpu")
    onload = Onloader(stored.adapter, "cpu", torch.float32, 4 * stored.adapter.total_params() / 3)
    capped = collect_gradients_layerwise(onload, ids, names, True, state_budget=2**30, ignore_index=1)
    assert "model.embed_tokens.weight" in capped.grad and capped.per_sample_loss == pytest.approx(free.per_sample_loss, rel=1e-6)
    for n in names:
        for got, want in ((capped.grad[n], free.grad[n]), (capped.fisher[n], free.fisher[n])):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max())), n
    assert all(p.requires_grad for p in stored.model.parameters())  # the stored model as it was
    assert onload.used == 0


def test_stored_weights_are_scored_as_computed(tied_checkpoint):
    """A float32 checkpoint held as stored and computed in bfloat16 scores the bfloat16 weights (the uncapped model's)."""
    spec = str(tied_checkpoint / "model")
    stored, computed = pk.load_model(spec, device="cpu", dtype="bfloat16", stored=True), pk.load_model(spec, device="cpu", dtype="bfloat16")
    assert next(stored.model.parameters()).dtype == torch.float32
    for fam_s, fam_c in zip(block_families(stored.adapter, 0, 4), block_families(computed.adapter, 0, 4)):
        assert torch.equal(part_scores(fam_s, "l2", None, torch.bfloat16), part_scores(fam_c, "l2", None))
        assert not torch.equal(part_scores(fam_s, "l2", None), part_scores(fam_c, "l2", None))


class Killed(Exception):
    pass


def _kill_after(n: int):
    def progress(stage, done, total):
        if stage == "gradients" and done == n:
            raise Killed

    return progress


def test_llm_pruner_under_the_cap_resumes_its_journaled_pass(tied_checkpoint, tmp_path, one_thread):
    """Tied embeddings with the hidden-channel strategy run one window per chunk, so the journal has its
    points as without a cap: a pass killed after two windows resumes under the cap to the uncapped plan."""
    d = tied_checkpoint
    width = dict(strategy="channel", importance="param_mix")
    free = _width(d / "model", tmp_path / "free", d / "calib.txt", **width)
    cap = free.loaded.adapter.total_params() / 2**30
    calib = pk.CalibConfig(source=str(d / "calib.txt"), seq_len=32, windows=8, batch_size=2)
    config = pk.WidthConfig(ratio=0.2, samples=4, max_memory=cap, **width)
    with pytest.raises(Killed):
        pk.prune_width(str(d / "model"), config, calib, out=tmp_path / "capped", device="cpu", progress=_kill_after(2))
    lines = [json.loads(x) for x in (tmp_path / "capped" / "journal.jsonl").read_text().splitlines()]
    points = [r["samples"] for r in lines[1:]]
    assert points and points[0] == 1 and max(points) <= 2  # a point after the first window, as without a cap
    res = pk.prune_width(str(d / "model"), config, calib, out=tmp_path / "capped", device="cpu", resume=True)
    assert res.timing["resumed_samples"] == max(points)
    _same_width_plan(res.plan, free.plan)
    _same_weights(tmp_path / "capped", tmp_path / "free")


def test_llm_pruner_cli_under_the_cap(bf16_checkpoint, tmp_path, one_thread):
    d = bf16_checkpoint
    free = _width(d / "model", tmp_path / "free", d / "calib.txt")
    r = run_cli("prune", str(d / "model"), "--method", "llm-pruner", "--ratio", "0.2", "--samples", "4", "--calib", str(d / "calib.txt"),
                "--seq-len", "32", "--windows", "8", "--device", "cpu", "--max-memory", f"{free.loaded.adapter.total_params() / 2**30:.9f}",
                "--out", str(tmp_path / "capped"), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "GiB brought in; peak resident" in r.stdout
    _same_width_plan(*(json.loads((tmp_path / o / "plan.json").read_text()) for o in ("capped", "free")))


def test_llm_pruner_refuses_a_router_loss_under_the_cap(tmp_path):
    """A MoE checkpoint whose loss adds the router's auxiliary loss: the layer-by-layer pass cannot compute it."""
    family_model("mixtral", output_router_logits=True).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    with pytest.raises(pk.PrunekitError, match="output_router_logits") as e:
        _width(tmp_path / "model", tmp_path / "o", tmp_path / "calib.txt", max_memory=1.0)
    assert "\n" not in str(e.value) and "`max_memory`" in str(e.value) and not (tmp_path / "o").exists()
