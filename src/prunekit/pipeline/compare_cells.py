"""The cells of ``prunekit compare`` on disk: ``DIR/cells/<method slug>__r<ratio>.json`` and ``dense.json``.

Every cell, whatever wrote it (the dense row, a depth or width method's ratio, a ratio no plan reaches), is one
:class:`Cell` turned into its record by :meth:`Cell.record`, so the fields of each kind are named in one place.
A cell is written atomically once it is complete, so a re-run skips it; cells written by an older version are
completed by :func:`backfill` (the in-sample calibration perplexity, the run report).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunekit.core.io import write_json_atomic
from prunekit.data.windows import Windows
from prunekit.evaluation.compare_report import row_label
from prunekit.evaluation.perplexity import window_nll
from prunekit.evaluation.report import render_report
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.compare_args import MethodSpec
from prunekit.plan.schema import read_plan

CALIB = "<calibration windows>"  # the in-sample evaluation, kept apart from the held-out source names
LogFn = Callable[[str], None]


@dataclass(frozen=True)
class Cell:
    """One cell of the comparison. ``unreachable``: the reason no plan reaches ``target_ratio`` (the record then
    has no measurements); ``plan``: the cell name whose plan (``plans/<plan>.json``) and report the cell links, with
    the search's counted MACs, last calibration value and criterion (the dense row has none); ``extra``: the fields
    of one kind of cell (a width cell's ``importance`` and ``width_removed``, a resumed search's ``resumed_at_step``)."""

    method: str
    search: str
    target_ratio: float
    unreachable: str | None = None
    ppl: dict[str, float] = field(default_factory=dict)
    calib_ppl: float | None = None
    blocks: list[int] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    decoder_ratio_removed: float | None = None  # the fraction of the decoder layers' parameters removed (recorded when known)
    search_seconds: float = 0.0
    search_work: float | None = 0.0
    plan: str | None = None
    report: str | None = None
    search_macs: float | None = None
    calib_value: float | None = None
    criterion: str | None = None
    windows: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)  # held-out source -> (nll, tokens)
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The JSON record of the cell (what ``cells/<name>.json`` holds and ``results.csv`` is made from)."""
        head = {"method": self.method, "search": self.search, "target_ratio": self.target_ratio}
        if self.unreachable is not None:
            return head | {"unreachable": self.unreachable, "ppl": {}, "blocks": [], "units": []} | self.extra
        removed = self.params_before - self.params_after
        rec = head | {
            "ratio_removed": removed / self.params_before,
            **({} if self.decoder_ratio_removed is None else {"decoder_ratio_removed": self.decoder_ratio_removed}),
            "params_removed": removed, "params_after": self.params_after, "ppl": self.ppl, "blocks": list(self.blocks),
            "units": list(self.units), "search_seconds": self.search_seconds,
            "search_work": self.search_work, "calib_ppl": self.calib_ppl,
        }
        if self.windows:  # per-window NLLs and scored tokens: the paired intervals of the tables
            rec |= {"window_nll": {src: nll for src, (nll, _) in self.windows.items()},
                    "window_tokens": {src: tokens for src, (_, tokens) in self.windows.items()}}
        if self.plan is not None:
            rec |= {"search_macs": self.search_macs, "calib_value": self.calib_value, "criterion": self.criterion,
                    "plan": f"plans/{self.plan}.json", "report": self.report}
        return rec | self.extra


def cell_name(spec: MethodSpec, ratio: float) -> str:
    return f"{spec.slug}__r{ratio:g}"


def write_cell(out: Path, name: str, cell: Cell, say: LogFn | None) -> None:
    """``cells/<name>.json``, atomically; ``say`` gets the cell's one-line summary."""
    rec = cell.record()
    write_json_atomic(out / "cells" / f"{name}.json", rec)
    if say is None:
        return
    if cell.unreachable is not None:
        say(f"  {row_label(rec)} @ {cell.target_ratio:g}: unreachable: {cell.unreachable}")
        return
    say(f"  {row_label(rec)} @ {cell.target_ratio:g}: removed {rec['ratio_removed']:.1%} of parameters, "
        + ", ".join(f"{s} ppl {v:.3f}" for s, v in rec["ppl"].items()) + f", search {cell.search_seconds:.1f} s")


