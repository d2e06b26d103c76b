"""LLM-Pruner inside ``prunekit compare``: width-pruned cells beside the depth methods.

``--methods llm-pruner`` (the default importance, ``param_first``) or ``llm-pruner/IMPORTANCE``
(``llm-pruner/l2``, ``llm-pruner/element1``...) runs the block strategy with its default layer
range at every ratio. On the same footing as the depth methods: the gradients come from the same
calibration windows (source, length and count as ``--calib``/``--seq-len``/``--windows``), once
per method (every ratio and Taylor importance reuses them), each ratio removes at least that fraction
of the parameters (``--at-least``, the depth methods' rule), and each ratio's pruned model is a copy
of the loaded one, evaluated on the same held-out windows.

A width cell has no removed blocks; it records the heads and MLP channels removed
(``width_removed``) and its ``search_seconds`` is the gradient pass plus that ratio's scoring. Its
``search_work`` is ``None``: the block engine does not count a backward pass.

A ratio that the uniform fraction cannot reach (it would remove every KV group or every MLP channel
of a layer in the range) is found by :func:`unreachable_ratios` before the gradient pass, with the
same check ``prune_width`` runs first; ``compare`` records it as an unreachable cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.data.calibration import CalibConfig
from prunekit.methods.width.llm_pruner import choose_groups, families_for, width_gradients
from prunekit.methods.width.options import IMPORTANCES, WidthConfig
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.prune import prune_width

WIDTH_METHOD = "llm-pruner"


def check_variant(variant: str) -> str:
    """``llm-pruner/VARIANT``: an importance name (``greedy``, the default search, means ``param_first``)."""
    if variant in ("", "greedy"):
        return WidthConfig().importance
    check_choice("`methods` llm-pruner/IMPORTANCE", variant, IMPORTANCES)
    return variant


def width_removed(adapter, width: dict) -> dict:
    """Heads and MLP channels the plan's ``width`` record removes, counted on the base ``adapter``, and
    the layers whose attention / MLP it narrows (for the layer map)."""
    heads = channels = 0
    attn_layers, mlp_layers = [], []
    for entry in width["layers"]:
        layer = entry["layer"]
        if "num_heads" in entry and entry["num_heads"] < adapter.head_counts(layer)[0]:
            heads += adapter.head_counts(layer)[0] - entry["num_heads"]
            attn_layers.append(layer)
        if "intermediate_size" in entry and entry["intermediate_size"] < adapter.mlp_width(layer):
            channels += adapter.mlp_width(layer) - entry["intermediate_size"]
            mlp_layers.append(layer)
    return {"heads": heads, "mlp_channels": channels, "attn_layers": attn_layers, "mlp_layers": mlp_layers}


def unreachable_ratios(loaded: LoadedModel, importance: str, ratios: list[float], n_windows: int, *,
                       ratio_of: str = "total") -> dict[float, str]:
    """The ratios (of ``ratio_of``: total or decoder parameters) no llm-pruner plan reaches on ``loaded``, each with the
    reason (the refusal ``prune_width`` would raise: the same choice on zero scores, which needs no gradients)."""
    adapter = loaded.adapter
    found = {}
    for ratio in ratios:
        width = WidthConfig(ratio=ratio, ratio_of=ratio_of, importance=importance, samples=n_windows, at_least=True)
        families, _ = families_for(adapter, width)
        try:
            choose_groups(width, families, [torch.zeros(f.n, dtype=torch.float64) for f in families], adapter)
        except PrunekitError as e:
            found[ratio] = str(e)
    return found


def width_cells(
    loaded: LoadedModel, importance: str, ratios: list[float], calib: CalibConfig, n_windows: int, *,
    evaluate: Callable[[LoadedModel], object], progress=None, ratio_of: str = "total",
):
    """Yield ``(ratio, plan, measured, params_after, seconds, removed)`` for each ratio; ``loaded`` is left unchanged.

    ``measured = evaluate(pruned)``: what the caller measures on a pruned copy (compare: the perplexity and the
    per-window NLLs per source); ``n_windows``: the
    calibration windows the depth methods use (the gradient samples); ``ratio_of``: what the ratios are fractions of.
    """
    t0 = time.perf_counter()
    base = WidthConfig(ratio=max(ratios), ratio_of=ratio_of, importance=importance, samples=n_windows, at_least=True)
    grads = width_gradients(loaded, base, calib, progress) if base.needs_gradients else None
    grad_seconds = time.perf_counter() - t0
    for ratio in ratios:
        t1 = time.perf_counter()
        res = prune_width(loaded, WidthConfig(ratio=ratio, ratio_of=ratio_of, importance=importance, samples=n_windows,
                                              at_least=True), calib,
                          progress=progress, gradients=grads)
        seconds = grad_seconds + time.perf_counter() - t1
        removed = width_removed(loaded.adapter, res.plan["width"])
        yield ratio, res.plan, evaluate(res.loaded), res.loaded.adapter.total_params(), seconds, removed
        del res
