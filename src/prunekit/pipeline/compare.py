"""``prunekit compare``: every depth method at every budget, evaluated on held-out text.

For each method (optionally with a search, ``blockpruner/beam:3``) one search serves every ratio:
a greedy trajectory and a one-shot ranking are nested, so the search runs to the largest ratio
and each ratio's plan is the shortest prefix that reaches it; ``beam:K`` answers all ratios in one
run (see :mod:`prunekit.methods.depth.beam`) and ``greedy+swap`` refines each ratio's greedy prefix. Each
cell (method x ratio) is evaluated with its blocks skipped on the loaded model (the same model a
saved plan gives) and written at once, atomically, to ``DIR/cells/``; a re-run skips finished
cells, and refuses a directory made from other inputs (model, calibration, evaluation). Under
torchrun, method ``i`` runs on rank ``i mod W`` (each rank writes its own cells; the output directory
must be one filesystem for all ranks) and rank 0 writes the dense cell and the outputs.

``llm-pruner`` (or ``llm-pruner/IMPORTANCE``) adds width-pruned cells on the same calibration and
evaluation windows (:mod:`prunekit.pipeline.compare_width`). ``patch`` (``--patch linear``) adds, beside each
depth cell, the cell of its plan with a linear patch (:mod:`prunekit.pipeline.compare_patch`).

Outputs in ``DIR``: ``results.csv``, ``results.md``, ``ppl_vs_ratio.png``, ``layer_map.png``,
``plans/<cell>.json`` (a plan per cell, appliable with ``prunekit eval --plan``),
``reports/<cell>/report.md`` (each cell's run report, linked from ``results.md``) and
``compare.json`` (the inputs). ``search_seconds`` of a cell: wall time from the method's engine
set-up to the moment its answer for that ratio was known (one-shot: the whole ranking).

A killed search resumes: the stepwise methods (the registry's ``stepwise``; ``greedy+swap`` for its
greedy part; not ``beam:K``) journal every finished step, with its ``clock`` (seconds and counted MACs
since the search began), in ``DIR/searches/<method>/journal.jsonl`` under a fingerprint (model weights,
calibration, the method's plan options, the ratios searched). A re-run with the same fingerprint
continues from the last step and writes the same cells; another one starts afresh (logged). A resumed
cell's ``search_seconds`` / ``search_work`` are the work up to the last step journaled before the kill
plus the resumed run's, and the cell records ``resumed_at_step``. The journal is removed once the
method's cells are written.

The parts: :mod:`~prunekit.pipeline.compare_args` (``--methods``, ``--ratios``),
:mod:`~prunekit.pipeline.compare_cells` (the one cell record, writing and reading cells),
:mod:`~prunekit.pipeline.compare_journal` (the search journals), :mod:`~prunekit.pipeline.compare_ranks`
(torchrun ranks); this module drives them.

A ratio a method cannot reach (the budget needs more than all but one unit, the method ran out of
units, e.g. Taylor+'s spared layers, or llm-pruner would remove every KV group of a layer) becomes
an *unreachable* cell: ``{"unreachable": reason}`` with no plan, written like any other cell (so a
re-run does not search for it again), shown as such in the table and the figures; the other cells
are computed as usual. When the method itself refuses its largest budget, that ratio is recorded
and the method runs again for the smaller ones.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.core.io import check_creatable, write_json_atomic
from prunekit.data.calibration import CalibConfig, calibration_record, calibration_windows
from prunekit.data.windows import Windows, build_windows
from prunekit.engine.ranks import current, rank_device
from prunekit.engine.runner import Engine, default_cache_bytes
from prunekit.evaluation.compare_report import write_outputs
from prunekit.methods.depth.outcome import DepthOutcome, SearchClock, StopFn, clock_of
from prunekit.methods.depth.patch import PatchConfig, check_patchable, patch_windows
from prunekit.methods.depth.planner import Budgets, search_engine, stop_rule
from prunekit.methods.depth.units import make_units, unit_params
from prunekit.methods.options import RATIO_OF, DepthConfig, base_name, parse_search, ratio_base
from prunekit.methods.registry import get_method
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.compare_args import MethodSpec, parse_methods, parse_ratios
from prunekit.pipeline.compare_cells import (
    CALIB,
    Cell,
    backfill,
    cell_name,
    cell_report,
    collect_rows,
    evaluate_blocks,
    held_out,
    write_cell,
    write_unreachable,
)
from prunekit.pipeline.compare_journal import drop_journal, search_fingerprint, search_journal, stamper
from prunekit.pipeline.compare_patch import PatchRun, patched_cells
from prunekit.pipeline.compare_ranks import all_finished, on_main
from prunekit.pipeline.compare_width import check_variant, unreachable_ratios, width_cells
from prunekit.pipeline.load import as_loaded
from prunekit.plan.schema import build_plan, model_record, write_plan

__all__ = ["MethodSpec", "collect_rows", "compare", "dense_forward_macs", "parse_methods", "parse_ratios"]

LogFn = Callable[[str], None]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CompareRun:
    """The fixed inputs of one compare run, shared by every method's cells."""

    loaded: LoadedModel
    calib: CalibConfig
    windows: Windows  # the calibration windows
    evals: dict[str, Windows]  # held-out source -> windows
    eval_batch_size: int
    blocks_kind: str
    ratio_of: str  # what the ratios are fractions of: total or decoder
    cache_gb: float | None
    cache_bytes: float
    record: dict  # the plans' model record
    calibration: dict  # the plans' calibration record
    out: Path
    progress: ProgressFn | None
    say: LogFn
    patch: PatchRun | None = None  # --patch: a patched cell beside each depth cell

    def measure(self, blocks: list[int]) -> tuple[dict, float, int, dict]:
        """Held-out perplexities, the in-sample calibration perplexity, the parameter count and the held-out
        per-window NLLs (``source -> (nll, tokens)``), ``blocks`` skipped."""
        ppl, params, windows = evaluate_blocks(self.loaded, blocks, self.evals | {CALIB: self.windows}, self.eval_batch_size)
        calib_ppl = ppl.pop(CALIB)
        windows.pop(CALIB)
        return ppl, calib_ppl, params, windows


