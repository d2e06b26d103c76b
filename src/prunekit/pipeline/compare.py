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
evaluation windows (:mod:`prunekit.pipeline.compare_width`).

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

import torch

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.core.io import check_creatable, write_json_atomic
from prunekit.core.journal import JOURNAL_NAME, Journal
from prunekit.data.calibration import CalibConfig, calibration_windows
from prunekit.data.windows import build_windows
from prunekit.engine.ranks import Ranks, current, rank_device
from prunekit.engine.runner import Engine, default_cache_bytes
from prunekit.evaluation.compare_report import row_label, write_outputs
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.report import render_report
from prunekit.methods.depth.beam import Budgets
from prunekit.methods.depth.outcome import SearchClock, clock_of
from prunekit.methods.depth.planner import stop_rule
from prunekit.methods.depth.units import make_units, unit_params
from prunekit.methods.options import DepthConfig, parse_search
from prunekit.methods.registry import METHODS, get_method
from prunekit.models.adapter import Block
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.compare_width import check_variant, unreachable_ratios, width_cells
from prunekit.pipeline.load import as_loaded
from prunekit.plan.schema import build_plan, model_record, read_plan, write_plan

_CALIB = "<calibration windows>"  # the in-sample evaluation, kept apart from --eval names
LogFn = Callable[[str], None]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MethodSpec:
    """A method and the search it runs: ``blockpruner``, ``blockpruner/beam:3``, ``sleb/greedy+swap``."""

    method: str
    search: str = "greedy"

    @property
    def name(self) -> str:
        return self.method if self.search == "greedy" else f"{self.method}/{self.search}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__").replace(":", "-").replace("+", "-")


def parse_methods(text: str) -> list[MethodSpec]:
    """``--methods a,b/beam:3,...`` -> specs; unknown names and searches are refused with the fix."""
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        method, _, search = item.partition("/")
        check_choice("`methods`", method, sorted(METHODS))
        search = search or "greedy"
        if get_method(method).kind == "width":
            check_variant(search)  # llm-pruner/IMPORTANCE
        else:
            get_method(method).check(DepthConfig(method=method, ratio=0.1, search=search))  # the search fits the method
        specs.append(MethodSpec(method, search))
    if not specs:
        raise PrunekitError("`methods` is empty.", "Give a comma-separated list, e.g. `methods` blockpruner,sleb,shortgpt.")
    if len({s.name for s in specs}) != len(specs):
        raise PrunekitError(f"`methods` '{text}' names a method twice.", "Give each method once.")
    return specs


def parse_ratios(text: str) -> list[float]:
    """``--ratios 0.1,0.2,0.3`` -> sorted distinct fractions in (0, 1)."""
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PrunekitError(f"`ratios` '{text}' is not a list of numbers.", "Use e.g. `ratios` 0.1,0.2,0.3.") from None
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise PrunekitError(f"`ratios` '{text}' needs fractions in (0, 1).", "Use e.g. `ratios` 0.1,0.2,0.3.")
    return sorted(set(ratios))


def _cell_name(spec: MethodSpec, ratio: float) -> str:
    return f"{spec.slug}__r{ratio:g}"


def _manifest(loaded: LoadedModel, windows, calib: CalibConfig, evals: dict, blocks_kind: str) -> dict:

    rec = model_record(loaded)
    return {
        "model": {"spec": rec["spec"], "weights_sha256": rec["weights_sha256"], "parameters": rec["parameters"]},
        "calibration": windows.fingerprint() | {"batch_size": calib.batch_size},
        "evaluation": {src: w.fingerprint() for src, w in evals.items()},
        "blocks_kind": blocks_kind,
    }


def _check_manifest(out: Path, manifest: dict, overwrite: bool) -> None:
    path = out / "compare.json"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != manifest:
            diff = [k for k in manifest if old.get(k) != manifest[k]]
            raise PrunekitError(
                f"'{out}' holds a comparison made from other inputs ({', '.join(diff)} differ).",
                "Use another `out`, or pass `overwrite` to start it again.",
            )
    if overwrite:
        for p in list((out / "cells").glob("*.json")) + list((out / "plans").glob("*.json")):
            p.unlink()
        shutil.rmtree(out / "searches", ignore_errors=True)
    write_json_atomic(path, manifest)


