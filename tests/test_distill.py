"""Recovery by distillation (issue 16): the KL against a float64 reference, a step lowers it, kill -9 resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.options import DepthConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint, tiny_model, tiny_tokenizer
from prunekit.pipeline.distill import Teacher, distill_loss, kl_full, kl_topk
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune
from prunekit.pipeline.recover import recover
from prunekit.pipeline.recover_checkpoint import CKPT
from prunekit.pipeline.recover_config import RecoverConfig
from prunekit.pipeline.recover_train import attach_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text((TINY_TEXT + "\n\n") * 40)
    return str(path)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, text_file):
    """A tiny llama saved as a base checkpoint, depth-pruned by 2 blocks (the plan names the base as teacher)."""
    root = tmp_path_factory.mktemp("pruned")
    save_tiny_checkpoint(root / "base", "llama")
    loaded = load_model(str(root / "base"), device="cpu")
    prune(loaded, DepthConfig(remove=2), CalibConfig(source=text_file, seq_len=32, windows=4, batch_size=2), out=root / "out")
    return root / "out"


def _cfg(text_file, **kw):
    base = dict(data=text_file, epochs=2, seq_len=32, batch_size=2, lr=1e-2, eval_data=(text_file,), eval_windows=2,
                eval_seq_len=32, windows=8, max_steps=6, save_every=2, distill=True)
    return RecoverConfig(**(base | kw))


def test_kl_equals_a_float64_reference_and_topk_bounds_it():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 40, generator=g) * 3, torch.randn(2, 5, 40, generator=g) * 3
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    tlogp = torch.log_softmax(t, -1)
    p, logq = tlogp.double().exp(), torch.log_softmax(s.double(), -1)
    ref = ((p * (tlogp.double() - logq)).sum(-1) * mask).sum() / mask.sum()
    assert float(kl_full(s, tlogp, mask)) == pytest.approx(float(ref), rel=1e-5)
    vals, idx = tlogp.topk(8, -1)
    top = float(kl_topk(s, (idx, vals), mask))
    assert 0 < top < float(ref)  # the (K+1)-outcome KL never exceeds the full one
    vals, idx = tlogp.topk(40, -1)  # every token: the same KL
    assert float(kl_topk(s, (idx, vals), mask)) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("topk", [0, 16])
def test_a_distillation_step_lowers_the_kl_on_its_batch(topk):
    teacher_model = tiny_model("llama", num_hidden_layers=4)
    student = wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer())  # same seed: the same weights
    student.adapter.remove_block(student.adapter.blocks("attn")[1])  # then pruned
    teacher = Teacher(teacher_model, topk=topk)
    ids = student.tokenizer((TINY_TEXT + "\n\n") * 4, return_tensors="pt")["input_ids"][0, :4 * 24].reshape(4, 24)
    cfg = _cfg("unused", lr=5e-3)
    model = attach_lora(student.model, student.adapter, cfg)
    loss = distill_loss(teacher, alpha=1.0)
    window_ids = torch.arange(4)
    model.eval()  # no dropout: the same function before and after the step
    before = loss(model, ids, ids.clone(), window_ids)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss(model, ids, ids.clone(), window_ids)
    assert float(before.detach()) > 0.01
    assert float(after) < float(before.detach()) * 0.95
    if topk:
        assert teacher.forwards == 4  # the second call read the cache


KILLER = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    from prunekit.pipeline import recover as rec
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])

    def progress(stage, done, total, info):  # SIGKILL during step 5, after step 4's checkpoint
        if stage == "recover" and done == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    rec.recover(args["src"], rec.RecoverConfig(**args["cfg"]), args["out"], device="cpu", progress=progress)
''')


@pytest.mark.subprocess
@pytest.mark.parametrize("extra", [{}, {"full": True, "distill_alpha": 0.5, "distill_topk": 8, "lr": 1e-3}])
def test_recover_distill_resumes_after_kill_9_to_the_same_result(pruned_dir, text_file, tmp_path, extra):
    cfg = _cfg(text_file, **extra)
    whole = recover(pruned_dir, cfg, tmp_path / "whole", device="cpu")
    assert whole["loss"] == "distill" and whole["mode"] == ("full" if extra else "lora")
    assert whole["last_loss"] < whole["first_loss"]
    out = tmp_path / "killed"
    args = {"src": str(pruned_dir), "out": str(out), "cfg": cfg.as_dict()}
    res = subprocess.run([sys.executable, "-c", KILLER, json.dumps(args)], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    state = json.loads((out / CKPT / "state.json").read_text())
    assert state["step"] == 4
    resumed = recover(pruned_dir, cfg, out, device="cpu")
    assert resumed["resumed_from_step"] == 4 and resumed["losses"] == whole["losses"]
    a = load_model(str(tmp_path / "whole"), device="cpu").model.state_dict()
    b = load_model(str(out), device="cpu").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_options_are_checked(text_file):
    with pytest.raises(PrunekitError, match="`distill_alpha`"):
        _cfg(text_file, distill_alpha=1.5)
    with pytest.raises(PrunekitError, match="`distill_topk`"):
        _cfg(text_file, distill_topk=-1)
