"""budget-greedy: a greedy search over mixed units that prices each unit by what it removes.

Units: every attention block, every MLP block and every whole layer (``mix+layers``). Each step
removes the unit with the lowest rise in log calibration perplexity per unit of cost,

    key(u) = (total(S | u) - total(S)) / cost(u),

``total`` the summed next-token NLL on the calibration windows (so the rise of ``log ppl`` is the
rise of ``total`` over the token count, a constant), ``cost`` the unit's parameters
(``budget-greedy``) or its MACs per token (``budget-greedy-mac``). BlockPruner's criterion
(the lowest ``total(S | u)``) ignores size and spends a budget on many small attention blocks.

**The last step lands on the budget.** At the first step where some candidate would reach the
budget, the search takes, among the candidates that reach it, the one with the lowest total (the
lowest perplexity), and stops. With several budgets (``compare``) the per-cost path is shared:
each budget's answer is that path up to the first step where some unit reaches it, plus that
step's best reaching unit, exactly what a run for that budget alone gives; the path itself goes
on by the per-cost key. Both choices come from one pass over the candidates
(:class:`prunekit.methods.depth.search.Selection`'s further objectives), with the engine's
prefix and trajectory caches and early exit (a candidate is dropped once its partial total rules
it out of every objective). Early exit seldom acts on the per-cost key: a partial total is below
the current model's total (a negative rise) until most windows are scored, so nearly every
candidate runs to the end and a step costs far more than a BlockPruner step. The partial total
priced per unit of cost, ``(partial - current) / cost``, is the tightest exact bound on the key
that the scored windows give (a window not yet scored may have any NLL >= 0); a candidate is
dropped once it is above the step's best key, or equal to it when the tie goes to the best (the
lower unit). Which candidates or windows come first does not loosen the limit: on SmolLM2's
first step (8 windows of 64 tokens of wiki, one per batch) the 90 units' rises run from -1% to
+216% of the current total while each window holds 11-15% of it, so 14 of the 90 can be dropped
whether the best unit leads the engine's decreasing block order or all go in the order of their
keys, and scoring the windows of highest NLL first saves 2 of 720 window runs (a replay of that
step's per-window NLLs).

**Landing lookahead** (``budget-greedy-la``, ``landing`` 2): each of the first ``landing`` steps
at which some unit can reach the budget offers a landing (the path so far plus that step's best
reaching unit), and the lowest total among them wins. The path does not depend on it.

**Resuming.** Every journaled step carries its ``clock`` (seconds and counted MACs since the search
began, a killed run's included) and, whenever it offered a landing (several budgets, or ``landing``
> 1), ``landing_options``; a resumed run restores each budget's options and the clock at which its
answer became known (:class:`Landings`), so its outcomes and their stamps are the uninterrupted
run's (the stamps up to the part of a step lost at the kill).
"""

from __future__ import annotations

import math

from prunekit.engine.runner import Engine
from prunekit.methods.depth.outcome import DepthOutcome, ProgressFn, RecordFn, SearchClock, StopFn, Unit, clock_of
from prunekit.methods.depth.planner import levels_of
from prunekit.methods.depth.search import GreedySearch, Selection, StepResult
from prunekit.methods.depth.units import unit_name, unit_params
from prunekit.methods.options import DepthConfig
from prunekit.models.loading import LoadedModel

COSTS = {"params": "ppl_rise_per_param", "macs": "ppl_rise_per_mac"}  # cost -> the plan's criterion name


class PerCost(Selection):
    """Objective 0: rise of the total per unit of cost; objective ``1 + k``: the total, among the
    units that reach budget ``k`` (only while no earlier step could reach it)."""

    def __init__(self, cost: dict[Unit, float], levels: list[StopFn], initial_total: float, name: str) -> None:
        self.cost = cost
        self.levels = levels
        self.objectives = 1 + len(levels)
        self.criterion = name
        self.current = initial_total
        self.removed: list[Unit] = []
        self.open: list[bool] = [True] * len(levels)

    def begin(self, search: GreedySearch) -> None:
        if search.previous is not None:  # the last step's total is the current model's
            self.current = search.previous.score
        self.removed = list(search.removed_units)

    def keys(self, unit: Unit, total: float) -> tuple[float, ...]:
        rise = (total - self.current) / self.cost[unit]
        after = self.removed + [unit]
        return (rise, *(total if is_open and level(after) else math.inf
                        for is_open, level in zip(self.open, self.levels)))


def unit_costs(engine: Engine, units: list[Unit], cost: str) -> dict[Unit, float]:
    """Parameters (``params``) or MACs per token (``macs``) of each unit."""
    if cost == "params":
        return {u: float(unit_params(engine.adapter, u)) for u in units}
    return {u: float(sum(engine.macs[b] for b in u)) for u in units}


