"""Importance of coupled structures: calibration gradients, per-weight scores, group aggregation.

Gradients. For calibration windows ``x_1..x_N`` (``[N, T]`` tokens) and the per-window loss
``L_i`` = mean next-token NLL of window ``i`` (targets equal to the pad id ignored), the
calibration loss is ``L = (1/N) sum_i L_i``. :func:`collect_gradients` runs one backward per
window and keeps, for each weight ``w`` it is asked for:

- ``g = dL/dw = (1/N) sum_i dL_i/dw`` (the gradient of the calibration loss);
- ``F = (1/N) sum_i (dL_i/dw)^2`` (only when asked): the diagonal of the empirical Fisher
  matrix, LLM-Pruner's approximation of the Hessian diagonal ``H_ww``.

Per-weight scores ``S(w)`` (same shape as the parameter):
``l1 = |w|``, ``l2 = w^2``, ``element1 = param_first = |w g|`` (first-order Taylor of the loss
change when ``w`` is zeroed), ``element2 = param_mix = |w g - w^2 F / 2|`` (with the second-order
term), ``param_second = w^2 F / 2`` (the second-order term alone); ``vector``: ``w g`` signed.

Structures. Structure ``s`` of a family owns, in each part ``p``, the slice ``index[s]`` along
``p.dim``; its part score is ``sum of S over that slice`` -> a ``[n_parts, n]`` matrix. Its group
score aggregates the parts (``--aggregate``): ``sum``, ``mean``, ``max``, ``prod`` (kept as the
sum of logs: the same order, no overflow), ``last`` (the part last in forward order: o for a KV
group, down for an MLP channel, the LM head or final norm for a hidden channel). ``vector`` is
the paper's vector-wise score: ``|sum over all of the group's weights of w g|`` (the first-order
loss change of removing the whole group), ``mean`` divides it by the number of parts.
``random``: uniform scores from ``seed``. Lower scores are pruned first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.engine.ranks import Ranks
from prunekit.models.groups import Family

ProgressFn = Callable[[str, int, int], None]


@dataclass
class GradStats:
    """Accumulated calibration gradients, keyed by parameter name (see the module docstring)."""

    grad: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor] | None
    loss: float
    samples: int
    tokens: int
    per_sample_loss: list[float] = field(default_factory=list)


def check_gradient_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype in which a forward and backward pass cannot run on ``device``."""
    try:
        lin = nn.Linear(4, 4).to(device=device, dtype=dtype)
        x = torch.randn(2, 4, device=device, dtype=dtype, requires_grad=True)
        torch.nn.functional.cross_entropy(lin(x).float(), torch.tensor([0, 1], device=device)).backward()
        if lin.weight.grad is None:
            raise RuntimeError("no gradient")
    except (RuntimeError, TypeError, NotImplementedError) as e:
        name = str(dtype).removeprefix("torch.")
        raise PrunekitError(
            f"`dtype` {name} has no gradient support on {device} ({str(e).splitlines()[0][:120]}); LLM-Pruner's Taylor importance needs gradients.",
            "Use `dtype` float32, or a gradient-free `importance` (l1, l2, random).",
        ) from None


def _load_start(start: tuple[dict, dict | None, list[float]], grad: dict, fish: dict | None) -> None:
    """Copy a resumed pass's accumulators into ``grad``/``fish`` (same names and shapes, or refuse)."""
    g0, f0, _ = start
    if set(g0) != set(grad) or (fish is not None) != (f0 is not None) or (fish is not None and set(f0) != set(fish)):
        raise PrunekitError("`resume`: the saved gradient state is for other parameters.",
                            "Run without `resume` (with `overwrite`) to start the gradient pass again.")
    for src, dst in ((g0, grad), (f0 or {}, fish or {})):
        for n, t in dst.items():
            if src[n].shape != t.shape:
                raise PrunekitError(f"`resume`: the saved gradient of {n} has shape {tuple(src[n].shape)}, not {tuple(t.shape)}.",
                                    "Run without `resume` (with `overwrite`) to start the gradient pass again.")
            t.copy_(src[n])


