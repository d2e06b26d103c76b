"""BlockPruner (arXiv 2406.10594): greedy, one unit per step, lowest calibration perplexity.

The search itself is :class:`prunekit.methods.depth.search.GreedySearch` on the engine's caches;
``--search beam:K`` and ``greedy+swap`` go to :mod:`prunekit.methods.depth.beam`, which runs the
plain greedy of this module where it needs one.
"""

from __future__ import annotations

from prunekit.engine.runner import Engine
from prunekit.methods.depth.beam import searched
from prunekit.methods.depth.outcome import DepthOutcome, ProgressFn, RecordFn, StopFn, Unit
from prunekit.methods.depth.search import GreedySearch, StepResult
from prunekit.methods.options import DepthConfig
from prunekit.models.loading import LoadedModel


def blockpruner(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig,
                progress: ProgressFn | None = None, start: list[dict] | None = None,
                on_record: RecordFn | None = None) -> DepthOutcome:
    """BlockPruner's greedy search, or the search variant ``depth.search`` names.

    ``start``: the records of steps already finished (a resumed search, from the journal);
    ``on_record`` sees each newly finished step's record. The outcome lists all steps.
    """
    if depth.search != "greedy":  # beam:K, greedy+swap (methods/depth/beam.py)
        return searched(loaded, engine, units, stop, depth, progress, start, on_record, greedy=greedy)
    return greedy(loaded, engine, units, stop, depth, progress, start, on_record)


def greedy(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig,
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
