"""Candidate scores shared by two searches on one model and one calibration (:class:`ScoreMemo`).

A greedy step scores candidate ``u`` as the criterion summed over the windows of each batch ``j`` for the
model without ``S | u`` (``S``: the blocks already removed). Two searches on the same model, windows and
batches (``prunekit demo``: budget-greedy, then BlockPruner beside it) score the same sets while their paths
agree: every block of the dense model at step 1, and the same again at every later step while both have
removed the same blocks. With a memo given to both engines, the second reads those sums instead of running the
blocks again. A sum is stored only once its batch has run to the end, and it is the float that a run gives (the
same blocks in the same order on the same shapes: prefix and trajectory states are exact), so each search's
choices, values and plan are those it makes alone; only its counted work and wall time drop. A candidate whose
sum was read keeps no trajectory state for that batch, so at the next step it starts from the prefix.
"""

from __future__ import annotations

import json

import torch


class ScoreMemo:
    """``(removed blocks, batch j) -> criterion sum`` over batch ``j``; bound to one model, windows, batching and
    criterion by the first engine that takes it (another one is refused)."""

    def __init__(self) -> None:
        self.values: dict[tuple[frozenset[int], int], float] = {}
        self.hits = 0
        self._bound: str | None = None

    def bind(self, *, model: torch.nn.Module, windows_fingerprint: dict, batch_sizes: list[int], criterion: str,
             ignore_index: int | None) -> None:
        """Tie the memo to what its sums depend on; refuse an engine on other inputs."""
        p = next(model.parameters())
        key = json.dumps({"model": id(model), "dtype": str(p.dtype), "device": str(p.device), "windows": windows_fingerprint,
                          "batches": batch_sizes, "criterion": criterion, "ignore_index": ignore_index}, sort_keys=True)
        if self._bound is None:
            self._bound = key
        elif key != self._bound:
            raise ValueError("a ScoreMemo is shared only by engines on the same model, windows, batches and criterion")

    def get(self, removed: frozenset[int], j: int) -> float | None:
        value = self.values.get((removed, j))
        if value is not None:
            self.hits += 1
        return value

    def put(self, removed: frozenset[int], j: int, value: float) -> None:
        self.values[(removed, j)] = value
