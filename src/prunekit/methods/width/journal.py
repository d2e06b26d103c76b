"""Journal and resume of LLM-Pruner's gradient pass (``prune --method llm-pruner --out OUT [--resume]``).

The only long step of LLM-Pruner is the gradient pass (one forward and backward per calibration
window, accumulating ``g`` and, for the second-order importances, the Fisher diagonal ``F``; see
:mod:`prunekit.methods.width.importance`). Scoring, choosing and slicing take seconds. So the journal
(``OUT/journal.jsonl``, the same format and fingerprint rules as the depth searches,
:mod:`prunekit.core.journal`) records resumable points of that pass:

- ``OUT/.gradients.partial.safetensors``: the accumulators after ``k`` windows, the exact float32
  tensors, written to a temporary file, fsynced and renamed into place;
- then one journal line ``{"stage": "gradients", "samples": k, "losses": [...]}``.

A line is appended only after its state file is in place, so the journal never claims more than
the state holds. ``--resume`` reloads the state named by the last line and continues with window
``k + 1``; the sums go on from the same tensors in the same order, so the final plan is
byte-identical to an uninterrupted run's. A killed run before its first line starts again.

Cadence: the state is as large as the pruned weights (x2 with ``F``), so it is written after the
first window, the last, and otherwise only when the time since the previous write is at least
:data:`WRITE_FACTOR` times that write's duration (the writes then cost at most about 1/10 of the
pass). Where the points fall changes nothing in the result.
"""

from __future__ import annotations

import time
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.journal import Journal, read_state, write_state

STATE_NAME = ".gradients.partial.safetensors"
WRITE_FACTOR = 10.0


class GradientJournal:
    """Resumable points of a gradient pass in ``out`` (see the module docstring)."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool) -> None:
        self.out = Path(out)
        self.journal = Journal.open(self.out, fingerprint, resume)
        self.state_path = self.out / STATE_NAME
        self._last_write = 0.0  # seconds the previous state write took
        self._since = time.perf_counter()

    @property
    def path(self) -> Path:
        return self.journal.path

    def start(self) -> tuple[dict, dict | None, list[float]] | None:
        """The accumulators and losses of the last journaled point, or None (start from window 1)."""
        recs = [r for r in self.journal.records if r.get("stage") == "gradients"]
        if not recs:
            return None

        want = recs[-1]["samples"]
        meta, tensors = read_state(self.state_path, what="the gradient state",
                                   fix="Run without `resume` (with `overwrite`) to start the gradient pass again.")
        if int(meta.get("samples", -1)) != want:
            raise PrunekitError(
                f"`resume`: the gradient state holds {meta.get('samples')} windows, the journal says {want}.",
                "Run without `resume` (with `overwrite`) to start the gradient pass again.",
            )
        grad = {k[len("g/"):]: v for k, v in tensors.items() if k.startswith("g/")}
        fisher = {k[len("f/"):]: v for k, v in tensors.items() if k.startswith("f/")} or None
        return grad, fisher, list(recs[-1]["losses"])

    def after_sample(self, done: int, total: int, grad: dict, fisher: dict | None, losses: list[float]) -> None:
        """Called after each window: write a point when the cadence (or the first/last window) says so."""
        now = time.perf_counter()
        if not (done == 1 or done == total or now - self._since >= WRITE_FACTOR * self._last_write):
            return

        t0 = time.perf_counter()
        tensors = {f"g/{k}": v for k, v in grad.items()} | {f"f/{k}": v for k, v in (fisher or {}).items()}
        write_state(self.state_path, tensors, {"samples": str(done)})
        self.journal.append({"stage": "gradients", "samples": done, "losses": list(losses)})
        self._last_write = time.perf_counter() - t0
        self._since = time.perf_counter()

