"""LLM-Pruner's gradient pass is journaled and resumable (issue 7): same plan bytes as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import make_tiny_workspace, run_cli
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.journal import STATE_NAME
from prunekit.methods.width.options import WidthConfig
from prunekit.pipeline.load import load_model
from prunekit.pipeline.prune import prune_width


class Killed(Exception):
    pass


def _kill_after(n: int):
    def progress(stage, done, total, *rest):
        if stage == "gradients" and done == n:
            raise Killed

    return progress


@pytest.mark.parametrize("importance", ["param_first", "param_mix"])  # with and without the Fisher diagonal
def test_interrupted_gradient_pass_resumes_to_the_same_plan(tmp_path, importance):
    model_dir, calib = make_tiny_workspace(tmp_path, "qwen2")
    cal = CalibConfig(source=str(calib), seq_len=16, windows=None, batch_size=2)
    width = WidthConfig(ratio=0.2, importance=importance, samples=6)
    prune_width(load_model(str(model_dir), device="cpu"), width, cal, out=tmp_path / "ref")
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        prune_width(load_model(str(model_dir), device="cpu"), width, cal, out=out, progress=_kill_after(4))
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    points = [r["samples"] for r in lines[1:]]
    assert points and points[0] == 1 and max(points) <= 4 and (out / STATE_NAME).exists()
    assert not (out / "plan.json").exists()
    res = prune_width(load_model(str(model_dir), device="cpu"), width, cal, out=out, resume=True)
    assert res.timing["resumed_samples"] == max(points)
    assert (out / "plan.json").read_bytes() == (tmp_path / "ref" / "plan.json").read_bytes()
    assert not (out / STATE_NAME).exists() and (out / "journal.jsonl").exists()  # the final dir keeps the journal only


def test_resume_refuses_other_options_and_a_broken_state(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    cal = CalibConfig(source=str(calib), seq_len=16, windows=None, batch_size=2)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        prune_width(load_model(str(model_dir), device="cpu"), WidthConfig(ratio=0.2, samples=5), cal, out=out,
                    progress=_kill_after(3))
    with pytest.raises(PrunekitError, match="window recipe differ"):
        prune_width(load_model(str(model_dir), device="cpu"), WidthConfig(ratio=0.2, samples=6), cal, out=out, resume=True)
    with pytest.raises(PrunekitError, match="method options differ"):
        prune_width(load_model(str(model_dir), device="cpu"), WidthConfig(ratio=0.2, samples=5, aggregate="max"), cal,
                    out=out, resume=True)
    (out / STATE_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(PrunekitError, match="gradient state .* cannot be read"):
        prune_width(load_model(str(model_dir), device="cpu"), WidthConfig(ratio=0.2, samples=5), cal, out=out, resume=True)


@pytest.mark.subprocess
def test_sigkill_during_the_gradient_pass_then_resume(tmp_path):
    """A real ``prunekit prune --method llm-pruner`` killed with SIGKILL after two journaled points."""
    model_dir, calib = make_tiny_workspace(tmp_path, layers=6)
    calib.write_text(calib.read_text() * 12, encoding="utf-8")
    common = ["prune", str(model_dir), "--method", "llm-pruner", "--ratio", "0.2", "--calib", str(calib),
              "--seq-len", "32", "--samples", "300", "--importance", "param_mix"]
    ref = run_cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # header + 2 points
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [json.loads(x)["samples"] for x in journal.read_text().splitlines()[1:] if x.strip().endswith("}")]
    assert 2 <= len(done) and max(done) < 300, "the kill came too late to test resuming"
    assert not (out / "plan.json").exists()
    r = run_cli(*common, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed the gradient pass after" in r.stdout + r.stderr
    assert (out / "plan.json").read_bytes() == (tmp_path / "ref" / "plan.json").read_bytes()