def _evaluate_blocks(loaded: LoadedModel, blocks: list[int], evals: dict, batch_size: int) -> tuple[dict, int]:
    """Perplexity per source (name -> windows) of the model with ``blocks`` skipped, and its parameter count."""

    adapter = loaded.adapter
    with adapter.skipping([Block(b) for b in blocks]), torch.inference_mode():
        params = adapter.total_params()
        ppl = {src: perplexity(loaded, w, batch_size) for src, w in evals.items()}
    return ppl, params


def _write_cell(out: Path, name: str, cell: dict, say: LogFn) -> None:
    write_json_atomic(out / "cells" / f"{name}.json", cell)
    say(f"  {row_label(cell)} @ {cell['target_ratio']:g}: removed {cell['ratio_removed']:.1%} of parameters, "
        + ", ".join(f"{s} ppl {v:.3f}" for s, v in cell["ppl"].items()) + f", search {cell['search_seconds']:.1f} s")


def _write_unreachable(out: Path, spec: MethodSpec, ratio: float, reason: str, say: LogFn, **extra) -> None:
    """The cell of a ratio ``spec`` cannot reach: no plan, no perplexity, the reason."""
    cell = {"method": spec.method, "search": spec.search, "target_ratio": ratio, "unreachable": reason,
            "ppl": {}, "blocks": [], "units": []} | extra
    write_json_atomic(out / "cells" / f"{_cell_name(spec, ratio)}.json", cell)
    say(f"  {row_label(cell)} @ {ratio:g}: unreachable: {reason}")


def _cell_report(model_spec: str, plan: dict, out: Path, name: str, seconds: float) -> str:
    """``reports/<cell>/report.md`` (the run report of that cell's plan); returns its path relative to ``out``."""
    render_report(plan, out / "reports" / name, {"search_seconds": seconds}, name=name,
                  next_cmds=[f"prunekit eval {model_spec} --plan {out}/plans/{name}.json --data wiki-test,news",
                             f"prunekit prune {model_spec} ...   # the same options, with --out, to save the model"])
    return f"reports/{name}/report.md"


def _backfill(out: Path, names: list[str], loaded: LoadedModel, windows, batch_size: int) -> None:
    """Complete cells written by an older version: the in-sample calibration perplexity and, but for
    the dense row, the run report. Each cell is read once and rewritten only when something was added."""
    for name in names:
        path = out / "cells" / f"{name}.json"
        cell = json.loads(path.read_text(encoding="utf-8"))
        if cell.get("unreachable"):
            continue
        added = False
        if "calib_ppl" not in cell:
            cell["calib_ppl"] = _evaluate_blocks(loaded, cell["blocks"], {_CALIB: windows}, batch_size)[0][_CALIB]
            added = True
        if name != "dense" and not cell.get("report"):
            plan = read_plan(out / cell["plan"])
            cell["report"] = _cell_report(loaded.spec, plan, out, name, cell["search_seconds"])
            added = True
        if added:
            write_json_atomic(path, cell)


def _width_method(loaded: LoadedModel, spec: MethodSpec, todo: list[float], calib: CalibConfig, windows, evals: dict,
                  eval_batch_size: int, out: Path, progress: ProgressFn | None, say: LogFn) -> None:
    """LLM-Pruner cells (see :mod:`prunekit.pipeline.compare_width`): one gradient pass, a pruned copy per ratio."""

    def evaluate(pruned: LoadedModel) -> dict:
        with torch.inference_mode():
            return {src: perplexity(pruned, w, eval_batch_size) for src, w in (evals | {_CALIB: windows}).items()}

    importance = check_variant(spec.search)
    blocked = unreachable_ratios(loaded, importance, todo, windows.n_windows)
    for ratio, reason in blocked.items():
        _write_unreachable(out, spec, ratio, reason, say, importance=importance)
    todo = [r for r in todo if r not in blocked]
    if not todo:
        return
    for ratio, plan, ppl, params_after, seconds, removed in width_cells(
            loaded, importance, todo, calib, windows.n_windows, evaluate, progress):
        name = _cell_name(spec, ratio)
        write_plan(out / "plans" / f"{name}.json", plan)
        calib_ppl = ppl.pop(_CALIB)
        n = plan["params_before"] - params_after
        cell = {
            "method": spec.method, "search": spec.search, "importance": importance, "target_ratio": ratio,
            "ratio_removed": n / plan["params_before"], "params_removed": n, "params_after": params_after, "ppl": ppl,
            "blocks": [], "units": [], "width_removed": removed, "search_seconds": seconds, "search_work": None,
            "search_macs": None, "calib_value": None, "criterion": importance,
            "calib_ppl": calib_ppl, "plan": f"plans/{name}.json",
            "report": _cell_report(loaded.spec, plan, out, name, seconds),
        }
        _write_cell(out, name, cell, say)


