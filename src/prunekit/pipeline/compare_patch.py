"""``prunekit compare --patch linear``: a patched cell beside each depth cell.

The patched cell of ``(method, ratio)`` is made from the unpatched cell's plan (``plans/<cell>.json``): the linear
patch is fitted on the compare's patch windows (:func:`prunekit.methods.depth.patch.fit_linear_patch`), its plan
written as ``plans/<method>__patch-linear__r<ratio>.json`` with the matrices beside it
(``<same name>.patch.safetensors``), and the cell evaluated with the blocks skipped and the patch folded for the
duration (:func:`prunekit.plan.patch.patched`) on the one loaded model. Its ``search_seconds`` / ``search_work`` are
the unpatched cell's plus the fit's; ``patch`` holds the fit's summary. A patched cell is written once, like any
cell, so a re-run skips it; one missing beside a finished unpatched cell is made from that cell's plan, without
searching again. An unreachable unpatched cell gives an unreachable patched cell with the same reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from prunekit.core.io import write_bytes_atomic
from prunekit.data.windows import Windows
from prunekit.methods.depth.patch import PatchConfig, fit_linear_patch
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.compare_args import MethodSpec
from prunekit.pipeline.compare_cells import Cell, cell_name, cell_report, write_cell, write_unreachable
from prunekit.plan.patch import encode_patch, patched
from prunekit.plan.schema import read_plan, write_plan

LogFn = Callable[[str], None]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PatchRun:
    """What the patched cells of one compare share: the patch's options, its fit windows, the calibration
    windows (the unit of ``search_work``) and the batch size."""

    config: PatchConfig
    windows: Windows
    calib_windows: Windows
    batch_size: int

    def specs(self, spec: MethodSpec) -> list[MethodSpec]:
        """``spec`` and its patched twin (the rows of the table, in that order)."""
        return [spec, replace(spec, patch=self.config.kind)]


def patched_cells(spec: MethodSpec, ratios: list[float], patch: PatchRun, *, loaded: LoadedModel, out: Path,
                  measure: Callable[[list[int]], tuple], progress: ProgressFn | None, say: LogFn) -> None:
    """The patched cells of the depth method ``spec`` at ``ratios`` not written yet (``measure``: the compare's
    held-out evaluation of the loaded model with some blocks skipped)."""
    twin = replace(spec, patch=patch.config.kind)
    for ratio in ratios:
        name = cell_name(twin, ratio)
        base_path = out / "cells" / f"{cell_name(spec, ratio)}.json"
        if (out / "cells" / f"{name}.json").exists() or not base_path.exists():
            continue
        base = json.loads(base_path.read_text(encoding="utf-8"))
        if base.get("unreachable"):
            write_unreachable(out, twin, ratio, base["unreachable"], say, patch={"kind": patch.config.kind})
            continue
        _patched_cell(twin, ratio, base, patch, loaded=loaded, out=out, measure=measure, progress=progress, say=say)


def _patched_cell(twin: MethodSpec, ratio: float, base: dict, patch: PatchRun, *, loaded: LoadedModel, out: Path,
                  measure: Callable[[list[int]], tuple], progress: ProgressFn | None, say: LogFn) -> None:
    name = cell_name(twin, ratio)
    t0 = time.perf_counter()
    plan, tensors, engine = fit_linear_patch(loaded, read_plan(out / base["plan"]), patch.windows, patch.config,
                                             batch_size=patch.batch_size, file=f"{name}.patch.safetensors", progress=progress)
    seconds = time.perf_counter() - t0
    data, _ = encode_patch(tensors)
    write_bytes_atomic(out / "plans" / plan["patch"]["file"], data)
    write_plan(out / "plans" / f"{name}.json", plan)
    with patched(loaded.adapter, plan["patch"], tensors):
        ppl, calib_ppl, params_after, per_window = measure(base["blocks"])
    w = patch.calib_windows
    unit = sum(engine.macs) * w.n_tokens + engine.head_macs * w.n_windows * (w.seq_len - 1)  # one dense forward, calibration
    macs = (base.get("search_macs") or 0.0) + engine.counter.total_macs
    summary = {"kind": patch.config.kind, "ridge": patch.config.ridge, "tokens": plan["patch"]["tokens"],
               "runs": len(plan["patch"]["runs"]), "skipped": len(plan["patch"]["skipped"]), "fit_seconds": seconds,
               "fit_work": engine.counter.total_macs / unit}
    total = base["search_seconds"] + seconds
    cell = Cell(twin.method, twin.search, ratio, ppl=ppl, calib_ppl=calib_ppl, blocks=base["blocks"], windows=per_window,
                units=base["units"], params_before=plan["params_before"], params_after=params_after, search_seconds=total,
                search_work=None if base.get("search_work") is None else macs / unit, plan=name,
                report=cell_report(loaded.spec, plan, out, name, total), search_macs=macs, calib_value=base.get("calib_value"),
                criterion=base.get("criterion"), extra={"patch": summary})
    write_cell(out, name, cell, say)
