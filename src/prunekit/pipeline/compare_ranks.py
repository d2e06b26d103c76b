"""``prunekit compare`` under torchrun: method ``i`` runs on rank ``i mod W`` and rank 0 alone writes the shared
files; these two helpers keep the ranks in step (a refusal on rank 0, or a failure on any rank, reaches every rank
as one error instead of a rank waiting forever in a collective)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.core.errors import PrunekitError
from prunekit.engine.ranks import Ranks


def on_main(ranks: Ranks, fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 alone; its refusal is raised on every rank (the others wait for it)."""
    error = None
    if ranks.is_main:
        try:
            fn()
        except PrunekitError as e:
            error = e
    error = ranks.broadcast(error)
    if error is not None:
        raise error


def all_finished(ranks: Ranks, failure: BaseException | None) -> None:
    """Raise ``failure`` here, or a one-line error when another rank's cells failed."""
    flags = ranks.gather(torch.tensor([0.0 if failure is None else 1.0]))
    if failure is not None:
        raise failure
    failed = [r for r, f in enumerate(flags) if float(f[0]) > 0]
    if failed:
        raise PrunekitError(f"rank {failed[0]} of {ranks.world} stopped in its compare cells (its error is in its output).",
                            "Fix it and rerun the same command: the finished cells are kept.")
