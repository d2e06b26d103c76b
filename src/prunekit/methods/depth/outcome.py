"""What a depth method returns: the units it removes in order, one record per unit, counted work.

A depth method is a function ``(loaded, engine, units, stop, depth, progress, start, on_record) ->
DepthOutcome``; it never mutates the model. The pipeline turns the outcome into a plan
(:func:`prunekit.plan.schema.build_plan`) and :func:`prunekit.plan.apply.apply_plan` applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