def _manifest(loaded: LoadedModel, windows: Windows, calib: CalibConfig, evals: dict, *, blocks_kind: str, ratio_of: str,
              patch: PatchConfig | None = None) -> dict:
    rec = model_record(loaded)
    return {
        "model": {"spec": rec["spec"], "weights_sha256": rec["weights_sha256"], "parameters": rec["parameters"]},
        "calibration": windows.fingerprint() | {"batch_size": calib.batch_size},
        "evaluation": {src: w.fingerprint() for src, w in evals.items()},
        "blocks_kind": blocks_kind,
        "ratio_of": ratio_of,
    } | ({"patch": patch.as_dict()} if patch is not None else {})


def _check_manifest(out: Path, manifest: dict, overwrite: bool) -> None:
    path = out / "compare.json"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        old.setdefault("ratio_of", "total")  # a directory written before `ratio_of` existed
        if old != manifest:
            diff = [k for k in manifest if old.get(k) != manifest[k]]
            raise PrunekitError(
                f"'{out}' holds a comparison made from other inputs ({', '.join(diff)} differ).",
                "Use another `out`, or pass `overwrite` to start it again.",
            )
    if overwrite:
        for p in [*(out / "cells").glob("*.json"), *(out / "plans").glob("*.json"), *(out / "plans").glob("*.patch.safetensors")]:
            p.unlink()
        shutil.rmtree(out / "searches", ignore_errors=True)
    write_json_atomic(path, manifest)


def _describe(loaded: LoadedModel, calib: CalibConfig, windows: Windows, evals: dict, ratio_of: str) -> dict:
    return {
        "model": loaded.spec, "parameters": loaded.adapter.total_params(), "ratio_of": ratio_of,
        "decoder_parameters": loaded.adapter.decoder_params(),
        "calibration": f"{calib.source}, {windows.n_windows} windows x {windows.seq_len} tokens",
        "evaluation": ", ".join(f"{s} ({w.n_windows} x {w.seq_len} tokens)" for s, w in evals.items()),
    }


def dense_forward_macs(engine: Engine) -> float:
    """MACs of one forward of the dense model over the calibration windows, head included (the work unit)."""
    w = engine.windows
    return sum(engine.macs) * w.n_tokens + engine.head_macs * w.n_windows * (w.seq_len - 1)


