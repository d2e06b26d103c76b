"""Greedy search over depth units on the block-stepping engine, exact and fast.

One greedy step evaluates every remaining unit ``u`` (the model without ``S | u``, ``S`` the
units removed so far) and removes the one with the lowest criterion total (ties: lowest block).
Three savings, each leaving the choice exactly the one a full forward per candidate would make:

1. **Prefix cache.** States of the current model at block boundaries are kept; candidate ``u``
   starts at its first block from the kept state (memory-budgeted; past the budget they are kept
   at every k-th boundary and the rest recomputed from the nearest one).
2. **Trajectory cache.** Candidates are evaluated in decreasing block order (after the ``lead``
   best of the previous step, which give early exit a good bound). When ``u`` is evaluated, every
   unit after it has been, so the only unit after ``u`` that can still win the step is ``q_u``,
   the best of those. ``u``'s state at ``q_u``'s boundary is kept. If the step removes ``p`` and
   ``p`` lies after ``u``, then ``p == q_u``, and at the next step ``u`` (the model without
   ``S | p | u``) resumes from that state and runs only the blocks after ``p``.
3. **Early exit.** Windows are scored batch by batch; once a candidate's partial total exceeds the
   best complete total of the step it cannot win (every term is >= 0) and is dropped; so is one whose
   partial total equals it when the tie would go to the best (the lower unit wins a tie).

Which candidate wins is a :class:`Selection`: by default the lowest total (BlockPruner, SLEB,
FinerCut). A selection may rank by any key that does not decrease as the total grows (e.g. the
rise of the total per parameter removed), and may ask for the winners of further objectives
(``StepResult.also``); the three savings above hold for any such key, since a partial total gives
a lower bound on the key and the trajectory argument only needs one argmin per step.

All work is counted (:class:`prunekit.engine.WorkCounter`) beside the work a naive search (a full
forward per candidate) would run for the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from prunekit.engine.runner import Engine
from prunekit.methods.depth.units import Unit, unit_name

CACHE_MODES = ("none", "prefix", "trajectory")


@dataclass
class StepResult:
    """One finished greedy step: the unit removed and the criterion of the model after removing it."""

    step: int
    unit: Unit
    score: float          # criterion total over all windows (summed NLL for 'ppl')
    value: float          # perplexity for 'ppl'; mean per-token divergence for 'kl'
    evaluated: int        # candidates scored to the end
    dropped: int          # candidates dropped by early exit
    ranking: list = field(default_factory=list)  # [(unit, total or None, partial)] of this step
    also: list = field(default_factory=list)  # [(unit, total) or None] per further objective of the selection

    def record(self) -> dict:
        """The step as JSON: what the plan keeps, plus the candidates' ranking (for the journal)."""
        return {"step": self.step, "unit": unit_name(self.unit), "blocks": list(self.unit),
                "score": self.score, "value": self.value, "evaluated": self.evaluated, "dropped": self.dropped,
                "ranking": [[list(u), total, partial] for u, total, partial in self.ranking]}

    @classmethod
    def from_record(cls, rec: dict) -> "StepResult":
        ranking = [(tuple(u), total, partial) for u, total, partial in rec.get("ranking", [])]
        return cls(rec["step"], tuple(rec["blocks"]), rec["score"], rec["value"], rec.get("evaluated", 0),
                   rec.get("dropped", 0), ranking)


ProgressFn = Callable[[int, int, int], None]


class Selection:
    """How a greedy step ranks its candidates: ``keys(unit, total)`` per objective, lowest wins.

    Objective 0 decides the step; further objectives (a budget's last step, say) only report their
    winner in ``StepResult.also``. Every key must not decrease as ``total`` grows (early exit
    bounds a key by the candidate's partial total); ``math.inf`` means "not eligible". The default
    is the criterion total itself. :meth:`begin` is called at the start of each step.
    """

    criterion = "total"
    objectives = 1

    def begin(self, search: "GreedySearch") -> None:
        """Prepare the step's context (e.g. the current model's total) from ``search``."""

    def keys(self, unit: Unit, total: float) -> tuple[float, ...]:
        return (total,)


LOWEST_TOTAL = Selection()


