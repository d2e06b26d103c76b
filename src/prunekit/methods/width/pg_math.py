"""The arithmetic of the policy-gradient method: masks, baseline, estimator, schedule, projection, init.

Notation. ``θ`` (float64 ``[n]``): the keep probability of each unit; a mask ``m ~ Bernoulli(θ)``
(``[K, n]``, 1 = kept); ``L_j``: the LM loss (mean next-token NLL) of mask ``j`` on the step's batch.

- Baseline (:func:`update_baseline`): ``δ ← 0.8 δ + 0.2 mean_j L_j``, starting at the first step's mean,
  updated before it is used; ``w`` = the weight this step's mean gets (1 at the first step, 0.2 after).
- Estimators (:func:`estimate`), with ``s_j = (m_j − θ)``:
  - ``sqrt`` (the authors' code): ``g = Σ_j (L_j − δ) s_j / sqrt(θ(1 − θ)) / (K − 1)``. Its expectation is
    ``(K − w)/(K − 1) · sqrt(θ(1 − θ)) ⊙ ∇_θ E[L]``: a per-unit rescaled gradient (units near 0 or 1 move
    less, and a near-decided unit does not blow up).
  - ``score`` (the exact Bernoulli score ``∇_θ log p(m) = (m − θ)/(θ(1 − θ))``):
    ``g = Σ_j (L_j − δ) s_j / (θ(1 − θ)) / (K − w)``. Since ``δ`` holds ``w · mean_j L_j``, the divisor
    ``K − w`` (not ``K``) makes it unbiased: ``E[g] = ∇_θ E[L]`` exactly (tested by enumeration).
  A unit at θ = 0 or 1 draws its own value every time (``s = 0``) and gets ``g = 0``.
- Schedule (:func:`cosine_lr`): ``η_t = η · (1 + cos(π t / T)) / 2`` for step ``t = 0..T−1``, no warm-up.
- Projection (:func:`project`): onto ``{θ ∈ [0, 1]^n : Σ c_i θ_i ≤ k}`` as ``θ ← clip(θ − v, 0, 1)``, ``v ≥ 0``
  found by bisection then solved exactly on the active set (``Σ c θ = k`` to rounding when the budget
  binds). With every ``c_i = 1`` this is the Euclidean projection (the authors'); with parameter counts
  ``c`` it is the projection in the ``c``-weighted norm ``Σ c_i (θ_i − y_i)²`` (the same uniform shift).
- Initialisation (:func:`init_from_scores`): per group of units (a layer's KV groups, a layer's
  channels), ``z`` = z-score of the scores, ``σ(z)``, shifted so that the group's mean is ``q`` (the
  keep ratio), clipped to [0, 1].
"""

from __future__ import annotations

import math

import torch


def draw_masks(theta: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[k, n]`` float64 Bernoulli(θ) masks from ``generator`` (1 = kept)."""
    return torch.bernoulli(theta.unsqueeze(0).expand(k, -1).contiguous(), generator=generator)


def update_baseline(baseline: float | None, losses: torch.Tensor) -> tuple[float, float]:
    """The updated baseline and the weight ``w`` this step's mean loss has in it (see the module docstring)."""
    mean = float(losses.double().mean())
    if baseline is None:
        return mean, 1.0
    return 0.8 * baseline + 0.2 * mean, 0.2


def estimate(losses: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor, baseline: float, *, weight: float,
             kind: str = "sqrt") -> torch.Tensor:
    """The gradient estimate ``g`` ``[n]`` from ``K`` losses ``[K]`` and masks ``[K, n]`` (module docstring).

    ``baseline`` is the already updated ``δ``, ``weight`` the share ``w`` of this step's mean in it."""
    k = masks.shape[0]
    adv = (losses.double() - baseline).unsqueeze(1)  # [K, 1]
    total = (adv * (masks.double() - theta)).sum(dim=0)  # [n]
    var = theta * (1.0 - theta)
    safe = torch.where(var > 0, var, torch.ones_like(var))
    if kind == "sqrt":
        g = total / safe.sqrt() / (k - 1)
    elif kind == "score":
        g = total / safe / (k - weight)
    else:
        raise ValueError(kind)
    return torch.where(var > 0, g, torch.zeros_like(g))


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``: cosine from ``lr`` towards 0, no warm-up."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def project(theta: torch.Tensor, budget: float, cost: torch.Tensor | None = None, iters: int = 200) -> torch.Tensor:
    """``clip(θ − v, 0, 1)`` with the smallest ``v ≥ 0`` that gives ``Σ c θ ≤ budget`` (``c`` = 1 when None)."""
    c = torch.ones_like(theta) if cost is None else cost.to(theta.dtype)

    def mass(v: float) -> float:
        return float((c * (theta - v).clamp(0.0, 1.0)).sum())

    if mass(0.0) <= budget:
        return theta.clamp(0.0, 1.0)
    lo, hi = 0.0, float(theta.max())  # mass(hi) = 0 <= budget
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mass(mid) > budget:
            lo = mid
        else:
            hi = mid
    shifted = theta - hi
    active = (shifted > 0) & (shifted < 1)
    if active.any():  # exact v on the active set: Σ_active c (θ − v) + Σ_{θ−v ≥ 1} c = budget
        full = float(c[shifted >= 1].sum())
        v = (float((c[active] * theta[active]).sum()) + full - budget) / float(c[active].sum())
        exact = theta - v
        if bool((((exact > 0) & (exact < 1)) == active).all()):
            return exact.clamp(0.0, 1.0)
    return shifted.clamp(0.0, 1.0)


def init_from_scores(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """θ of one group of units from their scores (higher = more important): z-score, sigmoid, mean shifted
    to ``keep``, clipped to [0, 1]. Equal scores (or one unit) give ``keep`` everywhere."""
    s = scores.double()
    std = s.std(unbiased=False) if s.numel() > 1 else torch.zeros((), dtype=torch.float64)
    z = (s - s.mean()) / std if float(std) > 0 else torch.zeros_like(s)
    p = torch.sigmoid(z)
    return (p - p.mean() + keep).clamp(0.0, 1.0)
