"""``--importance fusion``: LLM-Pruner's fine and coarse estimates blended per layer, the blend chosen from data.

prunekit's own reading of Adaptive Estimation Fusion / HyWIA (arXiv 2403.10799), whose code and exact
formula are not public. For each family ``f`` (the KV groups of a layer, or the channels of a layer):

- fine ``F`` = the element-wise estimate ``Σ |w g|`` over each structure's weights (``param_first``, parts
  combined by ``aggregate``); coarse ``C`` = the vector-wise estimate ``|Σ w g|`` (``vector``);
- both are normalised per family by their sum (``F / ΣF``, ``C / ΣC``: the two live on different scales,
  and a sum is what both are made of), blended, and scaled back by the geometric mean of the sums::

      S_α = (ΣF)^α (ΣC)^(1−α) · (α F / ΣF + (1 − α) C / ΣC)

  so that ``S_1 = F`` and ``S_0 = C`` exactly (scores stay comparable across layers under ``global``);
- the weight ``α_f`` is chosen per family from ``ALPHAS`` = {0, .25, .5, .75, 1}: for each ``α``, the
  ``k_f`` lowest-``S_α`` structures of that family alone are masked (``k_f``: how many the same-fraction
  rule removes from it at ``ratio``; masks as in :mod:`.masks`, equal to slicing them out) and the
  calibration loss (mean next-token NLL over the gradient windows) is measured; ``α_f`` = the one with
  the lowest loss; ties (the same structures chosen) go to the ``α`` nearest 0.5. A family from which
  nothing is removed (``k_f = 0``) keeps 0.5 and is marked undecided.

The weights chosen and the losses behind them go to the plan (``width.fusion``).
"""

from __future__ import annotations

import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.windows import Windows
from prunekit.engine.runner import Engine
from prunekit.methods.width.importance import GradStats, family_scores
from prunekit.methods.width.masks import MaskedForward, Units, build_units
from prunekit.methods.width.select import lowest, uniform
from prunekit.models.groups import Family
from prunekit.models.loading import LoadedModel

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MASKS_PER_FORWARD = 8


def fuse(fine: torch.Tensor, coarse: torch.Tensor, alpha: float) -> torch.Tensor:
    """``S_α`` of one family (module docstring); exactly ``fine`` at 1 and ``coarse`` at 0."""
    if alpha == 1.0:
        return fine.clone()
    if alpha == 0.0:
        return coarse.clone()
    sf, sc = float(fine.sum()), float(coarse.sum())
    nf = fine / sf if sf > 0 else torch.zeros_like(fine)
    nc = coarse / sc if sc > 0 else torch.zeros_like(coarse)
    scale = (max(sf, 1e-300) ** alpha) * (max(sc, 1e-300) ** (1.0 - alpha))
    return scale * (alpha * nf + (1.0 - alpha) * nc)


def _units(loaded: LoadedModel, families: list[Family]) -> Units:
    """The mask units of exactly ``families`` (the KV groups and channels of llm-pruner's layer range)."""
    if any(f.expert is not None or f.kind == "hidden" for f in families):
        raise PrunekitError("`importance` fusion measures each layer's calibration loss through masks on o_proj / down_proj "
                            "inputs, which routed experts and hidden channels do not have.",
                            "Use `strategy` block on a dense model, or another `importance`.")
    layers = sorted({f.layer for f in families})
    units = build_units(loaded.adapter, layers[0], layers[-1] + 1, mixed=False)
    if [(f.layer, f.kind) for f in units.families] != [(f.layer, f.kind) for f in families]:
        raise ValueError("fusion: the mask units do not match the families")
    return units


def fusion_scores(loaded: LoadedModel, families: list[Family], stats: GradStats, windows: Windows, *, aggregate: str,
                  budget: tuple[float, int, float]) -> tuple[list[torch.Tensor], list[dict]]:
    """Fused scores per family and the record of the weights chosen (module docstring).

    ``budget``: ``(target parameters, total parameters, ratio)`` of the run, which fix each family's ``k_f``."""
    target, total, ratio = budget
    units = _units(loaded, families)
    fine = [family_scores(f, "param_first", aggregate, stats) for f in families]
    coarse = [family_scores(f, "vector", aggregate, stats) for f in families]
    counts = uniform(families, fine, target, total, ratio).notes["per_family_removed"]
    candidates: list[tuple[int, float, tuple[int, ...]]] = []  # (family, alpha, removed set)
    for i, (f, c) in enumerate(zip(fine, coarse)):
        for a in ALPHAS:
            candidates.append((i, a, tuple(lowest(fuse(f, c, a), counts[i]))))
    distinct = sorted({(i, s) for i, _, s in candidates if s})
    losses = _masked_losses(loaded, units, windows, distinct)
    scores, record = [], []
    for i, fam in enumerate(families):
        mine = [(a, s) for j, a, s in candidates if j == i]
        per_alpha = [losses.get((i, s)) for _, s in mine]
        if counts[i] == 0:
            alpha, decided = 0.5, False
        else:
            best = min(per_alpha)
            alpha = min((a for (a, _), v in zip(mine, per_alpha) if v == best), key=lambda a: (abs(a - 0.5), a))
            decided = True
        scores.append(fuse(fine[i], coarse[i], alpha))
        record.append({"layer": fam.layer, "kind": fam.kind, "alpha": alpha, "decided": decided, "removed": counts[i],
                       "losses": None if not decided else [round(v, 6) for v in per_alpha]})
    return scores, record


def _masked_losses(loaded: LoadedModel, units: Units, windows: Windows, sets: list[tuple[int, tuple[int, ...]]]) -> dict:
    """The calibration loss (mean NLL over all windows) with each ``(family, removed structures)`` masked alone."""
    engine = Engine(loaded.adapter, windows, windows.n_windows, ignore_index=loaded.model.config.pad_token_id, cache_bytes=0)
    fwd = MaskedForward(engine, units)
    out = {}
    for start in range(0, len(sets), MASKS_PER_FORWARD):
        chunk = sets[start:start + MASKS_PER_FORWARD]
        masks = torch.ones(len(chunk), units.n, dtype=torch.float64)
        for row, (i, removed) in enumerate(chunk):
            masks[row, units.span(i).start + torch.tensor(removed)] = 0.0
        for (i, removed), v in zip(chunk, fwd.losses(0, masks).tolist()):
            out[(i, removed)] = v
    return out
