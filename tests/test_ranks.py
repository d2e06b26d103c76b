"""One search over several processes (torchrun, gloo on the CPU): the same plan as one process,
a killed rank stops the job, and ``--resume`` continues it to the same plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import make_tiny_workspace, run_cli

pytestmark = pytest.mark.subprocess  # every test here launches torchrun

BIN = Path(sys.executable).parent
# one thread per process on both sides: a candidate's arithmetic is then the same in every layout
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "--no-python", str(BIN / "prunekit"), *args]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    model_dir, calib = make_tiny_workspace(tmp, layers=8)
    common = ["prune", str(model_dir), "--remove", "6", "--calib", str(calib), "--seq-len", "32", "--windows", "12", "--batch-size", "2"]
    ref = run_cli(*common, "--out", str(tmp / "one"), env=ENV)
    assert ref.returncode == 0, ref.stderr
    return tmp, common


def test_two_ranks_write_the_plan_of_one_process(tiny):
    tmp, common = tiny
    r = subprocess.run(torchrun(*common, "--out", str(tmp / "two")), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp / "two" / "plan.json").read_bytes() == (tmp / "one" / "plan.json").read_bytes()
    assert "2 ranks" in r.stderr and r.stdout.count("wrote ") <= 1  # rank 0 alone reports
    assert "ranks: 2; counted work per rank" in r.stdout
    timing = json.loads((tmp / "two" / "timing.json").read_text())
    assert timing["ranks"] == 2 and len(timing["rank_work"]) == 2
    assert all(w["block_runs"] > 0 for w in timing["rank_work"])
    assert timing["work"]["total_macs"] == pytest.approx(sum(w["total_macs"] for w in timing["rank_work"]))
    one = json.loads((tmp / "one" / "timing.json").read_text())
    assert one["ranks"] == 1 and one["naive_macs"] == timing["naive_macs"]


def test_a_killed_rank_stops_the_job_and_resume_gives_the_same_plan(tiny):
    tmp, common = tiny
    out = tmp / "killed"
    proc = subprocess.Popen(torchrun(*common, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, **ENV))
    journal = out / "journal.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    killed = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
    assert len(killed) == 1
    killed[0].kill()
    output, _ = proc.communicate(timeout=120)
    steps_done = len(journal.read_text().splitlines()) - 1
    assert proc.returncode != 0
    assert 2 <= steps_done < 6, "the kill came too late to test resuming"
    assert not (out / "plan.json").exists()
    assert "another rank stopped" in output or "local_rank: 1" in output  # ours, or torchrun's summary naming rank 1
    r = subprocess.run(torchrun(*common, "--out", str(out), "--resume"), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "plan.json").read_bytes() == (tmp / "one" / "plan.json").read_bytes()
    assert json.loads((out / "timing.json").read_text())["resumed_steps"] == steps_done


def test_llm_pruners_gradient_pass_over_two_ranks_gives_the_plan_of_one_process(tiny):
    tmp, _ = tiny
    common = ["prune", str(tmp / "tiny-llama"), "--method", "llm-pruner", "--ratio", "0.2", "--calib", str(tmp / "calib.txt"),
              "--seq-len", "32", "--samples", "6"]
    one = run_cli(*common, "--out", str(tmp / "w1"), env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    r = subprocess.run(torchrun(*common, "--out", str(tmp / "w2")), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp / "w2" / "plan.json").read_bytes() == (tmp / "w1" / "plan.json").read_bytes()
    assert "gradients · 2 ranks" in r.stderr and r.stderr.count("wrote ") == 1  # rank 0 alone writes and reports
    assert json.loads((tmp / "w2" / "timing.json").read_text())["ranks"] == 2


def test_commands_that_do_not_spread_are_refused_under_torchrun_in_one_line(tiny):
    tmp, _ = tiny
    r = run_cli("recover", str(tmp / "one"), "--out", str(tmp / "r"),
                env=dict(ENV, WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "only prune and compare do" in r.stderr
    assert not (tmp / "r").exists()


def test_compare_spreads_its_methods_over_two_ranks_with_the_cells_of_one_process(tiny):
    tmp, _ = tiny
    common = ["compare", str(tmp / "tiny-llama"), "--methods", "sleb,shortgpt,blockpruner", "--ratios", "0.15,0.3",
              "--calib", str(tmp / "calib.txt"), "--seq-len", "32", "--windows", "4", "--eval-windows", "2", "--eval-seq-len", "32"]
    one = run_cli(*common, "--out", str(tmp / "c1"), env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    r = subprocess.run(torchrun(*common, "--out", str(tmp / "c2")), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stderr[-3000:]
    plans = sorted(p.name for p in (tmp / "c1" / "plans").iterdir())
    assert len(plans) == 6 and plans == sorted(p.name for p in (tmp / "c2" / "plans").iterdir())
    for name in plans:
        assert (tmp / "c2" / "plans" / name).read_bytes() == (tmp / "c1" / "plans" / name).read_bytes()
        a, b = (json.loads((tmp / c / "cells" / name).read_text()) for c in ("c1", "c2"))
        assert (a["units"], a["ppl"]) == (b["units"], b["ppl"])
    assert "rank 1: shortgpt" in r.stderr and (tmp / "c2" / "results.md").exists()


@pytest.mark.slow
def test_two_ranks_on_smollm2_write_the_plan_of_one_process(tmp_path):
    common = ["prune", "smollm2-135m", "--remove", "1", "--calib", "wiki", "--seq-len", "16", "--windows", "2",
              "--batch-size", "1", "--device", "cpu"]
    one = run_cli(*common, "--out", str(tmp_path / "one"), env=ENV, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(torchrun(*common, "--out", str(tmp_path / "two")), capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, **ENV))
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "plan.json").read_bytes() == (tmp_path / "one" / "plan.json").read_bytes()
    work = [w["total_macs"] for w in json.loads((tmp_path / "two" / "timing.json").read_text())["rank_work"]]
    assert min(work) > 0.5 * max(work)  # candidate i on rank i mod 2: the work is spread, not piled on one rank
