"""``--device-map``: a checkpoint split over devices by accelerate, each block stepped on its own device.

This machine has only the CPU, so a real split (two or more accelerators; a cpu + cuda map is
refused, as accelerate would offload the cpu part) is not run here: the tests check that a map on the CPU gives the plan of a run
without it, byte for byte; the engine's per-block device logic with ``meta`` standing in for a second
device (layer inputs kept once per device, states moved before each block); and every refusal.
"""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from conftest import random_windows
from helpers import CALIB_TEXT, run_cli
from prunekit.core.errors import PrunekitError
from prunekit.engine.runner import Engine, block_devices, head_device
from prunekit.models.contract import Block
from prunekit.models.loading import read_device_map
from prunekit.models.tiny import save_tiny_checkpoint, tiny_model

LAYERS = 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("devmap")
    save_tiny_checkpoint(d / "model", "llama", num_hidden_layers=LAYERS)
    (d / "calib.txt").write_text(CALIB_TEXT, encoding="utf-8")
    full = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    full |= {f"model.layers.{i}": "cpu" for i in range(LAYERS)}
    (d / "map.json").write_text(json.dumps(full), encoding="utf-8")
    return d


def _prune(d, out, method="blockpruner", **depth):
    calib = pk.CalibConfig(source=str(d / "calib.txt"), seq_len=32, windows=6, batch_size=2)
    return pk.prune(str(d / "model"), pk.DepthConfig(method=method, remove=3, **depth), calib, out=out)


