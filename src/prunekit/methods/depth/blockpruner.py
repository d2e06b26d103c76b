"""BlockPruner (arXiv 2406.10594): greedy, one unit per step, lowest calibration perplexity.

The search itself is :class:`prunekit.methods.depth.search.GreedySearch` on the engine's caches;
``--search beam:K`` and ``greedy+swap`` are dispatched by :func:`searched` to the searches of
:mod:`prunekit.methods.depth.beam` (``greedy+swap`` starting from the plain greedy of this module).
"""

from __future__ import annotations

from dataclasses import replace

from prunekit.core.errors import PrunekitError
from prunekit.engine.runner import Engine
from prunekit.methods.depth.beam import beam_search, swap_refine
from prunekit.methods.depth.outcome import DepthOutcome, ProgressFn, RecordFn, SearchClock, StopFn, Unit, clock_of
from prunekit.methods.depth.planner import levels_of
from prunekit.methods.depth.search import GreedySearch, StepResult
from prunekit.methods.depth.units import unit_name
from prunekit.methods.options import DepthConfig, parse_search
from prunekit.models.loading import LoadedModel


def blockpruner(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                progress: ProgressFn | None = None, start: list[dict] | None = None,
                on_record: RecordFn | None = None) -> DepthOutcome:
    """BlockPruner's greedy search, or the search variant ``depth.search`` names.

    ``start``: the records of steps already finished (a resumed search, from the journal);
    ``on_record`` sees each newly finished step's record. The outcome lists all steps.
    """
    if depth.search != "greedy":  # beam:K, greedy+swap
        return searched(loaded, engine, units, stop, depth, progress=progress, start=start, on_record=on_record)
    return greedy(loaded, engine, units, stop, depth, progress=progress, start=start, on_record=on_record)


def greedy(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
           progress: ProgressFn | None = None, start: list[dict] | None = None,
           on_record: RecordFn | None = None) -> DepthOutcome:
    """The plain greedy search: each step removes the unit whose removal leaves the lowest criterion total."""
    start = start or []

    def on_candidate(step: int, done: int, total: int) -> None:
        if progress:
            spread = f" · {engine.ranks.world} ranks" if engine.ranks.spread else ""
            capped = " · weights onloaded" if engine.onload is not None else ""
            progress(f"step {step + 1}{spread}{capped} · candidates", done, total)

    previous = StepResult.from_record(start[-1]) if start else None
    k = depth.candidate_batch or engine.auto_candidate_batch()
    search = GreedySearch(engine, units, cache=depth.cache, early_exit=depth.early_exit,
                          removed=[tuple(r["blocks"]) for r in start], progress=on_candidate, previous=previous,
                          candidate_batch=k)
    records = list(start)

    def on_step(r) -> None:
        records.append(r.record())
        if on_record:
            on_record(records[-1])

    search.run(stop, on_step)
    return DepthOutcome([tuple(r["blocks"]) for r in records], records, search.naive_macs)


def _value(engine: Engine, total: float) -> float:
    return engine.perplexity(total) if engine.criterion == "ppl" else total / engine.n_targets


def searched(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
             progress: ProgressFn | None = None, start: list[dict] | None = None,
             on_record: RecordFn | None = None) -> DepthOutcome:
    """Run ``depth.search`` (``beam:K`` or ``greedy+swap``, :mod:`prunekit.methods.depth.beam`) on ``engine``.

    ``greedy+swap`` starts from :func:`greedy`'s answer. Returns the
    :class:`~prunekit.methods.depth.outcome.DepthOutcome` of the largest budget; with
    :class:`~prunekit.methods.depth.planner.Budgets`, ``extra['levels']`` holds one outcome per budget
    (``extra['seconds']``).
    """

    kind, width = parse_search(depth.search)
    levels = levels_of(stop)
    start = start or []
    outcomes: list[DepthOutcome] = []
    if kind == "beam":
        if start:
            if stop([tuple(r["blocks"]) for r in start]):
                return DepthOutcome([tuple(r["blocks"]) for r in start], list(start), None, {"search": depth.search})
            raise PrunekitError("a beam search cannot resume midway (its steps are journaled only at the end).",
                                "Re-run without `resume`.")
        results, naive = beam_search(engine, units, levels, width, early_exit=depth.early_exit, progress=progress)
        for res in results:
            records = [_record(k, u, t, _value(engine, t), "beam") for k, (u, t) in enumerate(zip(res.path, res.totals))]
            outcomes.append(DepthOutcome(list(res.path), records, naive,
                                         {"search": depth.search, "seconds": res.seconds, "macs": res.macs}))
        if on_record:
            for rec in outcomes[-1].records:
                on_record(rec)
    elif kind == "greedy+swap":  # the greedy part resumes; each greedy step's record carries its clock
        clock = SearchClock(engine, start)
        zero = {"seconds": 0.0, "macs": 0.0}
        stamps = [(c["seconds"], c["macs"]) for c in (clock_of(r) or zero for r in start)]  # resumed: journaled clocks

        def stamp(rec: dict) -> None:
            now = clock()
            stamps.append((now["seconds"], now["macs"]))
            if on_record:
                on_record(rec | {"clock": now})

        first = greedy(loaded, engine, units, stop, replace(depth, search="greedy"), progress=progress, start=start, on_record=stamp)
        for level in levels:
            k = next((i + 1 for i in range(len(first.units)) if level(first.units[: i + 1])), len(first.units))
            head = first.records[:k]
            res = swap_refine(engine, units, first.units[:k], head[-1]["score"], level, early_exit=depth.early_exit,
                              progress=progress)
            by_unit = {tuple(r["blocks"]): r for r in head}
            records = []
            for i, u in enumerate(res.path):
                if u in by_unit:
                    records.append(_record(i, u, by_unit[u]["score"], by_unit[u]["value"], "greedy"))
                else:
                    s = next(s for s in reversed(res.swaps) if s["removed"] == unit_name(u))
                    records.append(_record(i, u, s["score"], _value(engine, s["score"]), "swap"))
            extra = {"search": depth.search, "seconds": stamps[k - 1][0] + res.seconds, "macs": stamps[k - 1][1] + res.macs,
                     "swaps": res.swaps,
                     "greedy_value": head[-1]["value"], "final_value": _value(engine, res.total),
                     "swap_evaluated": res.evaluated, "swap_dropped": res.dropped}
            outcomes.append(DepthOutcome(list(res.path), records, (first.naive_macs or 0.0) + res.naive_macs, extra))
    else:  # plain greedy is the methods' own loop
        raise ValueError(f"searched() is for beam and greedy+swap, not {depth.search!r}")
    main = outcomes[-1]
    if len(levels) > 1:
        main.extra["levels"] = outcomes
    return main


def _record(step: int, unit: Unit, score: float, value: float, how: str) -> dict:
    return {"step": step, "unit": unit_name(unit), "blocks": list(unit), "score": score, "value": value, "search": how}
