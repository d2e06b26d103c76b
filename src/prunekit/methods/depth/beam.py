"""Searches beyond greedy for the criterion-guided depth methods: ``beam:K`` and ``greedy+swap`` (run for a method's
``search`` by :func:`prunekit.methods.depth.blockpruner.searched`).

Both run on the same :class:`prunekit.engine.Engine` (its batches, its criterion, its state store
and work counter) as :class:`prunekit.methods.depth.search.GreedySearch`, and both are deterministic: the
same inputs give the same plan.

**Beam search** (``beam:K``). Depth ``d`` of the beam holds the ``K`` best distinct sets of ``d``
units: every member's every remaining unit is tried (a set reached twice is scored once), and the
``K`` lowest criterion totals survive (ties: the better parent first, then the lower unit). The
evolution of the beam does not depend on the budget. A budget's answer is the best set that
*first* reaches it (its parent did not); the search runs until every member has reached the
largest budget, after which no set can first reach any. So one run answers several budgets
exactly as separate runs would, and ``K = 1`` is greedy itself, step for step. Candidates run from
their member's prefix state at their first block; once a candidate's partial total (batch by
batch, every term >= 0) exceeds the ``K``-th best complete total of the depth, it cannot survive
and is dropped. Candidates are tried in the order of their parent's scores, so the bound is tight
early.

**Greedy + swap** (``greedy+swap``). Greedy to the budget, then local search in rounds: put back
one removed unit ``r`` and remove another ``a`` (the budget still met), accepting the first swap
that lowers the calibration total. The full neighbourhood (|removed| x |kept| pairs, each about
half a forward) costs more than the whole greedy search, so each round first measures, exactly,
the two one-sided effects (the total with ``r`` put back alone; with ``a`` also removed alone:
|removed| + |kept| runs), tries the pairs in order of the sum of their effects, and ends after
``patience`` consecutive pairs that do not improve (``patience=None``: every pair, cheapest first,
so the result is a local optimum). A swap's model differs from the current one only from block
``min(r, a)`` on, so it runs from the current model's prefix state there, and stops early once its
partial total reaches the current total. Sets that failed once are never tried again (the total
only decreases, so they cannot succeed later). The calibration criterion can only go down; whether
held-out perplexity does is measured, not promised (BENCHMARKS.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from prunekit.core.errors import PrunekitError
from prunekit.engine.runner import Engine
from prunekit.methods.depth.outcome import ProgressFn, StopFn, Unit
from prunekit.methods.depth.units import unit_name


def _blocks(units: Sequence[Unit]) -> frozenset[int]:
    return frozenset(b for u in units for b in u)


class PrefixStates:
    """States of the model without ``removed`` at block boundaries on every batch.

    Kept in the engine's store every ``stride`` boundaries (within its budget); a state between
    kept ones is recomputed from the nearest kept one before it (or from the embeddings).
    """

    def __init__(self, engine: Engine, removed: frozenset[int], tag: Hashable, stride: int) -> None:
        self.engine, self.removed, self.tag, self.stride = engine, removed, tag, max(1, stride)
        e = engine
        for j in range(e.n_batches):
            h = e.h0(j)
            for b in range(self.stride, e.num_blocks, self.stride):
                h = e.run(j, h, b - self.stride, b, removed)
                if not e.store.put(("beam-prefix", tag, b, j), h):
                    break

    def state(self, b: int, j: int) -> torch.Tensor:
        e = self.engine
        c = (b // self.stride) * self.stride
        while c > 0:
            item = e.store.get(("beam-prefix", self.tag, c, j))
            if item is not None:
                return e.run(j, item[1].to(e.device), c, b, self.removed)
            c -= self.stride
        return e.run(j, e.h0(j), 0, b, self.removed)

    def drop(self) -> None:
        self.engine.store.drop(lambda k: k[0] == "beam-prefix" and k[1] == self.tag)


def _stride(engine: Engine, n_sets: int) -> int:
    need = n_sets * (engine.num_blocks + 1) * engine.state_bytes()
    return max(1, math.ceil(need / max(engine.store.budget, 1.0)))


def _evaluate(engine: Engine, prefix: PrefixStates, start: int, removed: frozenset[int], bound: float, *,
              early_exit: bool, strict: bool = True) -> float | None:
    """Criterion total of the model without ``removed``, from ``prefix``'s state at ``start``.

    None when early exit drops it: its partial total passed ``bound`` (``>`` when ``strict``,
    else ``>=``) before the last batch; it cannot then end at or under (under) the bound.
    """
    e = engine
    partial = 0.0
    for j in range(e.n_batches):
        h = prefix.state(start, j)
        h = e.run(j, h, start, e.num_blocks, removed)
        partial += float(e.score(j, h).sum())
        if early_exit and j < e.n_batches - 1 and (partial > bound if strict else partial >= bound):
            return None
    return partial


@dataclass
class Member:
    """A set of removed units reached in a given order, with the criterion total after each step."""

    path: tuple[Unit, ...]
    totals: tuple[float, ...]
    removed: frozenset[int] = field(default_factory=frozenset)


@dataclass
class LevelResult:
    """The answer for one budget: units in removal order, totals after each, search seconds."""

    path: list[Unit]
    totals: list[float]
    seconds: float
    macs: float = 0.0  # the engine's counted work when the answer was known


def beam_search(engine: Engine, units: Sequence[Unit], stops: Sequence[StopFn], width: int, *,
                early_exit: bool = True, progress: ProgressFn | None = None) -> tuple[list[LevelResult], float]:
    """Beam search of ``width`` (see the module docstring). Returns one result per stop, and the naive MACs."""
    e = engine
    t0 = time.perf_counter()
    units = [tuple(u) for u in units]
    beam = [Member((), (), frozenset())]
    best: list[Member | None] = [None] * len(stops)
    seconds: list[float | None] = [None] * len(stops)
    macs = [0.0] * len(stops)
    w0 = e.counter.total_macs
    hints: dict[frozenset[int], float] = {}
    naive = 0.0
    depth = 0
    while True:
        for i, stop in enumerate(stops):
            if seconds[i] is None and all(stop(list(m.path)) for m in beam):
                seconds[i] = time.perf_counter() - t0
                macs[i] = e.counter.total_macs - w0
        if all(s is not None for s in seconds):
            break
        stride = _stride(e, len(beam))
        seen: set[frozenset[int]] = set()
        done: list[tuple[float, int, Unit, Member]] = []
        tops: list[float] = []  # the `width` best complete totals so far, sorted
        n_cands = sum(sum(1 for u in units if not set(u) & m.removed) for m in beam)
        tried = 0
        for rank, m in enumerate(beam):
            parent = _blocks(m.path[:-1])
            cands = [u for u in units if not set(u) & m.removed]
            cands.sort(key=lambda u: (hints.get(parent | set(u)) is None, hints.get(parent | set(u), 0.0), -u[0], u))
            prefix = PrefixStates(e, m.removed, ("beam", depth, rank), stride)
            for u in cands:
                tried += 1
                new = m.removed | set(u)
                if new in seen:
                    continue
                seen.add(new)
                naive += e.naive_candidate_macs(m.removed, u)
                bound = tops[-1] if len(tops) >= width else math.inf
                total = _evaluate(e, prefix, u[0], new, bound, early_exit=early_exit)
                if total is not None:
                    done.append((total, rank, u, m))
                    tops = sorted(tops + [total])[:width]
                if progress:
                    progress(f"beam depth {depth + 1}", tried, n_cands)
            prefix.drop()
        if not done:
            break
        done.sort(key=lambda t: (t[0], t[1], t[2]))
        hints = {m.removed | set(u): total for total, _, u, m in done}
        beam = [Member(m.path + (u,), m.totals + (total,), m.removed | set(u)) for total, _, u, m in done[:width]]
        for m in beam:
            for i, stop in enumerate(stops):
                if seconds[i] is None and stop(list(m.path)) and not stop(list(m.path[:-1])):
                    if best[i] is None or (m.totals[-1], len(m.path)) < (best[i].totals[-1], len(best[i].path)):
                        best[i] = m
        depth += 1
    out = []
    for i, m in enumerate(best):
        if m is None:
            raise PrunekitError("the beam search ran out of units before reaching the budget.", "Use a smaller `ratio` or `remove`.")
        done_at = seconds[i] if seconds[i] is not None else time.perf_counter() - t0
        out.append(LevelResult(list(m.path), list(m.totals), done_at, macs[i] if seconds[i] is not None else e.counter.total_macs - w0))
    return out, naive


@dataclass
class SwapResult:
    """Greedy's units with accepted swaps applied: ``path`` = kept units in greedy order, then the swapped-in ones."""

    path: list[Unit]
    total: float
    swaps: list[dict]
    evaluated: int
    dropped: int
    seconds: float
    macs: float = 0.0  # the engine's counted work of the swap search
    naive_macs: float = 0.0  # a full forward per evaluated set


