"""The command line: help text, an end-to-end run on a tiny model, refused inputs, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import make_tiny_workspace, run_cli, run_cli_fresh
from prunekit.cli.console import render_error
from prunekit.cli.main import COMMANDS, _command
from prunekit.core.errors import PrunekitError
from prunekit.methods.options import DepthConfig
from prunekit.methods.width.options import WidthConfig


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws")
    model_dir, calib = make_tiny_workspace(tmp)
    return tmp, model_dir, calib


@pytest.mark.subprocess
def test_help_lists_commands_and_options():
    """In a fresh interpreter (``python -m prunekit.cli``), as a shell runs it; the other CLI tests run in-process."""
    r = run_cli_fresh("--help")
    assert r.returncode == 0
    for cmd in ("prune", "eval", "info", "demo"):
        assert cmd in r.stdout
    r = run_cli("prune", "--help")
    assert r.returncode == 0
    for opt in ("--method", "--remove", "--ratio", "--blocks-kind", "--calib", "--seq-len", "--windows", "--cache-gb", "--resume",
                "--overwrite"):
        assert opt in r.stdout


def test_prune_eval_info_end_to_end(ws):
    tmp, model_dir, calib = ws
    out = tmp / "e2e"
    r = run_cli("prune", str(model_dir), "--remove", "2", "--calib", str(calib), "--seq-len", "16", "--windows", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["removed"]) == 2
    assert "step 1: removed" in r.stderr
    r = run_cli("eval", str(out), "--data", str(calib), "--seq-len", "16", "--windows", "2")
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and f"{plan['params_after']:,}" in r.stdout
    r = run_cli("info", str(out))
    assert r.returncode == 0 and "removed" in r.stdout


BAD = [
    (["prune", "no-such-model", "--remove", "1"], "is not an embedded model"),
    (["prune", "{model}", "--remove", "8"], "would remove every mix block"),
    (["prune", "{model}", "--ratio", "1.5"], "--ratio 1.5 is outside (0, 1)"),
    (["prune", "{model}", "--ratio", "0"], "--ratio 0.0 is outside (0, 1)"),
    (["prune", "{model}", "--remove", "1", "--windows", "0"], "--windows 0 asks for no windows"),
    (["prune", "{model}", "--remove", "1", "--seq-len", "100000"], "above the model's context"),
    (["prune", "{model}", "--remove", "1", "--calib", "{empty}"], "is empty"),
    (["prune", "{model}", "--remove", "1", "--calib", "{latin}"], "is not UTF-8"),
    (["prune", "{model}", "--remove", "1", "--calib", "{short}", "--seq-len", "200"], "too short for one window"),
    (["prune", "{model}", "--remove", "1", "--method", "blockprunr"], "Did you mean 'blockpruner'"),
    (["prune", "{model}", "--remove", "1", "--blocks-kind", "heads"], "--blocks-kind 'heads' is not known"),
    (["prune", "{model}", "--remove", "1", "--dtype", "float8"], "--dtype 'float8' is not known"),
    (["prune", "{model}", "--remove", "1", "--candidate-batch", "0"], "--candidate-batch 0 is out of range"),
    (["prune", "{model}", "--remove", "1", "--device", "cuda:0"], "no CUDA device is visible"),
    (["prune", "{model}", "--remove", "1", "--out", "{afile}"], "is a file"),
    (["prune", "{model}", "--remove", "1", "--out", "{nonempty}"], "already exists and is not empty"),
    (["prune", "{unsupported}", "--remove", "1"], "Supported model types"),
    (["prune", "{truncated}", "--remove", "1"], "corrupted or truncated"),
    (["eval", "{model}", "--plan", "{badplan}"], "not valid JSON"),
    (["eval", "{model}", "--plan", "{twiceplan}"], "removed[1] removes attn 1 again (already removed at removed[0])"),
    (["eval", "{model}", "--plan", "{outsideplan}"], "removed[0] names block 99 (mlp 49), outside the model's"),
    (["eval", "{model}", "--plan", "{unorderedplan}"], "removed[0] is step 1, out of order (expected step 0)"),
    (["prune", "{model}", "--remove", "1", "--out", "/proc/prunekit-nope/out"], "cannot be created: '/proc'"),
    (["prune", "{model}", "--remove", "1", "--out", "{afile}/out"], "is not a directory"),
    (["compare", "{model}", "--out", "/proc/prunekit-nope/out"], "cannot be created: '/proc'"),
    (["prune", "{model}", "--ratio", "0.99", "--blocks-kind", "attn"], "or --blocks-kind mix"),
    (["prune", "{model}", "--ratio", "0.2", "--ratio-of", "params"], "--ratio-of 'params' is not known"),
    (["prune", "{model}", "--ratio", "0.2", "--method", "llm-pruner", "--ratio-of", "decoders"], "--ratio-of 'decoders' is not known"),
    (["prune", "{model}", "--ratio", "0.99", "--ratio-of", "decoder"], "of the decoder layers' parameters"),
    (["compare", "{model}", "--out", "{nonempty}/cmp", "--ratio-of", "all"], "--ratio-of 'all' is not known"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(ws, args, message):
    tmp, model_dir, calib = ws
    paths = _bad_inputs(tmp, model_dir)
    out = tmp / f"out-{abs(hash(message))}"
    full = [a.format(model=model_dir, **paths) for a in args]
    if "--out" not in full and full[0] == "prune":
        full += ["--out", str(out)]
    if "--calib" not in full and full[0] == "prune":
        full += ["--calib", str(calib), "--seq-len", full[full.index("--seq-len") + 1] if "--seq-len" in full else "16"]
    before = sorted(p.name for p in paths["nonempty_dir"].iterdir())
    r = run_cli(*full)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error")]) == 1
    assert not out.exists()
    assert sorted(p.name for p in paths["nonempty_dir"].iterdir()) == before


def _hand_plan(config: dict, steps: list[tuple[int, list[int]]]) -> dict:
    """A plan.json as a user might edit it by hand: well-formed, with the given (step, blocks) entries."""
    return {
        "prunekit_plan": 1, "method": "blockpruner", "options": {}, "calibration": {}, "width": None,
        "model": {"spec": "hand", "model_type": config["model_type"], "config": config, "weights_sha256": ""},
        "removed": [{"step": n, "unit": "hand", "blocks": b, "score": 0.0, "value": 0.0} for n, b in steps],
        "dense_value": 1.0, "params_before": 1, "params_after": 1, "ratio_removed": 0.0,
    }


def test_a_missing_option_is_one_usage_line_exit_2():
    r = run_cli("prune", "smollm2-135m")
    assert r.returncode == 2, r.stderr
    assert "Missing option '--out'" in r.stderr and "Traceback" not in r.stderr


def _bad_inputs(tmp, model_dir):
    import shutil

    d = tmp / "bad"
    if not d.exists():
        d.mkdir()
        (d / "empty.txt").write_text("")
        (d / "latin.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 40)
        (d / "short.txt").write_text("only a few words")
        (d / "afile").write_text("x")
        (d / "nonempty").mkdir()
        (d / "nonempty" / "keep.txt").write_text("keep me")
        (d / "bad-plan.json").write_text("{not json")
        cfg = json.loads((model_dir / "config.json").read_text())
        for name, steps in (("twice", [(0, [2]), (1, [2])]), ("outside", [(0, [99])]), ("unordered", [(1, [2]), (0, [3])])):
            (d / f"{name}-plan.json").write_text(json.dumps(_hand_plan(cfg, steps)))
        unsupported = d / "unsupported"
        shutil.copytree(model_dir, unsupported)
        cfg = json.loads((unsupported / "config.json").read_text())
        cfg["model_type"] = "bert-like-thing"
        (unsupported / "config.json").write_text(json.dumps(cfg))
        truncated = d / "truncated"
        shutil.copytree(model_dir, truncated)
        w = truncated / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return {
        "empty": str(d / "empty.txt"), "latin": str(d / "latin.txt"), "short": str(d / "short.txt"),
        "afile": str(d / "afile"), "nonempty": str(d / "nonempty"), "nonempty_dir": d / "nonempty",
        "badplan": str(d / "bad-plan.json"), "twiceplan": str(d / "twice-plan.json"),
        "outsideplan": str(d / "outside-plan.json"), "unorderedplan": str(d / "unordered-plan.json"),
        "unsupported": str(d / "unsupported"), "truncated": str(d / "truncated"),
    }


@pytest.mark.subprocess
def test_kill_then_resume_gives_the_uninterrupted_plan(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path, layers=8)
    common = ["prune", str(model_dir), "--remove", "10", "--calib", str(calib), "--seq-len", "32", "--windows", "12", "--batch-size", "2"]
    ref = run_cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # header + 2 steps
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = len(journal.read_text().splitlines()) - 1
    assert 2 <= steps_done < 10, "the kill came too late to test resuming"
    assert not (out / "plan.json").exists()
    r = run_cli(*common, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "plan.json").read_bytes() == (tmp_path / "ref" / "plan.json").read_bytes()
    timing = json.loads((out / "timing.json").read_text())
    assert timing["resumed_steps"] == steps_done


def test_resume_refuses_other_inputs(tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    out = tmp_path / "out"
    args = ["prune", str(model_dir), "--remove", "2", "--calib", str(calib), "--seq-len", "16", "--windows", "4", "--out", str(out)]
    assert run_cli(*args).returncode == 0
    r = run_cli(*args[:-2], "--out", str(out), "--resume", "--windows", "3")
    assert r.returncode == 2 and "calibration data or window recipe differ (windows)" in r.stderr
    r = run_cli(*[a if a != "2" else "3" for a in args], "--resume")
    assert r.returncode == 2 and "method options differ (remove)" in r.stderr
    r = run_cli(*args[:-2], "--out", str(tmp_path / "none"), "--resume")
    assert r.returncode == 2 and "no journal" in r.stderr


def test_candidate_batch_flag_gives_the_same_choices(ws, tmp_path):
    """``--candidate-batch 4`` (the accelerator path, forced on the CPU) removes the same blocks in the same order."""
    _, model_dir, calib = ws
    common = ["prune", str(model_dir), "--remove", "3", "--calib", str(calib), "--seq-len", "16", "--windows", "4"]
    plans = []
    for k, name in (("1", "one"), ("4", "four")):
        r = run_cli(*common, "--candidate-batch", k, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        plans.append(json.loads((tmp_path / name / "plan.json").read_text()))
        timing = json.loads((tmp_path / name / "timing.json").read_text())
        assert timing["runtime_options"]["candidate_batch"] == int(k)
    assert [s["unit"] for s in plans[0]["removed"]] == [s["unit"] for s in plans[1]["removed"]]
    for a, b in zip(plans[0]["removed"], plans[1]["removed"]):
        assert a["value"] == pytest.approx(b["value"], rel=1e-5)


def test_library_errors_name_options_and_the_cli_names_its_flags():
    with pytest.raises(PrunekitError) as err:
        DepthConfig(ratio=1.5)
    message = str(err.value)
    assert "--" not in message and "`ratio` 1.5 is outside (0, 1)" in message
    assert render_error(message, _command(["prune", "m"])).startswith("--ratio 1.5 is outside (0, 1)")
    with pytest.raises(PrunekitError) as err:
        WidthConfig(ratio=0.2, strategy="channel", global_=True)
    expected = "--global applies to --strategy block only. Drop --global, or use --strategy block."
    assert render_error(str(err.value), _command(["prune"])) == expected


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    r = run_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout and f" {command} [OPTIONS]" in r.stdout and "--help" in r.stdout


def test_demo_runs_its_method_and_blockpruner_beside_it(ws):
    """`prunekit demo` on a tiny model: budget-greedy's plan and, on the same calibration, BlockPruner's (both
    searched in bfloat16); one table of both, evaluated in float32 (the dense row equals a float32 run's)."""
    _, model_dir, _ = ws
    r = run_cli("demo", "--model", str(model_dir), "--windows", "2", "--seq-len", "32", "--eval-windows", "1",
                env={"OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    table = r.stdout[r.stdout.index("held-out perplexity"):]
    assert "searches in bfloat16" in r.stderr
    assert "budget-greedy: removed" in r.stdout and "blockpruner: removed" in r.stdout
    assert all(row in table for row in ("dense", "budget-greedy", "blockpruner"))

    def dense_cells(text):
        row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("dense "))
        return [c.strip() for c in row.split("│")]

    dense_row = dense_cells(table)
    r = run_cli("demo", "--model", str(model_dir), "--windows", "2", "--seq-len", "32", "--eval-windows", "1",
                "--method", "sleb", "--against", "none", "--search-dtype", "float32",
                env={"OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "searches in float32" in r.stderr and "sleb: removed" in r.stdout and "blockpruner: removed" not in r.stdout
    assert dense_cells(r.stdout) == dense_row  # evaluated in float32 whatever the search dtype
    r = run_cli("demo", "--model", str(model_dir), "--search-dtype", "float16")
    assert r.returncode == 2 and "--search-dtype 'float16'" in r.stderr
    r = run_cli("demo", "--model", str(model_dir), "--method", "llm-pruner")
    assert r.returncode == 2 and "depth methods" in r.stderr
