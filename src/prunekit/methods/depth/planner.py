"""A depth method run end to end on calibration windows: the budget, the engine, the method, the plan.

:func:`plan_depth` is what ``prunekit prune`` runs for every depth method (the pipeline adds the
journal, the output directory and the report); ``prunekit compare`` builds the same engine
(:func:`search_engine`) and the same calibration record (:func:`prunekit.data.calibration.calibration_record`). :func:`stop_rule`
turns ``remove`` / ``ratio`` into the rule a search stops on: at least ``ratio`` of the model's total
parameters removed (of its decoder layers' with ``ratio_of`` ``decoder``); :class:`Budgets` passes several
such rules to one search (one answer per budget).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.windows import Windows
from prunekit.engine.memo import ScoreMemo
from prunekit.engine.onload import Onloader
from prunekit.engine.ranks import Ranks
from prunekit.engine.runner import Engine, WorkCounter
from prunekit.methods.depth.outcome import DepthOutcome, ProgressFn, RecordFn, StopFn, Unit
from prunekit.methods.depth.units import make_units, unit_params
from prunekit.methods.options import RUNTIME_OPTIONS, DepthConfig, base_name, ratio_base
from prunekit.models.adapter import ModelAdapter
from prunekit.models.loading import LoadedModel
from prunekit.plan.schema import Plan, build_plan, model_record


@dataclass
class DepthResult:
    """The plan of a depth run, its timings and counted work, and the method's outcome."""

    plan: Plan
    timing: dict
    outcome: DepthOutcome


class Budgets:
    """Several stop rules, smallest budget first; calling it is the largest budget's rule.

    Passed as a method's ``stop``, it asks for one answer per budget (``outcome.extra['levels']``
    from the searches here; greedy and one-shot answers are prefixes of one ordered list).
    """

    def __init__(self, levels: Sequence[StopFn]) -> None:
        if not levels:
            raise ValueError("Budgets needs at least one stop rule")
        self.levels = list(levels)

    def __call__(self, removed: list[Unit]) -> bool:
        return self.levels[-1](removed)


def levels_of(stop: StopFn) -> list[StopFn]:
    return list(stop.levels) if isinstance(stop, Budgets) else [stop]


def stop_rule(loaded: LoadedModel, units: list[Unit], depth: DepthConfig, kind: str) -> StopFn:
    """True once the removed units meet ``depth.remove`` (a count) or ``depth.ratio`` (of all parameters, or of the
    decoder layers' with ``depth.ratio_of`` ``decoder``)."""
    adapter = loaded.adapter
    if depth.remove is not None:
        if depth.remove >= len(units):
            raise PrunekitError(
                f"`remove` {depth.remove} would remove every {kind} block ({len(units)} in this model).",
                f"Use `remove` {len(units) - 1} or less.",
            )
        return lambda removed: len(removed) >= depth.remove
    base = ratio_base(adapter, depth.ratio_of)
    blocks = {b for u in units for b in u}
    if sum(len(u) for u in units) > len(blocks):  # overlapping units (mix+layers): all blocks but the smallest
        sizes = sorted(unit_params(adapter, (b,)) for b in blocks)
    else:
        sizes = sorted(unit_params(adapter, u) for u in units)
    reachable = sum(sizes) - sizes[0]
    target = depth.ratio * base
    if target > reachable:
        widest = ", or `blocks_kind` mix" if kind in ("attn", "mlp") else ""  # mix and layers are as wide as it gets
        raise PrunekitError(
            f"`ratio` {depth.ratio} cannot be reached: removing all but one {kind} unit removes {reachable / base:.3f} of "
            f"{base_name(depth.ratio_of)}.",
            f"Use `ratio` {math.floor(reachable / base * 100) / 100} or less{widest}.",
        )
    return lambda removed: sum(unit_params(adapter, u) for u in removed) >= target