def compare(
    model: str | LoadedModel, methods: list[MethodSpec] | str, ratios: list[float] | str, calib: CalibConfig,
    eval_sources: list[str] | tuple[str, ...], *, out: str | Path, eval_windows: int | None = 8, eval_seq_len: int = 256,
    eval_batch_size: int = 4, blocks_kind: str = "mix", ratio_of: str = "total", cache_gb: float | None = None,
    overwrite: bool = False, progress: ProgressFn | None = None, log: LogFn | None = None, dtype: str = "float32",
    device: str | None = None, patch: PatchConfig | None = None,
) -> list[dict]:
    """Run every method at every ratio, evaluate, write the results (see the module docstring). Returns the rows.

    ``ratio_of``: what the ratios are fractions of, ``total`` (all parameters) or ``decoder`` (the decoder layers').
    ``patch``: also evaluate each depth cell's plan with a linear patch fitted (:mod:`prunekit.pipeline.compare_patch`)."""

    methods = parse_methods(methods) if isinstance(methods, str) else list(methods)
    ratios = parse_ratios(ratios) if isinstance(ratios, str) else sorted(set(ratios))
    if not eval_sources:
        raise PrunekitError("`eval` names no source.", "Use e.g. `eval` wiki-test,news.")
    check_choice("`blocks_kind`", blocks_kind, ("mix", "attn", "mlp"))
    check_choice("`ratio_of`", ratio_of, RATIO_OF)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"`out` '{out}' is a file.", "Give `out` a directory path.")
    ranks = current()
    if ranks.is_main:
        check_creatable(out)
    say = log or (lambda _msg: None)
    if ranks.spread:
        say, progress = (lambda msg, say=say: say(f"rank {ranks.rank}: {msg}")), (progress if ranks.is_main else None)
    if patch is not None and not any(get_method(s.method).kind == "depth" for s in methods):
        raise PrunekitError("`patch` linear applies to the depth methods; `methods` names none.", "Add a depth method, or drop `patch`.")
    loaded = as_loaded(model, dtype, rank_device(device, ranks))
    if patch is not None:
        check_patchable(loaded.adapter)
    windows = calibration_windows(loaded, calib)
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    evals = {src: build_windows(loaded.tokenizer, src, eval_seq_len, eval_windows, max_positions=max_pos) for src in eval_sources}

    def prepare() -> None:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        (out / "plans").mkdir(parents=True, exist_ok=True)
        _check_manifest(out, _manifest(loaded, windows, calib, evals, blocks_kind=blocks_kind, ratio_of=ratio_of, patch=patch),
                        overwrite)

    on_main(ranks, prepare)
    run = CompareRun(
        loaded=loaded, calib=calib, windows=windows, evals=evals, eval_batch_size=eval_batch_size, blocks_kind=blocks_kind,
        ratio_of=ratio_of, cache_gb=cache_gb, cache_bytes=cache_gb * 2**30 if cache_gb else default_cache_bytes(loaded.device),
        record=model_record(loaded),
        calibration=calibration_record(windows, calib.batch_size, loaded.model.config.pad_token_id), out=out,
        progress=progress, say=say,
        patch=None if patch is None else PatchRun(patch, patch_windows(loaded, calib, patch), windows, calib.batch_size),
    )
    if not (out / "cells" / "dense.json").exists() and ranks.is_main:
        say("evaluating the dense model")
        ppl, calib_ppl, params, per_window = run.measure([])
        write_cell(out, "dense", Cell("dense", "", 0.0, ppl=ppl, calib_ppl=calib_ppl, params_before=params,
                                      params_after=params, decoder_ratio_removed=0.0, windows=per_window), None)
    failure: BaseException | None = None
    try:
        for i, spec in enumerate(methods):
            if ranks.owner(i) == ranks.rank:  # under torchrun, method i on rank i mod W
                _method_cells(run, spec, ratios)
                if run.patch is not None and get_method(spec.method).kind == "depth":
                    patched_cells(spec, ratios, run.patch, loaded=loaded, out=out, measure=run.measure, progress=progress, say=say)
    except Exception as e:  # every rank learns that one failed, instead of waiting for it
        failure = e
    all_finished(ranks, failure)
    rows_of = [x for s in methods for x in (run.patch.specs(s) if run.patch and get_method(s.method).kind == "depth" else [s])]
    if ranks.is_main:
        backfill(out, ["dense"] + [cell_name(s, r) for s in rows_of for r in ratios], loaded, windows, eval_batch_size)
    ranks.broadcast(None)  # every rank reads the cells once rank 0 has completed them
    rows = collect_rows(out, rows_of, ratios)
    if ranks.is_main:
        write_outputs(out, rows, list(eval_sources), loaded.adapter.num_layers, _describe(loaded, calib, windows, evals, ratio_of))
    return rows


