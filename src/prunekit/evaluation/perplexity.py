"""Perplexity: exp of the token-weighted mean next-token NLL over all windows.

The same engine and loss as the search (:class:`prunekit.engine.runner.Engine`), so a plan's
calibration values and ``prunekit eval`` agree. ``windows.ids`` is ``[n_windows, seq_len]``;
every position but the last of a window is scored (labels equal to ``pad_token_id`` are ignored
when the model has one).
"""

from __future__ import annotations

from prunekit.data.windows import Windows
from prunekit.engine.loss import counted_targets
from prunekit.engine.onload import Onloader
from prunekit.engine.runner import Engine
from prunekit.models.loading import LoadedModel


def perplexity(loaded: LoadedModel, windows: Windows, batch_size: int = 4, onload: Onloader | None = None) -> float:
    """exp(token-weighted mean next-token NLL) of the model on ``windows`` — the search's own criterion.

    ``onload``: the model's weights brought in under a memory cap (block-major over all window
    batches, :mod:`prunekit.engine.onload`); the value is the uncapped one.
    """
    engine = Engine(loaded.adapter, windows, batch_size=batch_size, ignore_index=loaded.model.config.pad_token_id, cache_bytes=0,
                    onload=onload)
    return engine.perplexity(engine.total_score(frozenset()))


def window_nll(loaded: LoadedModel, windows: Windows, batch_size: int = 4, *,
               removed: frozenset[int] = frozenset()) -> tuple[float, list[float], list[int]]:
    """``(perplexity, nll, tokens)``: the perplexity of :func:`perplexity` (the same sums in the same order, so the
    same float), and per window ``w`` its summed next-token NLL ``nll[w]`` (float64, nats) over its ``tokens[w]``
    scored positions (``seq_len - 1`` less the labels equal to ``pad_token_id``): what a paired comparison of two
    models on the same windows resamples (:mod:`prunekit.evaluation.intervals`). ``removed``: blocks the engine
    skips (the model without them, as a depth plan would leave it, without applying the plan)."""
    ignore = loaded.model.config.pad_token_id
    engine = Engine(loaded.adapter, windows, batch_size=batch_size, ignore_index=ignore, cache_bytes=0)
    total, nll = 0.0, []
    for j in range(engine.n_batches):
        scores = engine.score(j, engine.run(j, engine.h0(j), 0, engine.num_blocks, removed))
        total += float(scores.sum())
        nll += scores.double().tolist()
    tokens = [counted_targets(windows.ids[w : w + 1], ignore) for w in range(windows.ids.shape[0])]
    return engine.perplexity(total), nll, tokens