def search_engine(
    adapter: ModelAdapter, windows: Windows, calibration: dict, cache_bytes: float, *, ranks: Ranks | None = None,
    onload: Onloader | None = None, memo: ScoreMemo | None = None,
) -> tuple[Engine, float]:
    """The engine a depth search runs on (batches and ignored label from ``calibration``), and the dense model's
    criterion value (the plan's ``dense_value``); the counter starts after that dense pass, so it counts the search alone.
    ``memo``: sums shared with another search on the same model and windows (:mod:`prunekit.engine.memo`)."""
    engine = Engine(adapter, windows, batch_size=calibration["batch_size"], ignore_index=calibration["ignore_index"],
                    cache_bytes=cache_bytes, ranks=ranks, onload=onload, memo=memo)
    dense_value = engine.perplexity(engine.total_score(frozenset()))
    engine.counter = type(engine.counter)()
    return engine, dense_value


def plan_depth(
    loaded: LoadedModel, run: Callable[..., DepthOutcome], unit_kind: str, depth: DepthConfig, windows: Windows, *,
    cache_bytes: float, calibration: dict, progress: ProgressFn | None = None,
    start: list[dict] | None = None, on_record: RecordFn | None = None, ranks: Ranks | None = None,
    onload: Onloader | None = None, memo: ScoreMemo | None = None,
) -> DepthResult:
    """Run the depth method ``run`` on ``windows`` to ``depth``'s budget; return its plan (``loaded`` is left as it is).

    ``start``: steps already finished (from a journal); ``on_record`` sees each new step.
    ``calibration``: the plan's record of the windows (fingerprint, batch size, ignored label).
    ``ranks``: the torchrun processes the greedy search spreads its candidates over (every rank
    calls this and gets the same plan; ``timing['rank_work']`` has each rank's counted work).
    ``onload``: the weights brought in under a memory cap (``timing['weights']``: bytes moved,
    peak resident against the cap, per rank); the plan is the uncapped one.
    ``memo``: candidate sums shared with another search on the same model and windows (same plan, less work;
    ``timing['memo_hits']``).
    """
    ranks = ranks or Ranks()
    adapter = loaded.adapter
    units = make_units(adapter, unit_kind)
    should_stop = stop_rule(loaded, units, depth, unit_kind)
    record = model_record(loaded, onload.dtype if onload is not None else None)
    t0 = time.perf_counter()
    engine, dense_value = search_engine(adapter, windows, calibration, cache_bytes, ranks=ranks, onload=onload, memo=memo)
    hits = memo.hits if memo is not None else 0
    start = list(start or [])
    outcome = run(loaded, engine, units, should_stop, depth, progress=progress, start=start, on_record=on_record)
    search_seconds = time.perf_counter() - t0
    c = engine.counter
    mine = torch.tensor([c.block_macs, c.head_macs, c.block_runs, c.head_tokens], dtype=torch.float64)
    rank_work = [WorkCounter(float(w[0]), float(w[1]), int(w[2]), int(w[3])) for w in ranks.gather(mine)]
    work = WorkCounter(*(sum(getattr(w, f) for w in rank_work) for f in ("block_macs", "head_macs", "block_runs", "head_tokens")))
    steps = [(unit_params(adapter, u), rec) for u, rec in zip(outcome.units, outcome.records)]
    options = depth.plan_options() | {"criterion": outcome.extra.get("criterion", "ppl")}
    plan = build_plan(depth.method, options, record, calibration, adapter.total_params(), steps=steps, dense_value=dense_value,
                      decoder_params=adapter.decoder_params())
    timing = {
        "search_seconds": search_seconds,
        "resumed_steps": len(start),
        "runtime_options": {k: depth.as_dict()[k] for k in RUNTIME_OPTIONS},
        "steps": [{k: r.get(k) for k in ("step", "unit", "evaluated", "dropped")} for r in outcome.records],
        "work": work.as_dict(),
        "ranks": ranks.world,
        "rank_work": [w.as_dict() for w in rank_work],
        "naive_macs": outcome.naive_macs,
        "counted_ratio": (outcome.naive_macs or 0.0) / max(work.total_macs, 1.0),
        "peak_cache_bytes": engine.store.peak,
        "memo_hits": memo.hits - hits if memo is not None else 0,
    }
    if onload is not None:
        moved = ranks.gather(torch.tensor([onload.moved_bytes, onload.peak_bytes], dtype=torch.float64))
        timing["weights"] = onload.stats() | {"rank_moved_bytes": [int(m[0]) for m in moved],
                                              "rank_peak_resident_bytes": [int(m[1]) for m in moved]}
    return DepthResult(plan, timing, outcome)
