"""What a depth method returns: the units it removes in order, one record per unit, counted work.

A depth method is a function ``(loaded, engine, units, stop, depth, progress, start, on_record) ->
DepthOutcome``; it never mutates the model. The pipeline turns the outcome into a plan
(:func:`prunekit.plan.schema.build_plan`) and :func:`prunekit.plan.apply.apply_plan` applies it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prunekit.engine.runner import Engine

Unit = tuple[int, ...]
ProgressFn = Callable[[str, int, int], None]
StopFn = Callable[[list[Unit]], bool]
RecordFn = Callable[[dict], None]


@dataclass
class DepthOutcome:
    """What a method decided: units removed in order, one record per unit, and counted work."""

    units: list[Unit]
    records: list[dict]
    naive_macs: float | None = None
    extra: dict = field(default_factory=dict)


class SearchClock:
    """Wall seconds and counted MACs of one search since it began, carried across a resume.

    A step record may hold ``clock`` = ``{"seconds", "macs"}``: the search's cost when that step
    finished, the work of earlier (killed) runs included. A clock made with the resumed steps
    (``start``) counts on from the last one's ``clock``, so a stamp is the cost before the kill plus
    the cost since; the part of a step in progress at the kill is not counted (it left no record).
    ``t0``: when this run's clock started (default: now); the MACs are read live from ``engine.counter``.
    """

    def __init__(self, engine: Engine, start: list[dict] | None = None, t0: float | None = None) -> None:
        self.engine = engine
        self.t0 = time.perf_counter() if t0 is None else t0
        self.w0 = engine.counter.total_macs
        base = clock_of(start[-1]) if start else None
        self.base = base or {"seconds": 0.0, "macs": 0.0}

    def __call__(self) -> dict:
        return {"seconds": self.base["seconds"] + time.perf_counter() - self.t0,
                "macs": self.base["macs"] + self.engine.counter.total_macs - self.w0}


def clock_of(record: dict) -> dict | None:
    """The ``clock`` a step record carries (``{"seconds", "macs"}``), or None (a record without one)."""
    c = record.get("clock")
    return {"seconds": float(c["seconds"]), "macs": float(c["macs"])} if c else None