class GreedySearch:
    """Greedy removal of ``units`` on ``engine`` (see the module docstring)."""

    def __init__(
        self, engine: Engine, units: Sequence[Unit], *, cache: str = "trajectory", early_exit: bool = True,
        lead: int = 1, removed: Sequence[Unit] = (), progress: ProgressFn | None = None,
        previous: StepResult | None = None, candidate_batch: int = 1, selection: Selection = LOWEST_TOTAL,
    ) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.engine = engine
        self.units = [tuple(u) for u in units]
        self.cache = cache
        self.early_exit = early_exit
        self.lead = lead
        self.candidate_batch = max(1, int(candidate_batch))
        self.progress = progress
        self.selection = selection
        self.removed_units: list[Unit] = [tuple(u) for u in removed]
        self.removed: frozenset[int] = frozenset(b for u in self.removed_units for b in u)
        self.naive_macs = 0.0
        self._keys: dict[Unit, float] = {}  # objective-0 keys of this step's finished candidates
        self._prev: StepResult | None = previous  # the last finished step (its ranking orders the next)
        self._step = len(self.removed_units)
        n_bound = engine.num_blocks + 1
        per_boundary = engine.state_bytes()
        budget = engine.store.budget / 2 if cache == "trajectory" else engine.store.budget
        self._stride = max(1, math.ceil(n_bound * per_boundary / max(budget, 1.0)))
        self._rebuild_prefix(0)

    @property
    def previous(self) -> StepResult | None:
        """The last finished step (its ``score`` is the current model's total), or None before the first."""
        return self._prev

    # --- prefix states of the current model ----------------------------------------------------
    def _prefix_key(self, b: int, j: int):
        return ("prefix", b, j)

    def _rebuild_prefix(self, start: int) -> None:
        """Recompute kept prefix states at boundaries after ``start`` for the current removed set
        (block-major: every window batch at a block before the next block, so under a memory cap
        each block's weights come in once)."""
        e = self.engine
        e.store.drop(lambda k: k[0] == "prefix" and k[1] > start)
        if self.cache == "none":
            return
        begin = [self._nearest_prefix(start, j) for j in range(e.n_batches)]
        hs = [h for _, h in begin]
        for b in range(min(b0 for b0, _ in begin), e.num_blocks + 1):
            for j, (b0, _) in enumerate(begin):
                if b < b0:
                    continue
                if b > start and b % self._stride == 0 and b not in self.removed:
                    e.store.put(self._prefix_key(b, j), hs[j])
                if b < e.num_blocks:
                    hs[j] = e.run(j, hs[j], b, b + 1, self.removed)

    def _nearest_prefix(self, b: int, j: int) -> tuple[int, torch.Tensor]:
        for c in range(b, 0, -1):
            item = self.engine.store.get(self._prefix_key(c, j))
            if item is not None:
                return c, item[1].to(self.engine.device)
        return 0, self.engine.h0(j)

    def prefix_state(self, b: int, j: int) -> torch.Tensor:
        """State of the current model just before block ``b`` on batch ``j``."""
        c, h = self._nearest_prefix(b, j) if self.cache != "none" else (0, self.engine.h0(j))
        return self.engine.run(j, h, c, b, self.removed)

    # --- one step --------------------------------------------------------------------------------
    def candidates(self) -> list[Unit]:
        return [u for u in self.units if not (set(u) & self.removed)]

    def _order(self, cands: list[Unit]) -> list[Unit]:
        rest = sorted(cands, key=lambda u: u[0], reverse=True)
        if self._prev is None or self.lead <= 0:
            return rest
        key = self.selection.keys
        ranked = [u for u, total, partial in sorted(
            self._prev.ranking, key=lambda it: (it[1] is None, key(it[0], it[2])[0], it[0])) if u in cands]
        lead = ranked[: self.lead]
        return lead + [u for u in rest if u not in lead]

    def step(self) -> StepResult:
        """Evaluate every candidate and remove the best one.

        Under several ranks (``engine.ranks``), candidate ``i`` of the order runs on rank ``i mod W``
        and each group's totals are gathered before the next group, so every rank keeps the same
        ``completed`` list, bound and choice, and each rank's trajectory states stay its own.
        """
        e = self.engine
        ranks = e.ranks
        cands = self.candidates()
        if not cands:
            raise RuntimeError("no candidates left")
        sel = self.selection
        sel.begin(self)
        order = self._order(cands)
        index = {u: i for i, u in enumerate(order)}
        lead = set(order[: self.lead]) if self._prev is not None else set()
        prev_p = self._prev.unit if self._prev is not None else None
        for u in cands:
            self.naive_macs += e.naive_candidate_macs(self.removed, u)
        n_obj = sel.objectives
        best: list[tuple[float, Unit | None, float]] = [(math.inf, None, math.inf)] * n_obj  # (key, unit, total)
        ranking = []
        completed: list[tuple[Unit, float]] = []
        self._keys = {}
        done = 0
        for group in self._groups(order, lead):
            targets = [self._target(u, lead, completed) for u in group]
            partial = [0.0] * len(group)
            alive = [i for i, u in enumerate(group) if ranks.owner(index[u]) == ranks.rank]
            for j in range(e.n_batches):
                if not alive:
                    break
                known = {i: e.memo.get(self.removed | set(group[i]), j) for i in alive} if e.memo is not None else {}
                run = [i for i in alive if known.get(i) is None]
                scores = self._score_candidates([group[i] for i in run], j, prev_p, [targets[i] for i in run], group) if run else []
                for i, score in zip(run, scores):
                    known[i] = float(score.sum())
                    if e.memo is not None:
                        e.memo.put(self.removed | set(group[i]), j, known[i])
                for i in alive:
                    partial[i] += known[i]
                if self.early_exit and j < e.n_batches - 1:
                    alive = [i for i in alive if not _beaten(group[i], sel.keys(group[i], partial[i]), best)]
            if ranks.spread:
                partial, alive = self._share(group, index, partial, alive)
            for i, u in enumerate(group):
                e.store.drop(lambda k, u=u: k[0] == "traj" and k[1] == self._step - 1 and k[2] == u)
                finished = i in alive
                if finished:
                    completed.append((u, partial[i]))
                    keys = sel.keys(u, partial[i])
                    self._keys[u] = keys[0]
                    for k, key in enumerate(keys):
                        if key < math.inf and (key < best[k][0] or (key == best[k][0] and u < best[k][1])):
                            best[k] = (key, u, partial[i])
                ranking.append((u, partial[i] if finished else None, partial[i]))
                done += 1
                if self.progress:
                    self.progress(self._step, done, len(order))
            if len(group) > 1:
                self._settle_kept(group, lead, completed)
        e.store.drop(lambda k: k[0] == "traj" and k[1] < self._step)
        _, best_unit, best_total = best[0]
        result = StepResult(
            self._step, best_unit, best_total, self._value(best_total), len(completed),
            len(order) - len(completed), ranking, [(b[1], b[2]) if b[1] is not None else None for b in best[1:]],
        )
        self._apply(result)
        return result

    def _share(self, group: list[Unit], index: dict, partial: list[float], alive: list[int]) -> tuple[list[float], list[int]]:
        """Every rank's partial totals and finished flags for ``group``, each taken from the rank that ran it."""
        ranks = self.engine.ranks
        mine = torch.tensor([[partial[i], float(i in alive)] for i in range(len(group))], dtype=torch.float64)
        every = ranks.gather(mine)
        rows = [every[ranks.owner(index[u])][i] for i, u in enumerate(group)]
        return [float(r[0]) for r in rows], [i for i, r in enumerate(rows) if r[1] > 0]

    def _groups(self, order: list[Unit], lead: set[Unit]) -> Iterator[list[Unit]]:
        """Candidates in ``order``, ``candidate_batch`` per rank at a time (the lead alone, so its total
        bounds the rest)."""
        i = 0
        while i < len(order):
            k = 1 if order[i] in lead else self.candidate_batch * self.engine.ranks.world
            group = [order[i]]
            while len(group) < k and i + len(group) < len(order) and order[i + len(group)] not in lead:
                group.append(order[i + len(group)])
            i += len(group)
            yield group

    def _target(self, u: Unit, lead: set[Unit], completed: list[tuple[Unit, float]]) -> Unit | None:
        """The later unit at whose boundary ``u``'s state is kept: the best finished one after it."""
        if self.cache != "trajectory" or u in lead:
            return None
        after = [(self._keys[v], v) for v, _ in completed if v[0] > u[-1]]
        return min(after)[1] if after else None

    def _candidate_start(self, u: Unit, j: int, prev_p: Unit | None) -> tuple[int, torch.Tensor]:
        """Where candidate ``u`` starts on batch ``j``: its kept trajectory state after the unit removed
        at the previous step, else the current model's prefix state at ``u``."""
        e = self.engine
        if prev_p is not None and u[-1] < prev_p[0]:
            item = e.store.get(("traj", self._step - 1, u, j))
            if item is not None and item[0] == prev_p[0]:
                return prev_p[0], item[1].to(e.device)
        return u[0], self.prefix_state(u[0], j)

    def _score_candidates(self, units: list[Unit], j: int, prev_p: Unit | None, targets: list[Unit | None],
                          group: list[Unit]) -> list[torch.Tensor]:
        """The criterion per window of batch ``j`` (float64 ``[batch]``) for the current model without each of ``units``.

        A group of one runs alone and keeps its state at its ``target``'s boundary. A larger group
        (a candidate group, or a round spread over ranks, of which ``units`` are this rank's) runs
        through :meth:`Engine.evaluate_group` (side by side in lanes on the CPU, stacked on an
        accelerator); since the best later unit may be in the same group, each keeps its state at
        the boundaries of its target and of every later unit of the group, and
        :meth:`_settle_kept` keeps the one a one-by-one search would have kept.
        """
        e = self.engine
        if len(group) == 1:
            (u,), (target,) = units, targets
            start, h = self._candidate_start(u, j, prev_p)
            skip = self.removed | set(u)
            if target is not None and target[0] > start:
                h = e.run(j, h, start, target[0], skip)
                e.store.put(("traj", self._step, u, j), h, meta=target[0])
                start = target[0]
            return [e.score(j, e.run(j, h, start, e.num_blocks, skip))]
        items = []
        for u, target in zip(units, targets):
            start, h = self._candidate_start(u, j, prev_p)
            keep = {v[0] for v in group if v[0] > u[-1]} if self.cache == "trajectory" else set()
            if target is not None:
                keep.add(target[0])
            items.append((start, h, self.removed | set(u), tuple(sorted(b for b in keep if b > start))))
        scores = []
        for u, (score, kept) in zip(units, e.evaluate_group(j, items)):
            for b, state in kept.items():
                e.store.put(("group", self._step, u, j, b), state)
            scores.append(score)
        return scores

    def _settle_kept(self, group: list[Unit], lead: set[Unit], completed: list[tuple[Unit, float]]) -> None:
        """After a stacked group: keep each unit's state at its best finished later unit's boundary only."""
        e = self.engine
        for u in group:
            target = self._target(u, lead, completed)
            if target is not None:
                for j in range(e.n_batches):
                    item = e.store.get(("group", self._step, u, j, target[0]))
                    if item is not None:
                        e.store.pop(("group", self._step, u, j, target[0]))
                        e.store.put(("traj", self._step, u, j), item[1], meta=target[0])
        e.store.drop(lambda k: k[0] == "group")  # the states at the other boundaries

    def _value(self, total: float) -> float:
        if self.engine.criterion == "ppl":
            return self.engine.perplexity(total)
        return total / self.engine.n_targets

    def _apply(self, result: StepResult) -> None:
        self.removed_units.append(result.unit)
        self.removed = self.removed | set(result.unit)
        self._prev = result
        self._step += 1
        self._rebuild_prefix(result.unit[0])

    def run(self, should_stop: Callable[[list[Unit]], bool], on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
        """Greedy steps until ``should_stop(removed units)`` or no candidate is left."""
        results = []
        while self.candidates() and not should_stop(self.removed_units):
            r = self.step()
            results.append(r)
            if on_step:
                on_step(r)
        return results


def _beaten(unit: Unit, keys: tuple[float, ...], best: list[tuple[float, Unit | None, float]]) -> bool:
    """True when ``unit``, whose final keys are at least ``keys`` (a lower bound from its partial total),
    can win no objective: each key is ineligible, above that objective's best, or equal to it with the
    best's unit lower (a tie goes to the lower unit, and an objective's best only falls)."""
    return all(not key < math.inf or key > b[0] or (key == b[0] and b[1] is not None and b[1] < unit)
               for key, b in zip(keys, best))
