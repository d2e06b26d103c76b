"""Depth-pruning methods: each turns (model, calibration engine, units, budget) into an ordered
list of removed units with the score that decided each. A method never mutates the model; the
caller builds the plan and :func:`prunekit.apply_plan` applies it.

Register a method in ``DEPTH_METHODS`` with the unit kind it works on (``UNIT_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DepthConfig
from ..engine.runner import Engine
from ..models.loading import LoadedModel
from .search import GreedySearch, StepResult
from .units import Unit

ProgressFn = Callable[[str, int, int], None]
StopFn = Callable[[list[Unit]], bool]


@dataclass
class DepthOutcome:
    """What a method decided: units removed in order, one record per unit, and counted work."""

    units: list[Unit]
    records: list[dict]
    naive_macs: float | None = None
    extra: dict = field(default_factory=dict)


def blockpruner(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig,
                progress: ProgressFn | None = None, start: list[dict] | None = None,
                on_record: Callable[[dict], None] | None = None) -> DepthOutcome:
    """BlockPruner (arXiv 2406.10594): greedy, one unit per step, lowest calibration perplexity.

    ``start``: the records of steps already finished (a resumed search, from the journal);
    ``on_record`` sees each newly finished step's record. The outcome lists all steps.
    """
    if depth.search != "greedy":  # beam:K, greedy+swap (depth/beam.py)
        from .beam import searched

        return searched(loaded, engine, units, stop, depth, progress, start, on_record)
    start = start or []
    def on_candidate(step: int, done: int, total: int) -> None:
        if progress:
            progress(f"step {step + 1}", done, total)

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


DEPTH_METHODS: dict[str, Callable[..., DepthOutcome]] = {"blockpruner": blockpruner}
UNIT_KINDS: dict[str, str] = {}  # methods whose unit is fixed (e.g. "sleb": "layer")


def unit_kind(depth: DepthConfig) -> str:
    """The unit a method removes: its ``--blocks-kind`` for block methods, ``layer`` for layer methods."""
    return UNIT_KINDS.get(depth.method) or depth.blocks_kind


from . import baselines as _baselines  # noqa: E402,F401  (registers the baselines in DEPTH_METHODS)