@pytest.mark.parametrize("method", ["blockpruner", "shortgpt"])
def test_a_map_on_the_cpu_gives_the_plan_of_a_run_without_it(ckpt, tmp_path, one_thread, method):
    _prune(ckpt, tmp_path / "plain", method, candidate_batch=2)
    ref = (tmp_path / "plain" / "plan.json").read_bytes()
    for name, dm in (("auto", "auto"), ("file", str(ckpt / "map.json")), ("inline", '{"": "cpu"}')):
        res = _prune(ckpt, tmp_path / name, method, candidate_batch=2, device_map=dm)
        assert (tmp_path / name / "plan.json").read_bytes() == ref, name
        assert res.loaded.info["devices"] == ["cpu"]
        timing = json.loads((tmp_path / name / "timing.json").read_text())
        assert timing["runtime_options"]["device_map"] == dm
    # the pruned output written from the mapped run loads back as the plain one
    a, b = pk.load_model(str(tmp_path / "plain"), device="cpu"), pk.load_model(str(tmp_path / "file"), device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_evaluation_with_a_map_gives_the_values_without_it(ckpt):
    args = (str(ckpt / "model"), [str(ckpt / "calib.txt")], 32, 4, 2)
    assert pk.evaluate(*args, device="cpu")["perplexity"] == pk.evaluate(*args, device_map=str(ckpt / "map.json"))["perplexity"]


def test_each_block_runs_on_the_device_of_its_weights(one_thread):
    """``meta`` stands in for a second device: layers 2.. are moved there; the state must follow them."""
    model = tiny_model("llama", num_hidden_layers=LAYERS)
    loaded = pk.wrap_model(model)
    engine = Engine(loaded.adapter, random_windows(4, 16), batch_size=2, cache_bytes=0)
    assert engine.devices == [torch.device("cpu")] * (2 * LAYERS) and engine.head_device == torch.device("cpu")
    meta = torch.device("meta")
    for i in range(2, LAYERS):
        loaded.adapter.layers[i].to(meta)
    assert block_devices(loaded.adapter) == [torch.device("cpu")] * 4 + [meta] * (2 * LAYERS - 4)
    engine.devices = block_devices(loaded.adapter)
    captured = loaded.adapter.capture_inputs(engine.batches[0])[1]
    kwargs = engine._per_layer_device(captured)
    cos = [kw["position_embeddings"][0] for kw in kwargs]
    assert [c.device.type for c in cos] == ["cpu", "cpu", "meta", "meta"]
    assert cos[2] is cos[3]  # one copy per device, shared by the layers there
    engine._inputs[0] = (engine._inputs[0][0], kwargs)
    h = engine.run(0, engine.h0(0), 0, engine.num_blocks, frozenset())
    assert h.device == meta and h.shape == engine.h0(0).shape
    (out, kept), = engine.run_group(0, [(0, engine.h0(0), frozenset({1}), (3, 5))])
    assert out.device == meta and kept[3].device.type == "cpu" and kept[5].device == meta


def test_a_block_split_over_devices_or_offloaded_is_refused():
    model = tiny_model("llama", num_hidden_layers=LAYERS)
    adapter = pk.wrap_model(model).adapter
    adapter.layers[1].input_layernorm.to("meta")  # the norm of attn 1 apart from its attention
    with pytest.raises(PrunekitError, match="attn 1 has weights on several devices"):
        block_devices(adapter)
    adapter.layers[1].to("meta")  # what accelerate leaves where it offloads a module
    with pytest.raises(PrunekitError, match="attn 1 has its weights on the meta device"):
        Engine(adapter, random_windows(2, 8), cache_bytes=0)
    model = tiny_model("llama", num_hidden_layers=LAYERS)
    adapter = pk.wrap_model(model).adapter
    adapter.remove_block(Block(2))
    assert block_devices(adapter)[2] is None and head_device(adapter) == torch.device("cpu")


def test_a_map_is_read_from_json_and_its_devices_checked(tmp_path):
    assert read_device_map("auto") == "auto"
    assert read_device_map('{"": "cpu"}') == {"": "cpu"}
    (tmp_path / "m.json").write_text('{"model": "cpu", "lm_head": "cpu"}')
    assert read_device_map(str(tmp_path / "m.json")) == {"model": "cpu", "lm_head": "cpu"}
    for bad, text in (('{"": "disk"}', "not a device"), ("[1]", "JSON object"), ("{nope", "not valid JSON"),
                      (str(tmp_path / "none.json"), "not auto")):
        with pytest.raises(PrunekitError, match=text):
            read_device_map(bad)
    if torch.cuda.device_count() < 8:
        with pytest.raises(PrunekitError, match="CUDA device"):
            read_device_map('{"": 7}')


def _one_line_refusal(r, out, flag: str) -> str:
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert flag in errors[0], errors[0]
    assert not out.exists()
    return errors[0]


REFUSALS = {
    "max-memory": (["--max-memory", "1"], {}, "--max-memory"),
    "taylor": (["--method", "taylor"], {}, "--method"),
    "llm-pruner": (["--method", "llm-pruner", "--ratio", "0.2"], {}, "llm-pruner"),
    "ranks": ([], {"WORLD_SIZE": "2"}, "torchrun"),
    "device": (["--device", "cpu"], {}, "--device"),
    "absent-gpu": (["--device-map", '{"": "cuda:3"}'], {}, "CUDA device"),
    "uncovered": (["--device-map", '{"model.embed_tokens": "cpu", "lm_head": "cpu"}'], {}, "no device for"),
    "unknown": (["--device-map", '{"model.layer.0": "cpu", "": "cpu"}'], {}, "does not have"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_exit_2_and_write_nothing(ckpt, tmp_path, case):
    extra, env, flag = REFUSALS[case]
    dm = [] if "--device-map" in extra else ["--device-map", "auto"]
    count = [] if "--ratio" in extra else ["--remove", "2"]
    out = tmp_path / "o"
    r = run_cli("prune", str(ckpt / "model"), "--calib", str(ckpt / "calib.txt"), "--seq-len", "32", "--windows", "2",
                *count, *dm, *extra, "--out", str(out), env=env)
    error = _one_line_refusal(r, out, flag)
    assert "--device-map" in error


def test_a_pruned_output_with_a_map_is_refused(ckpt, tmp_path):
    _prune(ckpt, tmp_path / "pruned")
    out = tmp_path / "again"
    r = run_cli("prune", str(tmp_path / "pruned"), "--calib", str(ckpt / "calib.txt"), "--seq-len", "32", "--windows", "2",
                "--remove", "1", "--device-map", "auto", "--out", str(out))
    assert "pruned output" in _one_line_refusal(r, out, "--device-map")
    r = run_cli("eval", str(tmp_path / "pruned"), "--data", str(ckpt / "calib.txt"), "--seq-len", "32", "--windows", "2",
                "--device-map", "auto")
    assert "pruned output" in _one_line_refusal(r, tmp_path / "nothing", "--device-map")
