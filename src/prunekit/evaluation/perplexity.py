"""Perplexity: exp of the token-weighted mean next-token NLL over all windows.

The same engine and loss as the search (:class:`prunekit.engine.runner.Engine`), so a plan's
calibration values and ``prunekit eval`` agree. ``windows.ids`` is ``[n_windows, seq_len]``;
every position but the last of a window is scored (labels equal to ``pad_token_id`` are ignored
when the model has one).
"""

from __future__ import annotations

from prunekit.data.windows import Windows
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
