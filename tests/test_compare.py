"""``prunekit compare`` (issue 4): end to end on a tiny checkpoint; nested reuse; crash-safe re-runs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunekit.cli.main import app
from prunekit.core.errors import PrunekitError
from prunekit.core.journal import Journal
from prunekit.data.calibration import CalibConfig
from prunekit.methods import registry
from prunekit.methods.options import DepthConfig
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint
from prunekit.pipeline import prune as api
from prunekit.pipeline.compare import compare, parse_methods, parse_ratios
from prunekit.pipeline.compare_cells import Cell
from prunekit.pipeline.load import load_model
from prunekit.plan.schema import read_plan

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    ckpt = save_tiny_checkpoint(root / "tiny", "llama", num_hidden_layers=4)
    calib = root / "calib.txt"
    calib.write_text((TINY_TEXT + "\n\n") * 30, encoding="utf-8")
    held = root / "held.txt"
    held.write_text(("Held-out text: " + TINY_TEXT[::-1] + "\n\n") * 20, encoding="utf-8")
    return root, str(ckpt), str(calib), str(held)


def _calib(calib, windows=4):
    return CalibConfig(source=calib, seq_len=24, windows=windows, batch_size=2)


def test_compare_cli_end_to_end(setup):
    root, ckpt, calib, held = setup
    out = root / "cli"
    res = CliRunner().invoke(app, [
        "compare", ckpt, "--methods", "blockpruner,shortgpt,blockpruner/greedy+swap", "--ratios", "0.2,0.4",
        "--calib", calib, "--eval", f"{held},{calib}", "--windows", "4", "--seq-len", "24",
        "--eval-windows", "3", "--eval-seq-len", "24", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["search"], r["target_ratio"]) for r in rows] == [
        ("dense", "", "0"), ("blockpruner", "greedy", "0.2"), ("blockpruner", "greedy", "0.4"),
        ("shortgpt", "greedy", "0.2"), ("shortgpt", "greedy", "0.4"),
        ("blockpruner", "greedy+swap", "0.2"), ("blockpruner", "greedy+swap", "0.4"),
    ]
    loaded = load_model(ckpt, device="cpu")
    for r in rows[1:]:  # each cell reaches its ratio, and its held-out perplexity is its plan's
        assert float(r["ratio_removed"]) >= float(r["target_ratio"])
        plan = read_plan(out / "plans" / f"{Path(r['report']).parent.name}.json")
        ev = api.evaluate(loaded, [held], seq_len=24, windows=3, batch_size=4, plan=plan)
        assert float(r[f"ppl_{held}"]) == pytest.approx(ev["perplexity"][held], rel=1e-4, abs=1e-4)
    md = (out / "results.md").read_text()
    assert "| 0.4 | [blockpruner (greedy+swap)](reports/blockpruner__greedy-swap__r0.4/report.md) |" in md and f"{held} ppl" in md
    # each measured cell against the best other cell at its ratio, with a paired interval over the 3 windows
    assert "**Against the best other cell at the same ratio**" in md and f"{held}: 3" in md
    for r in rows[1:]:
        ratio, low, high = (float(r[f"vs_best_{held}{p}"]) for p in ("", "_low", "_high"))
        assert low <= ratio <= high and r[f"vs_best_{held}_other"]
        best = min(float(o[f"ppl_{held}"]) for o in rows[1:] if o["target_ratio"] == r["target_ratio"] and o is not r)
        assert ratio == pytest.approx(float(r[f"ppl_{held}"]) / best, rel=1e-3)
    assert rows[0][f"vs_best_{held}"] == ""  # the dense row has nothing to compare
    for name in ("ppl_vs_ratio.png", "layer_map.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    for r in rows[1:]:  # each cell links its own run report
        slug = r["method"] + ("" if r["search"] == "greedy" else "__greedy-swap")
        assert r["report"] == f"reports/{slug}__r{r['target_ratio']}/report.md"
        assert f"]({r['report']})" in md and (out / r["report"]).exists()
        assert (out / r["report"]).parent.joinpath("layer_map.png").read_bytes().startswith(PNG)
    # every cell's plan is a valid plan that reaches its ratio on the model it came from
    loaded = load_model(ckpt, device="cpu")
    for cell in sorted((out / "cells").glob("*__r*.json")):
        c = json.loads(cell.read_text())
        plan = read_plan(out / c["plan"])
        assert plan["ratio_removed"] == c["ratio_removed"] >= c["target_ratio"]
        ev = api.evaluate(loaded, [held], seq_len=24, windows=3, batch_size=4, plan=plan) if c["method"] == "shortgpt" else None
        if ev is not None:  # the same perplexity as compare measured with the blocks skipped
            assert ev["perplexity"][held] == pytest.approx(c["ppl"][held], rel=1e-6)
            loaded = load_model(ckpt, device="cpu")


def test_one_search_serves_every_ratio(setup):
    """The cut of one trajectory at each ratio equals a separate prune at that ratio."""
    root, ckpt, calib, held = setup
    rows = compare(ckpt, "blockpruner,layer-ppl", "0.15,0.35", _calib(calib), [held], out=root / "nested",
                   eval_windows=2, eval_seq_len=24)
    for r in rows[1:]:
        alone = api.prune(ckpt, DepthConfig(method=r["method"], ratio=r["target_ratio"]), _calib(calib))
        assert r["units"] == [s["unit"] for s in alone.plan["removed"]]
        # the same plan options as prune records (speed-only options such as --candidate-batch left out)
        assert read_plan(root / "nested" / r["plan"])["options"] == alone.plan["options"]


def _swap_run(monkeypatch, name: str, run) -> None:
    """Replace the entry point of registry method ``name`` for one test."""
    monkeypatch.setitem(registry.METHODS, name, dataclasses.replace(registry.METHODS[name], run=run))


def test_rerun_skips_finished_cells_after_a_crash(setup, monkeypatch):
    root, ckpt, calib, held = setup
    out = root / "crash"
    real = registry.METHODS["shortgpt"].run

    def crash(*a, **k):
        raise RuntimeError("simulated crash")

    _swap_run(monkeypatch, "shortgpt", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compare(ckpt, "layer-ppl,shortgpt", "0.2,0.4", _calib(calib), [held], out=out, eval_windows=2, eval_seq_len=24)
    done = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert done == ["dense.json", "layer-ppl__r0.2.json", "layer-ppl__r0.4.json"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    _swap_run(monkeypatch, "shortgpt", real)
    calls = []
    _swap_run(monkeypatch, "layer-ppl", lambda *a, **k: calls.append(1))
    log = []
    rows = compare(ckpt, "layer-ppl,shortgpt", "0.2,0.4", _calib(calib), [held], out=out, eval_windows=2, eval_seq_len=24, log=log.append)
    assert calls == [] and any("layer-ppl: all ratios done" in m for m in log)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert [r["method"] for r in rows] == ["dense", "layer-ppl", "layer-ppl", "shortgpt", "shortgpt"]
    assert (out / "results.csv").exists() and (out / "layer_map.png").exists()


def test_other_inputs_are_refused(setup):
    root, ckpt, calib, held = setup
    out = root / "refuse"
    compare(ckpt, "shortgpt", "0.3", _calib(calib), [held], out=out, eval_windows=2, eval_seq_len=24)
    with pytest.raises(PrunekitError, match="other inputs.*calibration"):
        compare(ckpt, "shortgpt", "0.3", _calib(calib, windows=3), [held], out=out, eval_windows=2, eval_seq_len=24)
    rows = compare(ckpt, "shortgpt", "0.3", _calib(calib, windows=3), [held], out=out, eval_windows=2, eval_seq_len=24, overwrite=True)
    assert len(rows) == 2


def test_every_kind_of_cell_has_the_fields_of_its_kind():
    """The one cell record gives each kind of cell exactly the fields compare wrote before it existed (the dense
    row, a depth ratio, a resumed one, a width ratio, an unreachable ratio), with the removed fraction derived."""
    common = ["method", "search", "target_ratio", "ratio_removed", "params_removed", "params_after", "ppl", "blocks",
              "units", "search_seconds", "search_work", "calib_ppl"]
    planned = common + ["search_macs", "calib_value", "criterion", "plan", "report"]
    dense = Cell("dense", "", 0.0, ppl={"a": 2.0}, calib_ppl=3.0, params_before=100, params_after=100).record()
    assert sorted(dense) == sorted(common)
    assert (dense["ratio_removed"], dense["params_removed"], dense["search_work"]) == (0.0, 0, 0.0)
    depth = Cell("sleb", "greedy", 0.2, ppl={"a": 5.0}, calib_ppl=4.0, blocks=[2, 3], units=["layer 1"],
                 params_before=100, params_after=75, search_seconds=1.5, search_work=2.0, plan="sleb__r0.2",
                 report="reports/sleb__r0.2/report.md", search_macs=9.0, calib_value=4.5, criterion="ppl")
    rec = depth.record()
    assert sorted(rec) == sorted(planned)
    assert (rec["ratio_removed"], rec["params_removed"], rec["plan"]) == (0.25, 25, "plans/sleb__r0.2.json")
    resumed = dataclasses.replace(depth, extra={"resumed_at_step": 2}).record()
    assert sorted(resumed) == sorted(planned + ["resumed_at_step"])
    width = dataclasses.replace(depth, blocks=[], units=[], search_work=None, calib_value=None,
                                extra={"importance": "l2", "width_removed": {"heads": 1}}).record()
    assert sorted(width) == sorted(planned + ["importance", "width_removed"]) and width["search_work"] is None
    measured = dataclasses.replace(depth, windows={"a": ([3.0, 4.0], [7, 7])}).record()
    assert sorted(measured) == sorted(planned + ["window_nll", "window_tokens"])
    assert (measured["window_nll"], measured["window_tokens"]) == ({"a": [3.0, 4.0]}, {"a": [7, 7]})
    unreachable = Cell("llm-pruner", "l2", 0.9, unreachable="no", extra={"importance": "l2"}).record()
    assert unreachable == {"method": "llm-pruner", "search": "l2", "target_ratio": 0.9, "unreachable": "no", "ppl": {},
                           "blocks": [], "units": [], "importance": "l2"}


def test_bad_arguments():
    with pytest.raises(PrunekitError, match="Did you mean 'shortgpt'"):
        parse_methods("shortgtp")
    with pytest.raises(PrunekitError, match="`search`"):
        parse_methods("taylor/beam:2")
    with pytest.raises(PrunekitError, match="twice"):
        parse_methods("sleb,sleb")
    with pytest.raises(PrunekitError, match="`ratios`"):
        parse_ratios("0.2,1.5")
    assert parse_ratios("0.3,0.1,0.3") == [0.1, 0.3]
    assert [m.name for m in parse_methods("blockpruner/beam:3, finercut")] == ["blockpruner/beam:3", "finercut"]


def test_compare_llm_pruner_cells(setup):
    """llm-pruner (width) beside a depth method: a pruned copy per ratio, its plan re-applies to the same perplexity."""
    root, ckpt, calib, held = setup
    out = root / "width"
    rows = compare(ckpt, "llm-pruner,llm-pruner/l2,shortgpt", "0.1,0.2", _calib(calib), [held], out=out,
                   eval_windows=2, eval_seq_len=24)
    dense = rows[0]
    width_rows = [r for r in rows if r["method"] == "llm-pruner"]
    assert [(r["search"], r["target_ratio"]) for r in width_rows] == [("greedy", 0.1), ("greedy", 0.2), ("l2", 0.1), ("l2", 0.2)]
    loaded = load_model(ckpt, device="cpu")
    for r in width_rows:
        assert r["blocks"] == [] and r["ratio_removed"] >= r["target_ratio"]  # at least the budget, as depth methods
        assert r["width_removed"]["heads"] + r["width_removed"]["mlp_channels"] > 0
        assert r["params_after"] == dense["params_after"] - r["params_removed"]
        plan = read_plan(out / r["plan"])
        assert plan["method"] == "llm-pruner" and plan["options"]["importance"] == r["importance"]
        ev = api.evaluate(loaded, [held], seq_len=24, windows=2, batch_size=4, plan=plan)
        assert ev["perplexity"][held] == pytest.approx(r["ppl"][held], rel=1e-5)
        assert ev["parameters"] == r["params_after"]
        loaded = load_model(ckpt, device="cpu")  # evaluate(plan=...) pruned it in place
        assert (out / r["report"]).exists()
    assert [r["importance"] for r in width_rows] == ["param_first", "param_first", "l2", "l2"]
    assert width_rows[0]["params_removed"] < width_rows[1]["params_removed"]
    md = (out / "results.md").read_text()
    assert "llm-pruner (l2)" in md and "width: " in md
    csv_rows = list(csv.DictReader((out / "results.csv").open()))
    w = next(c for c in csv_rows if c["method"] == "llm-pruner")
    assert int(w["heads_removed"]) + int(w["mlp_channels_removed"]) > 0 and w["search_work"] == ""
    with pytest.raises(PrunekitError, match="Did you mean 'l2'"):
        parse_methods("llm-pruner/l3")


def test_unreachable_cells_are_recorded_and_the_rest_finishes(setup, monkeypatch):
    """A method that cannot reach a ratio gives an 'unreachable' cell with its reason (table, CSV, both
    figures); every other cell is computed, the command exits 0, and a re-run searches nothing again."""
    import matplotlib.figure
    import matplotlib.text

    from prunekit.pipeline import compare as compare_mod

    root, _, calib, held = setup
    # 16 layers: Taylor+ spares layers 0, 1 and 15, so it removes at most 13 layers (0.762 of the parameters)
    # while 15 layers (0.879) are within every layer method's budget rule; llm-pruner's uniform fraction
    # would remove every KV group of a layer from 0.5 on.
    ckpt = str(save_tiny_checkpoint(root / "tiny16", "llama", num_hidden_layers=16))
    out = root / "unreachable"
    figures = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *a, **k):  # record each figure's texts (annotations, legend, notes)
        name = str(path).split(".tmp.png")[0].lstrip(".").rsplit("/.", 1)[-1]
        figures[name] = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    args = ["compare", ckpt, "--methods", "taylor,shortgpt,llm-pruner", "--ratios", "0.2,0.8,0.9", "--calib", calib,
            "--eval", held, "--windows", "4", "--seq-len", "24", "--eval-windows", "2", "--eval-seq-len", "24",
            "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    unreachable = {("taylor", "0.8"): "taylor ran out of units before reaching the budget (3 units are kept",
                   ("taylor", "0.9"): "`ratio` 0.9 cannot be reached",
                   ("shortgpt", "0.9"): "`ratio` 0.9 cannot be reached",
                   ("llm-pruner", "0.8"): "would remove every KV group",
                   ("llm-pruner", "0.9"): "would remove every KV group"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["target_ratio"]) for r in rows[1:]] == [
        (m, r) for m in ("taylor", "shortgpt", "llm-pruner") for r in ("0.2", "0.8", "0.9")]
    for r in rows[1:]:
        key = (r["method"], r["target_ratio"])
        if key in unreachable:
            assert unreachable[key] in r["unreachable"]
            assert r[f"ppl_{held}"] == r["ratio_removed"] == r["params_after"] == ""
            cell = json.loads((out / "cells" / f"{r['method']}__r{r['target_ratio']}.json").read_text())
            assert unreachable[key] in cell["unreachable"] and "plan" not in cell
            assert not (out / "plans" / f"{r['method']}__r{r['target_ratio']}.json").exists()
        else:  # the reachable cells are all there, each with a plan that reaches its ratio
            assert r["unreachable"] == ""
            assert float(r["ratio_removed"]) >= float(r["target_ratio"]) and float(r[f"ppl_{held}"]) > 1.0
            assert read_plan(out / "plans" / f"{r['method']}__r{r['target_ratio']}.json")["ratio_removed"] >= float(r["target_ratio"])
    md = (out / "results.md").read_text()
    assert "| 0.8 | taylor | unreachable |" in md and "| 0.9 | llm-pruner | unreachable |" in md
    assert "- taylor @ 0.8: taylor ran out of units before reaching the budget" in md
    assert "- shortgpt @ 0.9: `ratio` 0.9 cannot be reached" in md
    assert "| taylor | " in md.split(f"**{held} perplexity by method and ratio**")[1]
    pivot = md.split(f"**{held} perplexity by method and ratio**")[1]
    assert next(line for line in pivot.splitlines() if line.startswith("| shortgpt |")).endswith("| unreachable |")
    ppl_fig = figures["ppl_vs_ratio.png"]  # a legend entry per method naming its unreachable ratios, a label per ratio
    assert "taylor: unreachable at 0.8, 0.9" in ppl_fig and "shortgpt: unreachable at 0.9" in ppl_fig
    assert "llm-pruner: unreachable at 0.8, 0.9" in ppl_fig and ppl_fig.count("unreachable") == 2
    assert figures["layer_map.png"].count("unreachable: no plan removes this fraction (see results.md)") == 5
    for name in ("ppl_vs_ratio.png", "layer_map.png"):
        assert (out / name).read_bytes().startswith(PNG)

    # a re-run treats the unreachable cells as finished: no search, no gradient pass, no cell rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    for method in ("taylor", "shortgpt"):
        _swap_run(monkeypatch, method, lambda *a, **k: pytest.fail("searched again"))
    monkeypatch.setattr(compare_mod, "width_cells", lambda *a, **k: pytest.fail("llm-pruner searched again"))
    monkeypatch.setattr(compare_mod, "unreachable_ratios", lambda *a, **k: pytest.fail("llm-pruner checked again"))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "taylor: all ratios done" in res.output and "llm-pruner: all ratios done" in res.output
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    assert (out / "results.csv").read_text().count("would remove every KV group") == 2


def test_a_search_that_stops_short_gives_no_cell_below_its_budget(setup, monkeypatch):
    """A method whose answer does not reach a ratio (here: a wrapper that stops at the smallest budget) gets an
    unreachable cell for the larger ratio, never a cell that removes less than its target."""
    from prunekit.methods.depth.planner import Budgets

    root, ckpt, calib, held = setup
    real = registry.METHODS["shortgpt"].run
    _swap_run(monkeypatch, "shortgpt",
              lambda loaded, engine, units, stop, *a, **k: real(loaded, engine, units, Budgets(stop.levels[:1]), *a, **k))
    rows = compare(ckpt, "shortgpt", "0.2,0.4", _calib(calib), [held], out=root / "short", eval_windows=2, eval_seq_len=24)
    assert rows[1]["target_ratio"] == 0.2 and rows[1]["ratio_removed"] >= 0.2 and "unreachable" not in rows[1]
    assert rows[2]["target_ratio"] == 0.4 and "ppl" in rows[2] and rows[2]["ppl"] == {}
    assert rows[2]["unreachable"].startswith("shortgpt ran out of units before reaching the budget: all 2 units it removed are 0.395")


class _Killed(Exception):
    """Stands for a kill -9 right after a journal line was fsynced."""


def _journal_lines(monkeypatch, kill_after: int | None = None) -> list[dict]:
    """Every line compare journals (into the returned list); with ``kill_after``, the search dies right
    after its ``kill_after``-th finished step reached the disk."""
    lines, real = [], Journal.append

    def append(self, rec):
        real(self, rec)
        lines.append(rec)
        if len(lines) == kill_after:
            raise _Killed(f"killed after step {kill_after}")

    monkeypatch.setattr(Journal, "append", append)
    return lines


def _cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*__r*.json"))}


@pytest.mark.parametrize("method,ratios", [("blockpruner", "0.1,0.2,0.35"), ("budget-greedy", "0.1,0.25,0.4"),
                                           ("sleb/greedy+swap", "0.2,0.4")])
def test_a_killed_search_resumes_from_its_journal(setup, monkeypatch, method, ratios):
    """A compare killed after k finished steps of a search resumes it from its journal
    (``searches/<method>/journal.jsonl``): the same plans (byte for byte), units and perplexities as an
    uninterrupted run; each cell's search seconds and MACs include the work before the kill (greedy+swap: its
    greedy part, the swaps being redone); the journal is removed once the cells are written."""
    root, ckpt, calib, held = setup
    args = dict(eval_windows=2, eval_seq_len=24)
    slug = parse_methods(method)[0].slug
    with monkeypatch.context() as m:
        whole = _journal_lines(m)
        compare(ckpt, method, ratios, _calib(calib), [held], out=root / f"whole-{slug}", **args)
    ref = _cells(root / f"whole-{slug}")
    assert len({len(c["units"]) for c in ref.values()}) == len(ratios.split(","))
    assert not (root / f"whole-{slug}" / "searches").exists()
    # budget-greedy: killed just after the step at which its first budget landed (the landing is in the journal)
    k = next(i + 1 for i, r in enumerate(whole) if r.get("landing_options")) if method == "budget-greedy" else 2
    assert k < len(whole)
    out = root / f"killed-{slug}"
    with monkeypatch.context() as m:
        journaled = _journal_lines(m, kill_after=k)
        with pytest.raises(_Killed):
            compare(ckpt, method, ratios, _calib(calib), [held], out=out, **args)
    assert not list((out / "cells").glob("*__r*.json")) and len(journaled) == k
    before = journaled[-1]["clock"]
    log = []
    compare(ckpt, method, ratios, _calib(calib), [held], out=out, log=log.append, **args)
    assert any(f"{method}: resuming its search after step {k}" in msg for msg in log)
    got = _cells(out)
    assert got.keys() == ref.keys()
    for name, cell in got.items():
        assert (out / cell["plan"]).read_bytes() == (root / f"whole-{slug}" / ref[name]["plan"]).read_bytes(), name
        assert cell["units"] == ref[name]["units"] and cell["ppl"] == ref[name]["ppl"], name
        assert cell["resumed_at_step"] == k and "resumed_at_step" not in ref[name]
        n = len(cell["units"])
        if n <= k and "swap" in method:  # greedy to step n before the kill, then swaps (redone) after it
            assert cell["search_seconds"] >= journaled[n - 1]["clock"]["seconds"], name
            assert cell["search_macs"] >= journaled[n - 1]["clock"]["macs"], name
        elif n <= k:  # its answer was known before the kill: the journaled stamp of its last step
            assert (cell["search_seconds"], cell["search_macs"]) == (journaled[n - 1]["clock"]["seconds"],
                                                                    journaled[n - 1]["clock"]["macs"]), name
        else:  # the work before the kill plus the work since
            assert cell["search_seconds"] >= before["seconds"] and cell["search_macs"] > before["macs"] > 0, name
    assert any(len(c["units"]) > k for c in got.values())
    assert not (out / "searches").exists()


def test_a_journal_for_other_ratios_is_not_resumed(setup, monkeypatch):
    """A search journaled for other ratios starts afresh, and says so."""
    root, ckpt, calib, held = setup
    out = root / "other-ratios"
    with monkeypatch.context() as m:
        _journal_lines(m, kill_after=1)
        with pytest.raises(_Killed):
            compare(ckpt, "sleb", "0.2,0.4", _calib(calib), [held], out=out, eval_windows=2, eval_seq_len=24)
    assert (out / "searches" / "sleb" / "journal.jsonl").exists()
    log = []
    rows = compare(ckpt, "sleb", "0.2,0.3", _calib(calib), [held], out=out, eval_windows=2, eval_seq_len=24, log=log.append)
    afresh = "other inputs: the method options differ (ratio).); searching afresh"
    assert any("sleb: the journal" in msg and afresh in msg for msg in log), log
    assert all("resumed_at_step" not in r for r in rows) and not (out / "searches").exists()
