"""Test oracles: reference implementations the package's fast paths are checked against, kept out of the package.

:func:`naive_greedy` is BlockPruner's search as its authors run it: a full ``model.forward`` per candidate with its
blocks skipped, the criterion from the full logits. The engine's cached greedy search
(:class:`prunekit.methods.depth.search.GreedySearch`) must choose what it chooses (tests/test_search.py,
tests/test_families.py, tests/test_smollm2.py); ``benchmarks/search_speed.py`` and ``benchmarks/gpu_check.py`` time it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from prunekit.engine.loss import counted_targets, window_nll
from prunekit.methods.depth.units import Unit
from prunekit.models.contract import Block


def naive_greedy(
    adapter, windows, units: Sequence[Unit], n_steps: int, ignore_index: int | None, *, batch_size: int = 8,
    criterion: str = "ppl", on_step: Callable[[Unit, float], None] | None = None,
) -> list[tuple[Unit, float]]:
    """The reference: a full ``model.forward`` per candidate with its blocks skipped (as the authors
    do), the criterion from the full logits. Returns ``[(unit, value)]`` per step: perplexity for
    ``'ppl'``, mean per-token ``KL(dense || pruned)`` for ``'kl'``."""
    device = next(adapter.model.parameters()).device
    batches = [ids.to(device) for ids in windows.ids.split(batch_size)]

    def logits_of(ids):
        return adapter.model(input_ids=ids, use_cache=False).logits.float()

    with torch.inference_mode():
        dense = [F.log_softmax(logits_of(ids), -1) for ids in batches] if criterion == "kl" else None
    n = counted_targets(windows.ids, ignore_index) if criterion == "ppl" else windows.n_tokens
    removed: list[Unit] = []
    out = []
    for _ in range(n_steps):
        best = (math.inf, None)
        for u in units:
            if any(set(u) & set(r) for r in removed):
                continue
            skip = [Block(b) for r in removed + [u] for b in r]
            total = 0.0
            with adapter.skipping(skip), torch.inference_mode():
                for j, ids in enumerate(batches):
                    logits = logits_of(ids)
                    if criterion == "ppl":
                        total += float(window_nll(lambda x: x, logits, ids, ignore_index, 10**9).sum())
                    else:
                        ref = dense[j]
                        total += float((ref.exp() * (ref - F.log_softmax(logits, -1))).sum(-1).clamp_min(0).double().sum())
            if total < best[0]:
                best = (total, u)
        removed.append(best[1])
        out.append((best[1], math.exp(best[0] / n) if criterion == "ppl" else best[0] / n))
        if on_step:
            on_step(*out[-1])
    return out
