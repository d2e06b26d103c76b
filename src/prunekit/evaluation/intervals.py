"""How far apart two models' held-out perplexities really are: a paired bootstrap over the evaluation windows.

Two models scored on the same windows give, per window ``w``, summed next-token NLLs ``a[w]`` and ``b[w]`` over
``t[w]`` scored positions. Their perplexity ratio is

    ppl_A / ppl_B = exp((Σ_w a[w] - Σ_w b[w]) / Σ_w t[w])          (< 1: A is lower)

and its 95% interval comes from resampling the windows with replacement (the same draw for both models, so the
pairing cancels what the windows share): the 2.5% and 97.5% quantiles of the ratio over ``resamples`` draws, from
numpy's generator seeded with ``seed``. An interval whose upper end is below 1 says A is lower on this text beyond
what the choice of windows explains; 8 windows resolve only large gaps.

:func:`versus_best` gives each cell of a ``prunekit compare`` table its ratio against the best other cell at the
same target ratio (the lowest perplexity on that source among the other rows), with that interval.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 10_000


def paired_ppl_ratio(a: list[float], b: list[float], tokens: list[int], *, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, low, high)``: ``ppl_A / ppl_B`` over all windows and its 95% paired-bootstrap interval."""
    na, nb, t = (np.asarray(x, dtype=np.float64) for x in (a, b, tokens))
    if not (na.shape == nb.shape == t.shape) or na.size == 0:
        raise ValueError(f"paired windows differ in number: {na.size}, {nb.size}, {t.size}")
    ratio = math.exp((na.sum() - nb.sum()) / t.sum())
    idx = np.random.default_rng(seed).integers(0, na.size, size=(resamples, na.size))
    draws = np.exp((na[idx].sum(axis=1) - nb[idx].sum(axis=1)) / t[idx].sum(axis=1))
    return ratio, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def versus_best(rows: list[dict], sources: list[str], *, resamples: int = RESAMPLES, seed: int = 0) -> dict[int, dict]:
    """For each row (index into ``rows``) that has per-window NLLs: per source, ``{"other": index of the best other
    row at its target ratio, "ratio", "low", "high"}``. Rows without ``window_nll`` (cells of an older version,
    unreachable ones, the dense row) get none; a ratio with one measured row has nothing to compare."""
    out: dict[int, dict] = {}
    measured = [i for i, r in enumerate(rows) if r.get("window_nll") and not r.get("unreachable") and "target_ratio" in r]
    for i in measured:
        row, res = rows[i], {}
        for src in sources:
            others = [j for j in measured if j != i and rows[j]["target_ratio"] == row["target_ratio"]
                      and src in rows[j]["window_nll"]]
            if src not in row["window_nll"] or not others:
                continue
            j = min(others, key=lambda k: rows[k]["ppl"][src])
            ratio, low, high = paired_ppl_ratio(row["window_nll"][src], rows[j]["window_nll"][src], row["window_tokens"][src],
                                                resamples=resamples, seed=seed)
            res[src] = {"other": j, "ratio": ratio, "low": low, "high": high}
        if res:
            out[i] = res
    return out
