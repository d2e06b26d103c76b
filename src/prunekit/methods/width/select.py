"""Which structures to remove, given their scores and a budget of parameters.

``target`` = ``ratio * base``, ``base`` the parameters ``ratio`` is a fraction of (``total`` here: all of the
model's, or its decoder layers' with ``ratio_of`` ``decoder``; ``of`` names it in messages). Every family
keeps at least one structure (a layer never loses all of its KV groups or all of its MLP channels), and
whole structures only are removed, so the reached ratio differs from the asked one by up to about one structure per
family; the plan reports the ratio reached.

- :func:`uniform` (``--strategy block``, the paper's default): the same fraction ``f`` in every
  family of the layer range: family of ``n`` structures loses ``round(f * n)`` (half up). ``f`` is
  the one whose total removed parameters come closest to ``target`` (every step of the step
  function is tried); under GQA a KV group is the unit, so at a small ``f`` no heads are removed.
- :func:`global_rank` (``--global``): all structures of all families ranked together by score
  per parameter (a KV group holds hundreds of times the parameters of an MLP channel), removed
  in increasing order while a removal brings the total closer to ``target``.
- :func:`count_for` (``--strategy channel``): ``k`` hidden channels, ``k`` the count closest to
  ``target``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunekit.core.errors import PrunekitError
from prunekit.models.groups import Family


@dataclass
class Choice:
    """Removed structure indices per family (same order as the families) and how they were chosen."""

    removed: list[list[int]]
    params_removed: int
    fraction: float | None = None
    notes: dict = field(default_factory=dict)


def lowest(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties: lower index first), sorted."""
    if k <= 0:
        return []
    order = torch.sort(scores, stable=True).indices[:k]
    return sorted(int(i) for i in order)


def _k(f: float, n: int) -> int:
    return int(math.floor(f * n + 0.5 + 1e-9))


def _where(fam: Family) -> str:
    return {"attn": "every KV group (all heads)", "mlp": "every MLP channel"}.get(fam.kind, "every structure") + (
        f" of layer {fam.layer}" if fam.layer is not None else "")


def uniform(families: list[Family], scores: list[torch.Tensor], target: float, total: int, ratio: float, *,
            at_least: bool = False, of: str = "the parameters") -> Choice:
    """The same fraction of every family (see the module docstring); ``at_least``: the smallest
    step that removes at least ``target`` (as the depth methods' budgets), else the closest."""
    candidates = {0.0}
    for fam in families:
        candidates.update((k - 0.5) / fam.n for k in range(1, fam.n + 1))
    best, best_valid = None, None
    for f in sorted(candidates):
        ks = [fam.aligned(_k(f, fam.n)) for fam in families]
        removed = sum(k * fam.params_per_structure for k, fam in zip(ks, families))
        gap = (removed < target, removed - target if removed >= target else target - removed) if at_least else abs(removed - target)
        item = (gap, f, ks, removed)
        if best is None or item[0] < best[0]:
            best = item
        if all(k < fam.n for k, fam in zip(ks, families)) and (best_valid is None or removed > best_valid[3]):
            best_valid = item
    assert best is not None
    _, f, ks, removed = best
    for k, fam in zip(ks, families):
        if k >= fam.n:
            reach = best_valid[3] / total if best_valid else 0.0
            raise PrunekitError(
                f"`ratio` {ratio} would remove {_where(fam)} (a fraction {f:.3f} of each layer in the range).",
                f"Use `ratio` {math.floor(reach * 100) / 100} or less, or a wider `layers` range, or `global`.",
            )
    if removed == 0:
        smallest = min(fam.params_per_structure for fam in families)
        raise PrunekitError(
            f"`ratio` {ratio} is below what one structure per layer removes ({smallest / total:.4f} of {of} at least).",
            "Use a larger `ratio`.",
        )
    return Choice([lowest(s, k) for s, k in zip(scores, ks)], removed, f, {"per_family_removed": ks})


def global_rank(families: list[Family], scores: list[torch.Tensor], target: float, total: int, ratio: float, *,
                at_least: bool = False, of: str = "the parameters") -> Choice:
    """Rank all structures together by score per parameter (see the module docstring); ``at_least``:
    go on until at least ``target`` is removed."""
    keys, owners = [], []
    for i, (fam, s) in enumerate(zip(families, scores)):
        keys.append(s.double() / fam.params_per_structure)
        owners += [(i, j) for j in range(fam.n)]
    order = torch.sort(torch.cat(keys), stable=True).indices.tolist()
    left = [fam.n for fam in families]
    chosen: list[list[int]] = [[] for _ in families]
    removed = 0
    smallest = min(fam.params_per_structure for fam in families)
    for pos in order:
        if (removed >= target) if at_least else (target - removed < smallest / 2):
            break
        i, j = owners[pos]
        size = families[i].params_per_structure
        if left[i] <= 1 or (not at_least and removed + size > target + size / 2):
            continue
        chosen[i].append(j)
        left[i] -= 1
        removed += size
    if (removed < target) if at_least else (target - removed >= smallest / 2):
        raise PrunekitError(
            f"`ratio` {ratio} cannot be reached: keeping one KV group and one MLP channel per layer of the range removes at most"
            f" {removed / total:.3f} of {of}.",
            f"Use `ratio` {math.floor(removed / total * 100) / 100} or less, or a wider `layers` range.",
        )
    if removed == 0:
        raise PrunekitError(f"`ratio` {ratio} is below what one structure removes.", "Use a larger `ratio`.")
    return Choice([sorted(c) for c in chosen], removed, None, {"per_family_removed": [len(c) for c in chosen]})


def count_for(family: Family, scores: torch.Tensor, target: float, total: int, ratio: float, *,
              at_least: bool = False, of: str = "the parameters", per: int | None = None) -> Choice:
    """The ``k`` lowest-scored structures of one family, ``k`` closest to the target (hidden channels),
    or with ``at_least`` the smallest ``k`` that reaches it. ``per``: what one structure removes of the
    ``target``'s parameters (default: all of its own; a hidden channel's decoder share for ``ratio_of`` decoder)."""
    per = family.params_per_structure if per is None else per
    k = int(math.ceil(target / per)) if at_least else int(math.floor(target / per + 0.5))
    if k >= family.n:
        raise PrunekitError(
            f"`ratio` {ratio} would remove every hidden channel.",
            f"Use `ratio` {math.floor((family.n - 1) * per / total * 100) / 100} or less.",
        )
    if k == 0:
        raise PrunekitError(
            f"`ratio` {ratio} is below what one hidden channel removes ({per / total:.4f} of {of}).",
            "Use a larger `ratio`.",
        )
    return Choice([lowest(scores, k)], k * family.params_per_structure, k / family.n, {"per_family_removed": [k]})