SWAP_PATIENCE = 16  # consecutive non-improving swaps tried (in estimated order) before a round gives up


def swap_refine(engine: Engine, units: Sequence[Unit], path: Sequence[Unit], total: float, stop: StopFn, *,
                early_exit: bool = True, progress: ProgressFn | None = None,
                patience: int | None = SWAP_PATIENCE) -> SwapResult:
    """Local swap search from ``path`` (criterion total ``total``); see the module docstring.

    ``patience=None`` tries every swap of a round (cheapest first), so the result is a local
    optimum under single swaps; otherwise pairs are ordered by their one-sided estimate and a
    round stops after ``patience`` consecutive failures.
    """
    e = engine
    t0 = time.perf_counter()
    w0 = e.counter.total_macs
    units = [tuple(u) for u in units]
    kept = [tuple(u) for u in path]
    added: list[Unit] = []
    swaps: list[dict] = []
    failed: set[frozenset[int]] = set()
    evaluated = dropped = 0
    naive = 0.0
    while True:
        current = kept + added
        removed = _blocks(current)
        pairs = []
        for r in current:
            rest = [u for u in current if u != r]
            for a in units:
                if a == r or set(a) & removed:
                    continue
                new = (removed - set(r)) | set(a)
                if new in failed or not stop(rest + [a]):
                    continue
                pairs.append((min(r[0], a[0]), r, a, new))
        if not pairs:
            break
        prefix = PrefixStates(e, removed, ("swap", len(swaps)), _stride(e, 1))
        stage = f"swap round {len(swaps) + 1}"
        if patience is None:
            pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        else:  # one-sided effects, exact: the model with r put back, the model with a also removed
            sides = sorted({p[1] for p in pairs} | {p[2] for p in pairs}, key=lambda u: -u[0])
            side: dict[Unit, float] = {}
            for n, u in enumerate(sides):
                new = (removed - set(u)) if u in current else (removed | set(u))
                side[u] = _evaluate(e, prefix, u[0], new, math.inf, early_exit=False) - total
                naive += e.naive_candidate_macs(new, ())
                if progress:
                    progress(f"{stage}: one-sided effects", n + 1, len(sides))
            pairs.sort(key=lambda p: (side[p[1]] + side[p[2]], -p[0], p[1], p[2]))
        accepted, fails = None, 0
        for n, (start, r, a, new) in enumerate(pairs):
            got = _evaluate(e, prefix, start, new, total, early_exit=early_exit, strict=False)
            naive += e.naive_candidate_macs(new, ())
            if got is None:
                dropped += 1
            else:
                evaluated += 1
            if progress:
                progress(stage, n + 1, len(pairs))
            if got is not None and got < total:
                accepted = (r, a, got)
                break
            failed.add(new)
            fails += 1
            if patience is not None and fails >= patience:
                break
        prefix.drop()
        if accepted is None:
            break
        r, a, got = accepted
        swaps.append({"put_back": unit_name(r), "removed": unit_name(a), "score": got, "before": total})
        if r in kept:
            kept.remove(r)
        else:
            added.remove(r)
        added.append(a)
        total = got
    return SwapResult(kept + added, total, swaps, evaluated, dropped, time.perf_counter() - t0, e.counter.total_macs - w0, naive)