def collect_gradients(
    model: nn.Module, ids: torch.Tensor, names: set[str], fisher: bool, ignore_index: int | None = None,
    progress: ProgressFn | None = None, start: tuple[dict, dict | None, list[float]] | None = None,
    on_sample: Callable[[int, int, dict, dict | None, list[float]], None] | None = None, ranks: Ranks | None = None,
) -> GradStats:
    """Accumulate ``g`` (and ``F`` when ``fisher``) for the parameters named ``names`` over the rows of ``ids``.

    ``ids``: ``[N, T]`` int64 calibration windows; one forward/backward per window. The other
    parameters are frozen for the duration (their gradients are not needed and not stored).
    ``start``: the accumulators and losses after the first ``k`` windows (a resumed pass, see
    :mod:`prunekit.methods.width.journal`); ``on_sample(done, N, g, F, losses)`` runs after each window.
    ``ranks``: under several torchrun ranks, window ``i`` runs on rank ``i mod W`` and the sums
    (``g``, ``F``, the per-window losses) are all-reduced, so every rank returns the same statistics
    (not journaled: ``start``/``on_sample`` are for one process).
    """
    ranks = ranks or Ranks()
    if ranks.spread and (start is not None or on_sample is not None):
        raise ValueError("a gradient pass spread over ranks is not journaled (start/on_sample)")
    params = {n: p for n, p in model.named_parameters() if n in names}
    missing = names - set(params)
    if missing:
        raise ValueError(f"no parameters named {sorted(missing)[:3]}")
    dtype = next(iter(params.values())).dtype
    check_gradient_dtype(dtype, next(iter(params.values())).device)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grad = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    fish = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()} if fisher else None
    losses: list[float] = []
    if start is not None:
        _load_start(start, grad, fish)
        losses = list(start[2])
    was_training = model.training
    n_rows = ids.shape[0]
    try:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(n in params)
            p.grad = None
        mine = [i for i in range(len(losses), n_rows) if ranks.owner(i) == ranks.rank]
        for k, i in enumerate(mine):
            x = ids[i:i + 1].to(next(iter(params.values())).device)
            labels = x.clone()
            if ignore_index is not None:
                labels[labels == ignore_index] = -100
            with torch.enable_grad():
                loss = model(input_ids=x, labels=labels, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise PrunekitError(
                        f"the calibration loss is not finite ({float(loss)}) in {str(dtype).removeprefix('torch.')}: gradients cannot be used.",
                        "Use `dtype` float32.",
                    )
                loss.backward()
            for n, p in params.items():
                if p.grad is None:
                    continue
                g = p.grad.detach().float()
                if not torch.isfinite(g).all():
                    raise PrunekitError(
                        f"gradients overflowed in {str(dtype).removeprefix('torch.')} ({n} has inf/nan).",
                        "Use `dtype` float32.",
                    )
                grad[n].add_(g, alpha=1.0 / n_rows)
                if fish is not None:
                    fish[n].addcmul_(g, g, value=1.0 / n_rows)
                p.grad = None
            losses.append(float(loss.detach()))
            if on_sample:
                on_sample(i + 1, n_rows, grad, fish, losses)
            if progress:
                progress("gradients" + (f" · {ranks.world} ranks" if ranks.spread else ""), k + 1, len(mine))
        if ranks.spread:
            losses = _reduce(ranks, grad, fish, mine, losses, n_rows)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    return GradStats(grad, fish, sum(losses) / len(losses), n_rows, int(ids.numel()), losses)


def _reduce(ranks: Ranks, grad: dict, fish: dict | None, mine: list[int], losses: list[float], n_rows: int) -> list[float]:
    """Sum every rank's accumulators in place; every window's loss, in window order."""
    for acc in (grad, fish or {}):
        for n, t in acc.items():
            t.copy_(ranks.reduce_sum(t))
    per_window = torch.zeros(n_rows, dtype=torch.float64)
    per_window[mine] = torch.tensor(losses, dtype=torch.float64)
    return [float(v) for v in ranks.reduce_sum(per_window)]


def element_scores(importance: str, w: torch.Tensor, g: torch.Tensor | None, f: torch.Tensor | None) -> torch.Tensor:
    """Per-weight score ``S(w)`` in float32 (see the module docstring)."""
    w = w.detach().float()
    if importance == "l1":
        return w.abs()
    if importance == "l2":
        return w * w
    assert g is not None, importance
    if importance in ("element1", "param_first"):
        return (w * g).abs()
    if importance == "vector":
        return w * g
    assert f is not None, importance
    if importance == "param_second":
        return 0.5 * w * w * f
    if importance in ("element2", "param_mix"):
        return (w * g - 0.5 * w * w * f).abs()
    raise ValueError(importance)


def part_scores(family: Family, importance: str, stats: GradStats | None) -> torch.Tensor:
    """``[n_parts, n]`` float64: each part's summed score per structure."""
    rows = []
    for part in family.parts:
        w = part.param
        g = stats.grad.get(part.name) if stats else None
        f = stats.fisher.get(part.name) if stats and stats.fisher is not None else None
        if part.expert is not None:  # one expert's slab of a 3-D Parameter
            g = g[part.expert] if g is not None else None
            f = f[part.expert] if f is not None else None
        if importance not in ("l1", "l2") and g is None:
            raise ValueError(f"no gradient collected for {part.name}")
        s = element_scores(importance, w, g, f)
        dims = [d for d in range(s.dim()) if d != part.dim]
        per_index = s.sum(dim=dims) if dims else s  # [size along dim]
        rows.append(per_index.double()[part.index].sum(dim=1))
    return torch.stack(rows)


def aggregate(scores: torch.Tensor, how: str, importance: str) -> torch.Tensor:
    """Group score ``[n]`` from part scores ``[n_parts, n]``."""
    if importance == "vector":
        total = scores.sum(dim=0).abs()
        return total / scores.shape[0] if how == "mean" else total
    if how == "sum":
        return scores.sum(dim=0)
    if how == "mean":
        return scores.mean(dim=0)
    if how == "max":
        return scores.max(dim=0).values
    if how == "prod":
        return torch.log(scores.clamp_min(0.0)).sum(dim=0)
    if how == "last":
        return scores[-1]
    raise ValueError(how)


def family_scores(family: Family, importance: str, how: str, stats: GradStats | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Group score per structure of ``family`` (float64 ``[n]``); lower = pruned first."""
    if importance == "random":
        return torch.rand(family.n, generator=generator, dtype=torch.float64)
    return aggregate(part_scores(family, importance, stats), how, importance)


def needed_parameters(families: list[Family]) -> set[str]:
    """Names of the parameters whose gradients the families' scores read."""
    return {p.name for fam in families for p in fam.parts}


def finite_or_raise(scores: torch.Tensor, where: str) -> None:
    if torch.isnan(scores).any():
        raise PrunekitError(f"importance scores of {where} are NaN.", "Use `dtype` float32.")


__all__ = [
    "GradStats", "aggregate", "check_gradient_dtype", "collect_gradients", "element_scores", "family_scores",
    "finite_or_raise", "needed_parameters", "part_scores",
]