def write_unreachable(out: Path, spec: MethodSpec, ratio: float, reason: str, say: LogFn, **extra) -> None:
    """The cell of a ratio ``spec`` cannot reach: no plan, no perplexity, the reason."""
    write_cell(out, cell_name(spec, ratio), Cell(spec.method, spec.search, ratio, unreachable=reason, extra=extra), say)


def evaluate_blocks(loaded: LoadedModel, blocks: list[int], evals: dict[str, Windows], batch_size: int) -> tuple[dict, int, dict]:
    """``(ppl, params, windows)`` of the model with ``blocks`` skipped: perplexity per source (name -> windows), the
    parameter count, and per source its per-window summed NLLs and scored tokens (the paired intervals' input)."""
    adapter = loaded.adapter
    with adapter.skipping([Block(b) for b in blocks]):
        params = adapter.total_params()
        ppl, windows = held_out(loaded, evals, batch_size)
    return ppl, params, windows


def held_out(loaded: LoadedModel, evals: dict[str, Windows], batch_size: int) -> tuple[dict, dict]:
    """``(ppl, windows)`` of the model as it is: perplexity per source and, per source, ``(nll, tokens)`` per window
    (:func:`prunekit.evaluation.perplexity.window_nll`: its perplexity is :func:`~prunekit.evaluation.perplexity.perplexity`'s)."""
    ppl, windows = {}, {}
    with torch.inference_mode():
        for src, w in evals.items():
            ppl[src], nll, tokens = window_nll(loaded, w, batch_size)
            windows[src] = (nll, tokens)
    return ppl, windows


def cell_report(model_spec: str, plan: dict, out: Path, name: str, seconds: float) -> str:
    """``reports/<cell>/report.md`` (the run report of that cell's plan); returns its path relative to ``out``."""
    render_report(plan, out / "reports" / name, {"search_seconds": seconds}, name=name,
                  next_cmds=[f"prunekit eval {model_spec} --plan {out}/plans/{name}.json --data wiki-test,news",
                             f"prunekit prune {model_spec} ...   # the same options, with --out, to save the model"])
    return f"reports/{name}/report.md"


def backfill(out: Path, names: list[str], loaded: LoadedModel, windows: Windows, batch_size: int) -> None:
    """Complete cells written by an older version: the in-sample calibration perplexity and, but for
    the dense row, the run report. Each cell is read once and rewritten only when something was added."""
    for name in names:
        path = out / "cells" / f"{name}.json"
        cell = json.loads(path.read_text(encoding="utf-8"))
        if cell.get("unreachable"):
            continue
        added = False
        if "calib_ppl" not in cell:
            cell["calib_ppl"] = evaluate_blocks(loaded, cell["blocks"], {CALIB: windows}, batch_size)[0][CALIB]
            added = True
        if name != "dense" and not cell.get("report"):
            plan = read_plan(out / cell["plan"])
            cell["report"] = cell_report(loaded.spec, plan, out, name, cell["search_seconds"])
            added = True
        if added:
            write_json_atomic(path, cell)


def collect_rows(out: Path, methods: list[MethodSpec], ratios: list[float]) -> list[dict]:
    """The dense row, then one row per (method, ratio) from the finished cells (unreachable ones included), in order."""
    rows = [json.loads((out / "cells" / "dense.json").read_text(encoding="utf-8"))]
    for spec in methods:
        for r in ratios:
            rows.append(json.loads((out / "cells" / f"{cell_name(spec, r)}.json").read_text(encoding="utf-8")))
    return rows