def _method_cells(run: CompareRun, spec: MethodSpec, ratios: list[float]) -> None:
    """Search ``spec`` once for its ratios not done yet; evaluate and write each ratio's cell."""
    todo = [r for r in ratios if not (run.out / "cells" / f"{cell_name(spec, r)}.json").exists()]
    if not todo:
        run.say(f"{spec.name}: all ratios done, skipped")
        drop_journal(run.out, spec)  # a run killed between its last cell and removing the journal left it
        return
    run.say(f"{spec.name}: searching for ratios {', '.join(f'{r:g}' for r in todo)}")
    if get_method(spec.method).kind == "width":
        _llm_pruner_cells(run, spec, todo)
    else:
        _depth_cells(run, spec, todo)


def _llm_pruner_cells(run: CompareRun, spec: MethodSpec, todo: list[float]) -> None:
    """LLM-Pruner cells (see :mod:`prunekit.pipeline.compare_width`): one gradient pass, a pruned copy per ratio."""

    def evaluate(pruned: LoadedModel) -> tuple[dict, dict]:
        return held_out(pruned, run.evals | {CALIB: run.windows}, run.eval_batch_size)

    importance = check_variant(spec.search)
    blocked = unreachable_ratios(run.loaded, importance, todo, run.windows.n_windows, ratio_of=run.ratio_of)
    for ratio, reason in blocked.items():
        write_unreachable(run.out, spec, ratio, reason, run.say, importance=importance)
    todo = [r for r in todo if r not in blocked]
    if not todo:
        return
    for ratio, plan, (ppl, per_window), params_after, seconds, removed in width_cells(
            run.loaded, importance, todo, run.calib, run.windows.n_windows, evaluate=evaluate, progress=run.progress,
            ratio_of=run.ratio_of):
        name = cell_name(spec, ratio)
        write_plan(run.out / "plans" / f"{name}.json", plan)
        calib_ppl = ppl.pop(CALIB)
        per_window.pop(CALIB)
        cell = Cell(spec.method, spec.search, ratio, ppl=ppl, calib_ppl=calib_ppl, params_before=plan["params_before"],
                    windows=per_window, decoder_ratio_removed=plan["decoder_ratio_removed"],
                    params_after=params_after, search_seconds=seconds, search_work=None, plan=name,
                    report=cell_report(run.loaded.spec, plan, run.out, name, seconds), criterion=importance,
                    extra={"importance": importance, "width_removed": removed})
        write_cell(run.out, name, cell, run.say)


def _levels(outcome: DepthOutcome, stops: list[StopFn], stamps: list[tuple[float, float]]) -> list:
    """One (units, records, seconds, counted MACs, extra) per stop: the search's own, or prefixes of a nested order;
    None for a stop that no prefix meets (the search ran out of units before that budget)."""
    if "levels" in outcome.extra or "seconds" in outcome.extra:  # beam:K, greedy+swap: one answer per stop
        outs = outcome.extra.get("levels", [outcome])
        return [(o.units, o.records, o.extra["seconds"], o.extra["macs"], o.extra) for o in outs]
    res = []
    for stop in stops:
        k = next((i + 1 for i in range(len(outcome.units)) if stop(outcome.units[: i + 1])), None)
        res.append(None if k is None else (outcome.units[:k], outcome.records[:k], *stamps[k - 1], outcome.extra))
    return res


