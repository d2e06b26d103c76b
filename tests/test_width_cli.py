"""``prunekit prune --method llm-pruner`` and ``prunekit recover`` from the command line; bad input
gives one line and exit code 2."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import make_tiny_workspace, run_cli
from prunekit.cli.main import main as cli_main
from prunekit.models.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wcli")
    model_dir, calib = make_tiny_workspace(root, "qwen2")
    return root, str(model_dir), str(calib)


def _main(monkeypatch, capsys, *args):
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prunekit", *args])
    code = 0
    try:
        cli_main()
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_eval_recover_end_to_end(workspace, monkeypatch, capsys):
    root, model_dir, calib = workspace
    out, rec = root / "pruned", root / "recovered"
    code, stdout, _ = _main(monkeypatch, capsys, "prune", model_dir, "--method", "llm-pruner", "--ratio", "0.15",
                            "--importance", "element2", "--calib", calib, "--seq-len", "32", "--samples", "4", "--out", str(out))
    assert code == 0, stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "llm-pruner" and plan["options"]["importance"] == "element2"
    assert plan["calibration"]["windows"] == 4 and plan["calibration"]["seq_len"] == 32
    assert "KV heads" in stdout
    code, stdout, _ = _main(monkeypatch, capsys, "eval", str(out), "--data", calib, "--seq-len", "32", "--windows", "2")
    assert code == 0 and f"{plan['params_after']:,} parameters" in stdout
    code, stdout, err = _main(monkeypatch, capsys, "recover", str(out), "--out", str(rec), "--data", calib, "--seq-len", "32",
                              "--max-steps", "2", "--eval-data", calib, "--eval-seq-len", "32", "--eval-windows", "2")
    assert code == 0, err
    assert "perplexity before" in stdout and "loss" in stdout
    assert json.loads((rec / "recover.json").read_text())["steps"] == 2


@pytest.mark.parametrize("args,message", [
    (["--ratio", "0.6"], "would remove every KV group (all heads) of layer"),
    (["--ratio", "0.1", "--layers", "2:9"], "--layers 2:9 is out of range for a model of 4 layers"),
    (["--ratio", "0.1", "--layers", "1-3"], "--layers '1-3' is not START:END"),
    (["--ratio", "0.1", "--importance", "taylor"], "--importance 'taylor' is not known"),
    (["--remove", "2"], "--remove counts blocks"),
    (["--ratio", "0.3", "--strategy", "channel", "--layers", "1:3"], "--layers applies to --strategy block only"),
])
def test_bad_input_one_line_exit_2(workspace, monkeypatch, capsys, args, message):
    root, model_dir, calib = workspace
    code, _, err = _main(monkeypatch, capsys, "prune", model_dir, "--method", "llm-pruner", *args, "--calib", calib,
                         "--seq-len", "32", "--out", str(root / "bad"))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in err.replace("\n", " "), err
    assert not (root / "bad").exists()


def test_dtype_whose_gradients_overflow_is_refused(tmp_path):
    """A float16 model whose logits overflow: the gradients cannot be used; one line, exit 2 (in a real process)."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(3e4)
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "c.txt").write_text("some calibration text for the tiny model. " * 60)
    proc = run_cli("prune", str(tmp_path / "m"), "--method", "llm-pruner", "--ratio", "0.1", "--dtype", "float16",
                   "--device", "cpu", "--calib", str(tmp_path / "c.txt"), "--seq-len", "16", "--samples", "2",
                   "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "float16" in errors[0] and "--dtype float32" in proc.stderr
    assert "Traceback" not in proc.stderr
