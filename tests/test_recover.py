"""LoRA recovery: training lowers the loss, merging keeps the outputs, the run resumes, the result reloads."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint, tiny_model, tiny_tokenizer
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune_width
from prunekit.pipeline.recover import CKPT, RecoverConfig, attach_lora, lora_targets, merge_lora, recover, train_lora


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text((TINY_TEXT + "\n\n") * 40)
    return str(path)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("pruned")
    save_tiny_checkpoint(root / "base", "qwen2")
    loaded = load_model(str(root / "base"), device="cpu")
    prune_width(loaded, WidthConfig(ratio=0.15, importance="param_first", samples=4), CalibConfig(source=text_file, seq_len=32),
                out=root / "out")
    return root / "out"


def _cfg(text_file, **kw):
    base = dict(data=text_file, epochs=1, seq_len=32, batch_size=2, lr=1e-2, eval_data=(text_file,), eval_windows=2,
                eval_seq_len=32, windows=12)
    return RecoverConfig(**(base | kw))


def _mean_loss(model, ids):
    with torch.no_grad():
        return float(sum(model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss for i in range(ids.shape[0])) / ids.shape[0])


def test_training_lowers_loss_and_merge_keeps_outputs(text_file):
    loaded = wrap_model(tiny_model("llama"), tiny_tokenizer())
    prune_width(loaded, WidthConfig(ratio=0.15, importance="l2"), CalibConfig(source=text_file, seq_len=32))
    ids = loaded.tokenizer((TINY_TEXT + "\n\n") * 4, return_tensors="pt")["input_ids"][0, :8 * 24].reshape(8, 24)
    before = _mean_loss(loaded.model, ids)
    cfg = _cfg(text_file, epochs=6)
    peft_model = attach_lora(loaded.model, loaded.adapter, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    res = train_lora(peft_model, ids, cfg)
    assert res.steps == 6 * 4 and len(res.losses) == 24
    after_unmerged = _mean_loss(peft_model, ids)
    assert after_unmerged < before - 0.5
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
    merged = merge_lora(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged, rtol=1e-4, atol=1e-4)


def test_lora_targets_are_the_seven_projections():
    loaded = wrap_model(tiny_model("qwen3"))
    names = lora_targets(loaded.adapter)
    assert len(names) == 7 * loaded.adapter.num_layers
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_recover_writes_a_reloadable_model(pruned_dir, text_file, tmp_path):
    out = tmp_path / "rec"
    rep = recover(pruned_dir, _cfg(text_file, windows=8, max_steps=3), out, device="cpu")
    assert rep["steps"] == 3 and rep["data"] == text_file
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "llm-pruner" and plan["recovery"]["steps"] == 3
    assert not (out / CKPT).exists()
    back = load_model(str(out), device="cpu")
    from prunekit.data.windows import build_windows
    from prunekit.evaluation.perplexity import perplexity

    w = build_windows(back.tokenizer, text_file, 32, 2)
    assert perplexity(back, w) == pytest.approx(rep["perplexity_after"][text_file], rel=1e-6)
    assert back.adapter.total_params() == plan["params_after"]


def test_recover_resumes_from_its_checkpoint(pruned_dir, text_file, tmp_path):
    cfg = _cfg(text_file, epochs=2, windows=8, max_steps=6, save_every=2)
    whole = recover(pruned_dir, cfg, tmp_path / "whole", device="cpu")

    class Stop(Exception):
        pass

    def stop_at_5(stage, done, total, info):
        if stage == "recover" and done == 5:
            raise Stop

    with pytest.raises(Stop):
        recover(pruned_dir, cfg, tmp_path / "cut", device="cpu", progress=stop_at_5)
    assert (tmp_path / "cut" / CKPT / "state.pt").exists()
    resumed = recover(pruned_dir, cfg, tmp_path / "cut", device="cpu")
    assert resumed["resumed_from_step"] == 4
    assert resumed["losses"] == whole["losses"]
    a = load_model(str(tmp_path / "whole"), device="cpu").model.state_dict()
    b = load_model(str(tmp_path / "cut"), device="cpu").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Other options: the checkpoint is refused instead of mixed in.
    with pytest.raises(Stop):
        recover(pruned_dir, cfg, tmp_path / "cut2", device="cpu", progress=stop_at_5)
    with pytest.raises(PrunekitError, match="other inputs or options"):
        recover(pruned_dir, _cfg(text_file, epochs=2, windows=8, max_steps=6, save_every=2, lr=2e-2), tmp_path / "cut2", device="cpu")


def test_recover_refuses_bad_inputs(pruned_dir, text_file, tmp_path):
    with pytest.raises(PrunekitError, match="not a prunekit output directory"):
        recover(tmp_path, _cfg(text_file), tmp_path / "x")
    with pytest.raises(PrunekitError, match="`out` is the input"):
        recover(pruned_dir, _cfg(text_file), pruned_dir)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(PrunekitError, match="already exists"):
        recover(pruned_dir, _cfg(text_file), tmp_path / "full")
    for kw, flag in (({"epochs": 0}, "--epochs"), ({"lora_r": 0}, "--lora-r"), ({"lr": -1.0}, "--lr"), ({"max_steps": 0}, "--max-steps")):
        with pytest.raises(PrunekitError, match=flag):
            _cfg(text_file, **kw)
