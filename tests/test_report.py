"""The run report: ``prune`` writes OUT/report.md with the two figures, ``prunekit report OUT`` rebuilds it,
and any plan (a width plan, a plan without steps) renders."""

from __future__ import annotations

import copy

import pytest

from prunekit.data.calibration import CalibConfig
from prunekit.evaluation.report import LAYER_MAP_PNG, REPORT, TRAJECTORY_PNG, block_map, render_report
from prunekit.methods.options import DepthConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from prunekit.pipeline import prune as api
from prunekit.plan.schema import read_plan


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    calib = root / "calib.txt"
    calib.write_text((TINY_TEXT + "\n\n") * 30)
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=6), tiny_tokenizer())
    api.prune(loaded, DepthConfig(ratio=0.3), CalibConfig(source=str(calib), seq_len=24, windows=4, batch_size=2), out=root / "out")
    return root / "out"


def _png_size(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return img.shape[1], img.shape[0]


def test_prune_writes_the_report(run_dir):
    plan = read_plan(run_dir / "plan.json")
    text = (run_dir / REPORT).read_text()
    assert f"![layer map]({LAYER_MAP_PNG})" in text and f"({TRAJECTORY_PNG})" in text
    for name in (LAYER_MAP_PNG, TRAJECTORY_PNG):
        w, h = _png_size(run_dir / name)
        assert w > 300 and h > 150
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == len(plan["removed"]) + 1  # the dense model, then one row per step
    for step, row in zip(plan["removed"], rows[1:]):
        assert step["unit"] in row and f"{step['value']:.3f}" in row
    assert f"{plan['ratio_removed']:.2%}" in text


def test_cli_report_rebuilds_it(run_dir):
    from typer.testing import CliRunner

    from prunekit.cli.main import app

    before = (run_dir / REPORT).read_text()
    for name in (REPORT, LAYER_MAP_PNG, TRAJECTORY_PNG):
        (run_dir / name).unlink()
    res = CliRunner().invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / REPORT).read_text() == before
    assert (run_dir / LAYER_MAP_PNG).is_file() and (run_dir / TRAJECTORY_PNG).is_file()


def test_block_map_marks_removal_steps_and_width(run_dir):
    plan = read_plan(run_dir / "plan.json")
    n, cells = block_map(plan)
    assert n == 6
    for step, s in enumerate(plan["removed"]):
        for b in s["blocks"]:
            assert cells[("attn" if b % 2 == 0 else "mlp", b // 2)]["removed_at"] == step + 1
    width = copy.deepcopy(plan)
    width["removed"] = []
    width["width"] = {"strategy": "block", "hidden": None,
                      "layers": [{"layer": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 48}]}
    _, cells = block_map(width)
    assert cells[("attn", 2)]["kept"] == 0.5 and cells[("mlp", 2)]["kept"] == 0.5 and cells[("mlp", 1)]["kept"] == 1.0


def test_width_plan_without_steps_renders(run_dir, tmp_path):
    plan = read_plan(run_dir / "plan.json")
    plan["removed"], plan["method"] = [], "llm-pruner"
    plan["width"] = {"strategy": "block", "hidden": None,
                     "layers": [{"layer": i, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 48} for i in (1, 2, 3)]}
    path = render_report(plan, tmp_path / "w")
    text = path.read_text()
    assert not (tmp_path / "w" / TRAJECTORY_PNG).exists() and TRAJECTORY_PNG not in text
    assert "| 2 | 2/4 | 1/2 | 48/96 |" in text
