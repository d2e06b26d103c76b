"""The ranks of one search under torchrun (``torch.distributed``, gloo), or a single process.

``torchrun --nproc-per-node W --no-python prunekit prune ...`` starts ``W`` copies of the command;
each reads ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` from its environment. :func:`current` joins
the process group only when ``WORLD_SIZE > 1`` (otherwise nothing of ``torch.distributed`` is
touched). The collectives exchange a few floats per round of candidates over gloo on the CPU, so
the same code runs on CPU-only and GPU machines, under Slurm or by hand.

A rank that dies makes the others' next collective fail (gloo sees the closed connection;
torchrun also stops the remaining workers): that failure is raised as one
:class:`~prunekit.core.errors.PrunekitError` naming ``resume``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prunekit.core.errors import PrunekitError

_CURRENT: "Ranks | None" = None


@dataclass(frozen=True)
class Ranks:
    """Rank ``rank`` of ``world`` processes (``world == 1``: a single process, no collectives)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.world > 1

    def owner(self, i: int) -> int:
        """The rank that runs candidate ``i`` of a step (a stable assignment)."""
        return i % self.world

    def gather(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``values`` (same shape on all ranks; float64 on the CPU), in rank order."""
        values = values.detach().to("cpu", torch.float64).contiguous()
        if not self.spread:
            return [values]
        out = [torch.empty_like(values) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(out, values))
        return out

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``values`` (same shape and dtype on all ranks), on ``values``' device."""
        if not self.spread:
            return values
        total = values.detach().to("cpu").contiguous().clone()
        self._collective(lambda: dist.all_reduce(total, op=dist.ReduceOp.SUM))
        return total.to(values.device)

    def broadcast(self, obj: object, src: int = 0) -> object:
        """``obj`` of rank ``src`` on every rank (picklable)."""
        if not self.spread:
            return obj
        box = [obj if self.rank == src else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=src))
        return box[0]

    def _collective(self, fn) -> None:
        try:
            fn()
        except (RuntimeError, dist.DistError) as e:
            first = re.sub(r"\[[^\]]*\]:?\d*\s*", "", (str(e).strip().splitlines() or [type(e).__name__])[0])
            first = first.split(". ")[0][:160]
            raise PrunekitError(
                f"rank {self.rank} of {self.world}: another rank stopped during the search ({first}).",
                "Rerun the same command with `resume` to continue from the last finished step.",
            ) from None


def requested_world() -> int:
    """The world size torchrun asked for (``WORLD_SIZE``; 1 without torchrun), without joining any group."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        raise PrunekitError(f"WORLD_SIZE '{os.environ['WORLD_SIZE']}' is not a number.",
                            "Launch with torchrun, or unset WORLD_SIZE.") from None


def current() -> Ranks:
    """This process's ranks: joins the torchrun process group (gloo) on first use when ``WORLD_SIZE > 1``."""
    global _CURRENT
    if _CURRENT is None:
        world = requested_world()
        if world <= 1:
            _CURRENT = Ranks()
        else:
            if not dist.is_initialized():
                try:
                    dist.init_process_group(backend="gloo")
                except (RuntimeError, ValueError) as e:
                    raise PrunekitError(
                        f"WORLD_SIZE is {world} but the process group could not start ({str(e).splitlines()[0][:160]}).",
                        "Launch with torchrun (it sets RANK, MASTER_ADDR and MASTER_PORT), or unset WORLD_SIZE.",
                    ) from None
            _CURRENT = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))
    return _CURRENT


def rank_device(device: str | None, ranks: Ranks) -> str | None:
    """``cuda`` without an index under several ranks means this rank's own GPU (``cuda:LOCAL_RANK``)."""
    if ranks.spread and device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return device