def _levels(outcome, stops: list, stamps: list[tuple[float, float]]) -> list:
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


def dense_forward_macs(engine: Engine) -> float:
    """MACs of one forward of the dense model over the calibration windows, head included (the work unit)."""
    w = engine.windows
    return sum(engine.macs) * w.n_tokens + engine.head_macs * w.n_windows * (w.seq_len - 1)


def compare(
    model: str | LoadedModel, methods: list[MethodSpec] | str, ratios: list[float] | str, calib: CalibConfig,
    eval_sources: list[str] | tuple[str, ...], out: str | Path, eval_windows: int | None = 8, eval_seq_len: int = 256,
    eval_batch_size: int = 4, blocks_kind: str = "mix", cache_gb: float | None = None, overwrite: bool = False,
    progress: ProgressFn | None = None, log: LogFn | None = None, dtype: str = "float32", device: str | None = None,
) -> list[dict]:
    """Run every method at every ratio, evaluate, write the results (see the module docstring). Returns the rows."""

    methods = parse_methods(methods) if isinstance(methods, str) else list(methods)
    ratios = parse_ratios(ratios) if isinstance(ratios, str) else sorted(set(ratios))
    if not eval_sources:
        raise PrunekitError("`eval` names no source.", "Use e.g. `eval` wiki-test,news.")
    check_choice("`blocks_kind`", blocks_kind, ("mix", "attn", "mlp"))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"`out` '{out}' is a file.", "Give `out` a directory path.")
    ranks = current()
    if ranks.is_main:
        check_creatable(out)
    say = log or (lambda _msg: None)
    if ranks.spread:
        say, progress = (lambda msg, say=say: say(f"rank {ranks.rank}: {msg}")), (progress if ranks.is_main else None)
    loaded = as_loaded(model, dtype, rank_device(device, ranks))
    adapter = loaded.adapter
    windows = calibration_windows(loaded, calib)
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    evals = {src: build_windows(loaded.tokenizer, src, eval_seq_len, eval_windows, max_positions=max_pos) for src in eval_sources}

    def prepare() -> None:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        (out / "plans").mkdir(parents=True, exist_ok=True)
        _check_manifest(out, _manifest(loaded, windows, calib, evals, blocks_kind), overwrite)

    _on_main(ranks, prepare)
    record = model_record(loaded)
    ignore = loaded.model.config.pad_token_id
    calibration = windows.fingerprint() | {"batch_size": calib.batch_size, "ignore_index": ignore}
    cache_bytes = cache_gb * 2**30 if cache_gb else default_cache_bytes(loaded.device)

    dense_path = out / "cells" / "dense.json"
    if not dense_path.exists() and ranks.is_main:
        say("evaluating the dense model")
        ppl, params = _evaluate_blocks(loaded, [], evals | {_CALIB: windows}, eval_batch_size)
        calib_ppl = ppl.pop(_CALIB)
        write_json_atomic(dense_path, {"method": "dense", "search": "", "target_ratio": 0.0, "ratio_removed": 0.0,
                                       "params_removed": 0, "params_after": params, "ppl": ppl, "blocks": [],
                                       "units": [], "search_seconds": 0.0, "search_work": 0.0, "calib_ppl": calib_ppl})
    failure: BaseException | None = None
    try:
        for i, spec in enumerate(methods):
            if ranks.owner(i) == ranks.rank:  # under torchrun, method i on rank i mod W
                _method_cells(loaded, spec, ratios, calib, windows, evals, eval_batch_size, blocks_kind, cache_gb, cache_bytes,
                              record, calibration, out, progress, say)
    except Exception as e:  # every rank learns that one failed, instead of waiting for it
        failure = e
    _all_finished(ranks, failure)
    if ranks.is_main:
        _backfill(out, ["dense"] + [_cell_name(s, r) for s in methods for r in ratios], loaded, windows, eval_batch_size)
    ranks.broadcast(None)  # every rank reads the cells once rank 0 has completed them
    rows = collect_rows(out, methods, ratios)
    if ranks.is_main:
        write_outputs(out, rows, list(eval_sources), adapter.num_layers, _describe(loaded, calib, windows, evals))
    return rows


