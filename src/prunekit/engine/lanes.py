"""Lanes: a few worker threads that run a group's candidates side by side on the CPU.

On a CPU the matrix products of a small model already run near the cores' peak with one thread
each, but torch's intra-op threads meet at a barrier after every operation (a decoder block is
about twenty of them), and those barriers cost more the smaller the operation and the busier the
machine. A :class:`Lanes` pool has ``n`` worker threads, each set once to ``threads`` intra-op
threads (``torch.set_num_threads`` is per thread for OpenMP and MKL); a group of candidates is
spread over them, each candidate running alone in one lane (its blocks and its head), so the
cores work on different candidates instead of splitting each operation. Every candidate's
arithmetic is that of a run alone: the same kernels on the same shapes, so the same bits
(``tests/test_lanes.py`` checks a search with lanes against one without, bit for bit).

Torch releases the GIL inside its kernels; the Python between them (a few hundred microseconds
per block) is serialised, which is small beside the kernels of the models searched here.
Pools are kept per process and shared by engines (:func:`lanes`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[tuple[int, int, int], "Lanes"] = {}
_POOLS_LOCK = threading.Lock()


class Lanes:
    """``n`` worker threads with ``threads`` intra-op torch threads each; :meth:`map` runs work on them in order."""

    def __init__(self, n: int, threads: int = 1) -> None:
        if n < 1 or threads < 1:
            raise ValueError(f"lanes need n >= 1 and threads >= 1, got n={n}, threads={threads}")
        self.n = n
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="prunekit-lane")
        started = threading.Barrier(n, timeout=60)
        main = torch.get_num_threads()

        def pin() -> None:
            # A thread's first torch call sets its count from the process's (at::init_num_threads): make that
            # call first, so that it cannot later undo this thread's own setting.
            torch.get_num_threads()
            torch.set_num_threads(threads)
            started.wait()  # every worker holds one task until all have started: each is pinned once

        for f in [self._pool.submit(pin) for _ in range(n)]:
            f.result()
        # at::set_num_threads also stores the count that threads started later begin with: this
        # thread's count again, so that only the lanes run with ``threads``.
        torch.set_num_threads(main)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]``, run on the lanes; the first exception is raised here."""
        return list(self._pool.map(fn, items))


def lanes(n: int, threads: int = 1) -> Lanes:
    """The process's pool of ``n`` lanes with ``threads`` intra-op threads each (made on first use)."""
    key = (os.getpid(), n, threads)  # a forked child starts without the parent's worker threads
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = Lanes(n, threads)
        return _POOLS[key]