class Landings:
    """Each budget's landing options: ``(total, path length before it, the landing record)``.

    A budget stays open (its reaching units still scored) until ``landing`` steps have offered it an
    option; ``closed[k]`` holds the clock (``{"seconds", "macs"}``) of the moment budget ``k``'s answer
    became known. A resumed run (``start``) restores both from the journaled steps' ``landing_options``
    and ``clock``.
    """

    def __init__(self, levels: list[StopFn], landing: int, start: list[dict], done_units: list[Unit]) -> None:
        self.levels = levels
        self.options: list[list[tuple[float, int, dict]]] = [[] for _ in levels]
        self.left = [landing] * len(levels)
        self.closed: list[dict] = [{} for _ in levels]
        for i, rec in enumerate(start):  # a resumed run: the options its journaled steps offered
            for k, opt in enumerate(rec.get("landing_options") or []):
                if opt is not None and k < len(levels):
                    self.options[k].append((opt["score"], i, opt))
                    self.left[k] -= 1
                    if self.left[k] == 0:  # the step that closed budget k: its answer was known then
                        self.closed[k] = clock_of(rec) or {}

        # a budget already met by the resumed path, with no option seen, had landed before (not open)
        self.open = [self.left[k] > 0 and (bool(self.options[k]) or not level(done_units))
                     for k, level in enumerate(levels)]

    def offer(self, r: StepResult, step: int, engine: Engine, now: dict) -> list[dict | None]:
        """Record step ``step``'s best reaching unit for every open budget (``r.also``); the new options.
        ``now``: the search's clock at this step (kept for each budget this step closes)."""
        found: list[dict | None] = [None] * len(self.levels)
        for k, win in enumerate(r.also):
            if win is None or not self.open[k]:
                continue
            unit, total = win
            found[k] = {"step": step, "unit": unit_name(unit), "blocks": list(unit), "score": total,
                        "value": engine.perplexity(total), "landing": True, "prefix": step}
            self.options[k].append((total, step, found[k]))
            self.left[k] -= 1
            self.open[k] = self.left[k] > 0
            if not self.open[k]:
                self.closed[k] = dict(now)  # this budget's answer is known now
        return found

    def outcomes(self, records: list[dict], naive_macs, extra: dict, now: dict) -> list[DepthOutcome]:
        """One outcome per budget: the path before its lowest-total landing, then that landing (the
        earlier one on a tie); the whole path when no step could reach the budget. Each outcome's
        ``extra``: ``extra`` and the clock when its answer became known (``now`` for a budget still open)."""
        outs = []
        for k, options in enumerate(self.options):
            stamp = extra | now | self.closed[k]
            if not options:
                outs.append(DepthOutcome([tuple(x["blocks"]) for x in records], list(records), naive_macs, stamp))
                continue
            _, n, land = min(options, key=lambda o: (o[0], o[1]))
            outs.append(DepthOutcome([tuple(x["blocks"]) for x in records[:n]] + [tuple(land["blocks"])],
                                     records[:n] + [land], naive_macs,
                                     stamp | {"landings": [(m, rec) for _, m, rec in options]}))
        return outs


def budget_greedy(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                  progress: ProgressFn | None = None, start: list[dict] | None = None,
                  on_record: RecordFn | None = None, cost: str = "params", landing: int = 1) -> DepthOutcome:
    """The budget-aware greedy search (see the module docstring); one outcome per budget of ``stop``.

    ``landing``: how many consecutive steps, from the first where some unit reaches a budget, offer
    a landing (the path so far plus that step's best reaching unit); the lowest total among them is
    the answer (1: land at the first such step; 2: a one-step lookahead at the budget's end).
    """
    levels = levels_of(stop)
    start = list(start or [])
    name = COSTS[cost]
    extra0 = {"criterion": name} | ({"landing": landing} if landing > 1 else {})
    if start and start[-1].get("landing"):  # a resumed run that had already landed
        k = start[-1].get("prefix", len(start) - 1)
        done = start[:k] + [start[-1]]
        return DepthOutcome([tuple(r["blocks"]) for r in done], done, None, extra0 | (clock_of(start[-1]) or {}))
    done_units = [tuple(r["blocks"]) for r in start]
    clock = SearchClock(engine, start)  # seconds and MACs since the search began, a resumed run's included
    initial = start[-1]["score"] if start else engine.total_score(frozenset(b for u in done_units for b in u))

    def on_candidate(step: int, done: int, total: int) -> None:
        if progress:
            progress(f"step {step + 1}", done, total)

    lands = Landings(levels, landing, start, done_units)
    selection = PerCost(unit_costs(engine, units, cost), levels, initial, name)
    selection.open = lands.open  # the selection scores a budget's reaching units while it is open
    records = list(start)
    previous = StepResult.from_record(start[-1]) if start else None
    search = GreedySearch(engine, units, cache=depth.cache, early_exit=depth.early_exit, removed=done_units,
                          progress=on_candidate, previous=previous,
                          candidate_batch=depth.candidate_batch or engine.auto_candidate_batch(), selection=selection)
    while search.candidates() and any(lands.open):
        r = search.step()
        now = clock()
        rec = r.record() | {"clock": now}
        found = lands.offer(r, len(records), engine, now)
        if any(f is not None for f in found):
            rec["landing_options"] = found  # journaled, so a resumed run knows the options already seen
        if not any(lands.open):
            break
        records.append(rec)
        if on_record:
            on_record(rec)
    outs = lands.outcomes(records, search.naive_macs, extra0, clock())
    main = outs[-1]
    if len(levels) == 1 and on_record and lands.options[0]:
        on_record(main.records[-1] | {"clock": {k: main.extra[k] for k in ("seconds", "macs")}})
    if len(levels) > 1:
        main.extra["levels"] = outs
    return main


def budget_greedy_mac(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                      progress: ProgressFn | None = None, start: list[dict] | None = None,
                      on_record: RecordFn | None = None) -> DepthOutcome:
    """budget-greedy with each unit priced by its MACs per token instead of its parameters."""
    return budget_greedy(loaded, engine, units, stop, depth, progress=progress, start=start, on_record=on_record, cost="macs")


def budget_greedy_lookahead(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                            progress: ProgressFn | None = None, start: list[dict] | None = None,
                            on_record: RecordFn | None = None) -> DepthOutcome:
    """budget-greedy with a one-step lookahead at the budget's end (``landing`` 2)."""
    return budget_greedy(loaded, engine, units, stop, depth, progress=progress, start=start, on_record=on_record, landing=2)