def _on_main(ranks: Ranks, fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 alone; its refusal is raised on every rank (the others wait for it)."""
    error = None
    if ranks.is_main:
        try:
            fn()
        except PrunekitError as e:
            error = e
    error = ranks.broadcast(error)
    if error is not None:
        raise error


def _all_finished(ranks: Ranks, failure: BaseException | None) -> None:
    """Raise ``failure`` here, or a one-line error when another rank's cells failed."""
    flags = ranks.gather(torch.tensor([0.0 if failure is None else 1.0]))
    if failure is not None:
        raise failure
    failed = [r for r, f in enumerate(flags) if float(f[0]) > 0]
    if failed:
        raise PrunekitError(f"rank {failed[0]} of {ranks.world} stopped in its compare cells (its error is in its output).",
                            "Fix it and rerun the same command: the finished cells are kept.")


def _method_cells(loaded: LoadedModel, spec: MethodSpec, ratios: list[float], calib: CalibConfig, windows, evals: dict,
                  eval_batch_size: int, blocks_kind: str, cache_gb: float | None, cache_bytes: float, record: dict,
                  calibration: dict, out: Path, progress: ProgressFn | None, say: LogFn) -> None:
    """Search ``spec`` once for its ratios not done yet; evaluate and write each ratio's cell."""
    adapter = loaded.adapter
    ignore = loaded.model.config.pad_token_id
    params_before = adapter.total_params()
    todo = [r for r in ratios if not (out / "cells" / f"{_cell_name(spec, r)}.json").exists()]
    if not todo:
        say(f"{spec.name}: all ratios done, skipped")
        _drop_journal(out, spec)  # a run killed between its last cell and removing the journal left it
        return
    say(f"{spec.name}: searching for ratios {', '.join(f'{r:g}' for r in todo)}")
    if get_method(spec.method).kind == "width":
        _width_method(loaded, spec, todo, calib, windows, evals, eval_batch_size, out, progress, say)
        return
    depth = DepthConfig(method=spec.method, blocks_kind=blocks_kind, ratio=max(todo), search=spec.search, cache_gb=cache_gb)
    method = get_method(spec.method)
    kind = method.unit_kind(blocks_kind)
    units = make_units(adapter, kind)
    reach, stops = [], []
    for r in todo:
        try:
            stops.append(stop_rule(loaded, units, DepthConfig(method=spec.method, blocks_kind=blocks_kind, ratio=r), kind))
            reach.append(r)
        except PrunekitError as e:  # more than all units but one
            _write_unreachable(out, spec, r, str(e), say)
    outcome, journal, resumed = None, None, None
    journaled = method.stepwise and parse_search(spec.search)[0] != "beam"  # beam:K cannot resume midway
    while reach and outcome is None:
        depth = DepthConfig(method=spec.method, blocks_kind=blocks_kind, ratio=max(reach), search=spec.search,
                            cache_gb=cache_gb)
        start: list[dict] = []
        if journaled:
            fingerprint = json.loads(json.dumps({"model": record["weights_sha256"], "calibration": calibration,
                                                 "options": depth.plan_options(), "ratios": reach}))
            journal, resumed = _search_journal(out, spec, fingerprint, say)
            start = list(journal.records)
        t0 = time.perf_counter()
        engine = Engine(adapter, windows, batch_size=calib.batch_size, ignore_index=ignore, cache_bytes=cache_bytes)
        dense_value = engine.perplexity(engine.total_score(frozenset()))
        engine.counter = type(engine.counter)()
        clock = SearchClock(engine, start, t0)  # from the journaled steps' cost on, when resumed
        stamps = [(c["seconds"], c["macs"]) for c in (clock_of(r) or clock.base for r in start)]
        try:
            outcome = method.run(loaded, engine, units, Budgets(stops), depth, progress, start,
                                 _stamper(clock, stamps, journal))
        except PrunekitError as e:  # the method cannot reach its largest budget (e.g. Taylor+'s spared layers)
            _write_unreachable(out, spec, reach.pop(), str(e), say)
            stops.pop()
            if reach:
                say(f"{spec.name}: searching again for ratios {', '.join(f'{r:g}' for r in reach)}")
    if outcome is None:
        return
    unit_work = dense_forward_macs(engine)
    for ratio, stop, level in zip(reach, stops, _levels(outcome, stops, stamps)):
        if level is None or not stop(level[0]):
            n = sum(unit_params(adapter, u) for u in outcome.units)
            _write_unreachable(out, spec, ratio, f"{spec.name} ran out of units before reaching the budget: all "
                               f"{len(outcome.units)} units it removed are {n / params_before:.3f} of the parameters.", say)
            continue
        cell_units, recs, seconds, macs, extra = level
        blocks = [b for u in cell_units for b in u]
        options = depth.plan_options() | {"ratio": ratio, "criterion": extra.get("criterion", "ppl")}
        plan = build_plan(spec.method, options, record, calibration, params_before,
                          steps=[(unit_params(adapter, u), rec) for u, rec in zip(cell_units, recs)], dense_value=dense_value)
        n = params_before - plan["params_after"]
        removed = plan["removed"]
        name = _cell_name(spec, ratio)
        write_plan(out / "plans" / f"{name}.json", plan)
        report = _cell_report(loaded.spec, plan, out, name, seconds)
        ppl, params_after = _evaluate_blocks(loaded, blocks, evals | {_CALIB: windows}, eval_batch_size)
        calib_ppl = ppl.pop(_CALIB)
        if params_after != plan["params_after"]:
            raise AssertionError(f"parameter accounting differs for {name}: {params_after} vs {plan['params_after']}")
        cell = {
            "method": spec.method, "search": spec.search, "target_ratio": ratio, "ratio_removed": n / params_before,
            "params_removed": n, "params_after": params_after, "ppl": ppl, "blocks": blocks,
            "units": [r["unit"] for r in removed], "search_seconds": seconds,
            "search_work": macs / unit_work, "search_macs": macs,
            "calib_value": recs[-1]["value"] if recs else None, "criterion": extra.get("criterion", "ppl"),
            "calib_ppl": calib_ppl,
            "plan": f"plans/{name}.json", "report": report,
        } | ({} if resumed is None else {"resumed_at_step": resumed})
        _write_cell(out, name, cell, say)
    if journal is not None:  # every cell of the search is written: its journal has served
        _drop_journal(out, spec)


def _stamper(clock: SearchClock, stamps: list[tuple[float, float]], journal: Journal | None) -> Callable[[dict], None]:
    """The ``on_record`` of a compare search: each finished step's (seconds, MACs) into ``stamps`` and, with
    ``journal``, the record with its ``clock`` into the journal. A method that stamps itself (budget-greedy,
    greedy+swap) gives the record its own ``clock``, which is kept."""

    def on_record(rec: dict) -> None:
        now = clock_of(rec) or clock()
        stamps.append((now["seconds"], now["macs"]))
        if journal is not None:
            journal.append(rec | {"clock": now})

    return on_record


def _search_journal(out: Path, spec: MethodSpec, fingerprint: dict, say: LogFn) -> tuple[Journal, int | None]:
    """The journal of ``spec``'s search, ``OUT/searches/<slug>/journal.jsonl``, and the number of steps it
    resumes from: continued when written for the same ``fingerprint`` (model, calibration, the method's
    plan options, the ratios searched), else started afresh (None; the log line says why)."""
    folder = out / "searches" / spec.slug
    path = folder / JOURNAL_NAME
    if path.is_file():
        try:
            journal = Journal.open(folder, fingerprint, resume=True)
        except PrunekitError as e:  # no valid header, or other inputs
            say(f"{spec.name}: the journal {path} cannot be resumed ({e.problem}); searching afresh")
        else:
            say(f"{spec.name}: resuming its search after step {len(journal.records)} (journal {path})")
            return journal, len(journal.records)
    return Journal.open(folder, fingerprint, resume=False), None


def _drop_journal(out: Path, spec: MethodSpec) -> None:
    """Remove ``spec``'s search journal once its cells are written, and ``searches/`` once empty."""
    shutil.rmtree(out / "searches" / spec.slug, ignore_errors=True)
    try:
        (out / "searches").rmdir()
    except OSError:  # absent, or another method's journal is there
        pass


def _describe(loaded: LoadedModel, calib: CalibConfig, windows, evals: dict) -> dict:
    return {
        "model": loaded.spec, "parameters": loaded.adapter.total_params(),
        "calibration": f"{calib.source}, {windows.n_windows} windows x {windows.seq_len} tokens",
        "evaluation": ", ".join(f"{s} ({w.n_windows} x {w.seq_len} tokens)" for s, w in evals.items()),
    }


def collect_rows(out: Path, methods: list[MethodSpec], ratios: list[float]) -> list[dict]:
    """The dense row, then one row per (method, ratio) from the finished cells (unreachable ones included), in the given order."""
    rows = [json.loads((out / "cells" / "dense.json").read_text(encoding="utf-8"))]
    for spec in methods:
        for r in ratios:
            rows.append(json.loads((out / "cells" / f"{_cell_name(spec, r)}.json").read_text(encoding="utf-8")))
    return rows
