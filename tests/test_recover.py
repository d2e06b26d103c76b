"""LoRA recovery: training lowers the loss, merging keeps the outputs, the run resumes, the result reloads."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint, tiny_model, tiny_tokenizer
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune_width
from prunekit.pipeline.recover import recover
from prunekit.pipeline.recover_checkpoint import CKPT
from prunekit.pipeline.recover_config import RecoverConfig
from prunekit.pipeline.recover_train import attach_lora, lora_targets, merge_lora, train_lora

pytestmark = pytest.mark.usefixtures("one_thread")


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
    loaded = prune_width(loaded, WidthConfig(ratio=0.15, importance="param_first", samples=4), CalibConfig(source=text_file, seq_len=32),
                out=root / "out").loaded
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
    loaded = prune_width(loaded, WidthConfig(ratio=0.15, importance="l2"), CalibConfig(source=text_file, seq_len=32)).loaded
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
    assert (tmp_path / "cut" / CKPT / "state.json").exists()
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


class _Stop(Exception):
    pass


def _stop_at(step):
    def progress(stage, done, total, info):
        if stage == "recover" and done == step:
            raise _Stop

    return progress


def _same_weights(dir_a, dir_b):
    a = load_model(str(dir_a), device="cpu").model.state_dict()
    b = load_model(str(dir_b), device="cpu").model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recover_checkpoint_holds_no_pickle(pruned_dir, text_file, tmp_path, monkeypatch):
    """The checkpoint is safetensors (LoRA weights, AdamW's per-parameter tensors) plus JSON, and a resume
    with every unpickler disabled gives the uninterrupted run's losses and weights."""
    cfg = _cfg(text_file, epochs=2, windows=8, max_steps=6, save_every=2)
    whole = recover(pruned_dir, cfg, tmp_path / "whole", device="cpu")
    with pytest.raises(_Stop):
        recover(pruned_dir, cfg, tmp_path / "cut", device="cpu", progress=_stop_at(5))
    ckpt = tmp_path / "cut" / CKPT
    assert sorted(p.name for p in ckpt.rglob("*")) == ["state-000000004.safetensors", "state.json"]
    meta = json.loads((ckpt / "state.json").read_text())
    assert meta["step"] == 4 and meta["tensors"] == "state-000000004.safetensors" and meta["losses"] == whole["losses"][:4]
    tensors = load_file(ckpt / meta["tensors"])
    n = 2 * len(lora_targets(load_model(str(pruned_dir), device="cpu").adapter))  # lora_A and lora_B of each target
    lora = sorted(k for k in tensors if k.startswith("lora."))
    assert len(lora) == n and all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in lora)
    assert set(tensors) - set(lora) == {f"optimizer.state.{i}.{name}" for i in range(n) for name in ("exp_avg", "exp_avg_sq", "step")}
    assert all(tensors[f"optimizer.state.{i}.step"].item() == 4.0 for i in range(n))
    (group,) = meta["optimizer"]["param_groups"]
    assert group["params"] == list(range(n)) and group["lr"] == cfg.lr and group["betas"] == [0.9, 0.999]

    def unpickle(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, unpickle)
    resumed = recover(pruned_dir, cfg, tmp_path / "cut", device="cpu")
    assert resumed["resumed_from_step"] == 4 and resumed["losses"] == whole["losses"]
    assert _same_weights(tmp_path / "whole", tmp_path / "cut")


def test_recover_refuses_an_old_pickle_checkpoint(pruned_dir, text_file, tmp_path):
    (tmp_path / "old" / CKPT).mkdir(parents=True)
    torch.save({"step": 2}, tmp_path / "old" / CKPT / "state.pt")
    with pytest.raises(PrunekitError, match=r"older prunekit \(state.pt, a pickle\), which is not read"):
        recover(pruned_dir, _cfg(text_file, max_steps=2), tmp_path / "old", device="cpu")


KILLER = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    from prunekit.pipeline import recover as rec, recover_checkpoint as ckpt
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    progress = None
    if args["kill"] == "commit":  # SIGKILL once step 4's tensors file is in place, before state.json names it
        real = ckpt.write_json_atomic

        def commit(path, data):
            if data.get("step") == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, data)

        ckpt.write_json_atomic = commit
    else:  # SIGKILL during step 5, after step 4's checkpoint
        def progress(stage, done, total, info):
            if stage == "recover" and done == 5:
                os.kill(os.getpid(), signal.SIGKILL)
    rec.recover(args["src"], rec.RecoverConfig(**args["cfg"]), args["out"], device="cpu", progress=progress)
''')


@pytest.mark.subprocess
def test_recover_resumes_after_kill_9_to_the_same_result(pruned_dir, text_file, tmp_path):
    """kill -9 in the middle of writing a checkpoint, resume, kill -9 again between checkpoints, resume:
    the same losses and weights as an uninterrupted run."""
    cfg = _cfg(text_file, epochs=2, windows=8, max_steps=6, save_every=2)
    whole = recover(pruned_dir, cfg, tmp_path / "whole", device="cpu")
    out = tmp_path / "killed"
    for kill, step, files in (("commit", 2, ["state-000000002.safetensors", "state-000000004.safetensors", "state.json"]),
                              ("step", 4, ["state-000000004.safetensors", "state.json"])):
        args = {"kill": kill, "src": str(pruned_dir), "out": str(out), "cfg": cfg.as_dict()}
        res = subprocess.run([sys.executable, "-c", KILLER, json.dumps(args)], capture_output=True, text=True, timeout=300,
                             check=False)
        assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
        assert json.loads((out / CKPT / "state.json").read_text())["step"] == step
        assert sorted(p.name for p in (out / CKPT).iterdir()) == files
    resumed = recover(pruned_dir, cfg, out, device="cpu")
    assert resumed["resumed_from_step"] == 4 and resumed["losses"] == whole["losses"]
    assert _same_weights(tmp_path / "whole", out)


def test_recover_refuses_bad_inputs(pruned_dir, text_file, tmp_path):
    with pytest.raises(PrunekitError, match="not a prunekit output directory"):
        recover(tmp_path, _cfg(text_file), tmp_path / "x")
    with pytest.raises(PrunekitError, match="`out` is the input"):
        recover(pruned_dir, _cfg(text_file), pruned_dir)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(PrunekitError, match="already exists"):
        recover(pruned_dir, _cfg(text_file), tmp_path / "full")
    for kw, flag in (({"epochs": 0}, "`epochs`"), ({"lora_r": 0}, "`lora_r`"), ({"lr": -1.0}, "`lr`"), ({"max_steps": 0}, "`max_steps`")):
        with pytest.raises(PrunekitError, match=flag):
            _cfg(text_file, **kw)