def _depth_cells(run: CompareRun, spec: MethodSpec, todo: list[float]) -> None:
    """One search of a depth method for the ratios ``todo``; a cell per ratio (unreachable ones with their reason)."""
    loaded, out, say = run.loaded, run.out, run.say
    adapter = loaded.adapter
    base = ratio_base(adapter, run.ratio_of)
    method = get_method(spec.method)
    kind = method.unit_kind(run.blocks_kind)
    units = make_units(adapter, kind)
    reach, stops = [], []
    for r in todo:
        try:
            stops.append(stop_rule(loaded, units, DepthConfig(method=spec.method, blocks_kind=run.blocks_kind, ratio=r,
                                                              ratio_of=run.ratio_of), kind))
            reach.append(r)
        except PrunekitError as e:  # more than all units but one
            write_unreachable(out, spec, r, str(e), say)
    outcome, journal, resumed = None, None, None
    journaled = method.stepwise and parse_search(spec.search)[0] != "beam"  # beam:K cannot resume midway
    while reach and outcome is None:
        depth = DepthConfig(method=spec.method, blocks_kind=run.blocks_kind, ratio=max(reach), ratio_of=run.ratio_of,
                            search=spec.search, cache_gb=run.cache_gb)
        start: list[dict] = []
        if journaled:
            fingerprint = search_fingerprint(run.record["weights_sha256"], run.calibration, depth.plan_options(), reach)
            journal, resumed = search_journal(out, spec, fingerprint, say)
            start = list(journal.records)
        t0 = time.perf_counter()
        engine, dense_value = search_engine(adapter, run.windows, run.calibration, run.cache_bytes)
        clock = SearchClock(engine, start, t0)  # from the journaled steps' cost on, when resumed
        stamps = [(c["seconds"], c["macs"]) for c in (clock_of(r) or clock.base for r in start)]
        try:
            outcome = method.run(loaded, engine, units, Budgets(stops), depth, progress=run.progress, start=start,
                                 on_record=stamper(clock, stamps, journal))
        except PrunekitError as e:  # the method cannot reach its largest budget (e.g. Taylor+'s spared layers)
            write_unreachable(out, spec, reach.pop(), str(e), say)
            stops.pop()
            if reach:
                say(f"{spec.name}: searching again for ratios {', '.join(f'{r:g}' for r in reach)}")
    if outcome is None:
        return
    unit_work = dense_forward_macs(engine)
    for ratio, stop, level in zip(reach, stops, _levels(outcome, stops, stamps)):
        if level is None or not stop(level[0]):
            n = sum(unit_params(adapter, u) for u in outcome.units)
            write_unreachable(out, spec, ratio, f"{spec.name} ran out of units before reaching the budget: all "
                              f"{len(outcome.units)} units it removed are {n / base:.3f} of {base_name(run.ratio_of)}.", say)
            continue
        _write_depth_cell(run, spec, ratio, level, depth=depth, dense_value=dense_value, unit_work=unit_work,
                          resumed=resumed)
    if journal is not None:  # every cell of the search is written: its journal has served
        drop_journal(out, spec)


def _write_depth_cell(run: CompareRun, spec: MethodSpec, ratio: float, level: tuple, *, depth: DepthConfig,
                      dense_value: float, unit_work: float, resumed: int | None) -> None:
    """The plan, report and cell of one ratio of a depth search (``level``: its units, records, seconds, MACs, extra)."""
    adapter = run.loaded.adapter
    params_before = adapter.total_params()
    cell_units, recs, seconds, macs, extra = level
    blocks = [b for u in cell_units for b in u]
    criterion = extra.get("criterion", "ppl")
    options = depth.plan_options() | {"ratio": ratio, "criterion": criterion}
    plan = build_plan(spec.method, options, run.record, run.calibration, params_before,
                      steps=[(unit_params(adapter, u), rec) for u, rec in zip(cell_units, recs)], dense_value=dense_value,
                      decoder_params=adapter.decoder_params())
    name = cell_name(spec, ratio)
    write_plan(run.out / "plans" / f"{name}.json", plan)
    report = cell_report(run.loaded.spec, plan, run.out, name, seconds)
    ppl, calib_ppl, params_after, per_window = run.measure(blocks)
    if params_after != plan["params_after"]:
        raise AssertionError(f"parameter accounting differs for {name}: {params_after} vs {plan['params_after']}")
    cell = Cell(spec.method, spec.search, ratio, ppl=ppl, calib_ppl=calib_ppl, blocks=blocks, windows=per_window,
                units=[r["unit"] for r in plan["removed"]], params_before=params_before, params_after=params_after,
                decoder_ratio_removed=plan["decoder_ratio_removed"], search_seconds=seconds, search_work=macs / unit_work, plan=name,
                report=report, search_macs=macs,
                calib_value=recs[-1]["value"] if recs else None, criterion=criterion,
                extra={} if resumed is None else {"resumed_at_step": resumed})
    write_cell(run.out, name, cell, run.say)
