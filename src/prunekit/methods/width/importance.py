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

Under a memory cap (:mod:`prunekit.engine.onload`) :func:`collect_gradients_layerwise` computes
the same per-window gradients layer by layer (:func:`prunekit.engine.layerwise.layerwise_gradients`):
the window's loss is the model's own (the head's logits, the same shift, ignore index and mean), so
``g`` and ``F`` equal the whole-model pass's up to float rounding. A weight the head and the
embedding share (tied embeddings) gets its two parts added per window before ``F`` squares them.

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
import torch.nn.functional as F
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.engine.layerwise import layerwise_gradients, shared_names
from prunekit.engine.onload import Onloader
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
            f"`dtype` {name} has no gradient support on {device} ({str(e).splitlines()[0][:120]}); "
            "LLM-Pruner's Taylor importance needs gradients.",
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


def _check_loss(loss: torch.Tensor, dtype: torch.dtype) -> None:
    if not torch.isfinite(loss):
        raise PrunekitError(
            f"the calibration loss is not finite ({float(loss)}) in {str(dtype).removeprefix('torch.')}: gradients cannot be used.",
            "Use `dtype` float32.",
        )


def _check_grad(name: str, g: torch.Tensor, dtype: torch.dtype) -> None:
    if not torch.isfinite(g).all():
        raise PrunekitError(f"gradients overflowed in {str(dtype).removeprefix('torch.')} ({name} has inf/nan).", "Use `dtype` float32.")


def collect_gradients(
    model: nn.Module, ids: torch.Tensor, names: set[str], fisher: bool, *, ignore_index: int | None = None,
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
    (not journaled: ``start``/``on_sample`` are for one process). Under a memory cap the same sums
    come from :func:`collect_gradients_layerwise`.
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
                _check_loss(loss, dtype)
                loss.backward()
            for n, p in params.items():
                if p.grad is None:
                    continue
                g = p.grad.detach().float()
                _check_grad(n, g, dtype)
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
            losses = _reduce(ranks, grad, fish, mine, losses, n_rows=n_rows)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    return GradStats(grad, fish, sum(losses) / len(losses), n_rows, int(ids.numel()), losses)


def _reduce(ranks: Ranks, grad: dict, fish: dict | None, mine: list[int], losses: list[float], *, n_rows: int) -> list[float]:
    """Sum every rank's accumulators in place; every window's loss, in window order."""
    for acc in (grad, fish or {}):
        for n, t in acc.items():
            t.copy_(ranks.reduce_sum(t))
    per_window = torch.zeros(n_rows, dtype=torch.float64)
    per_window[mine] = torch.tensor(losses, dtype=torch.float64)
    return [float(v) for v in ranks.reduce_sum(per_window)]


def check_layerwise(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse what a layer-by-layer gradient pass cannot compute: a loss beyond the head's (a MoE router's
    auxiliary loss), or a ``dtype`` without gradients on ``device``."""
    if getattr(model.config, "output_router_logits", False):
        raise PrunekitError(f"model_type '{model.config.model_type}' adds the router's auxiliary loss (output_router_logits) to the "
                            "calibration loss, which a layer-by-layer gradient pass does not compute.",
                            "Set output_router_logits to false in the checkpoint's config.json, or drop `max_memory`.")
    check_gradient_dtype(dtype, device)


def _window_loss(ignore_index: int | None, dtype: torch.dtype, losses: list[float]):
    """One window's loss for :func:`layerwise_gradients`, as the model's own ``labels`` loss computes it
    (float32 logits, targets shifted with ``-100`` after the last, mean over the counted ones); its
    value goes to ``losses``."""

    def loss(logits_fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        labels = ids.clone()
        if ignore_index is not None:
            labels[labels == ignore_index] = -100
        targets = F.pad(labels, (0, 1), value=-100)[..., 1:]
        logits = logits_fn(h).float()
        value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        _check_loss(value, dtype)
        losses.append(float(value.detach()))
        return value

    return loss


class _Sums:
    """Per-window gradients into ``grad`` (and ``fish``), float32 on the CPU, in window order. A shared
    weight's parts (tied embeddings: the head's, the embedding's) wait in ``pending`` until :meth:`flush`
    adds each window's whole gradient."""

    def __init__(self, grad: dict, fish: dict | None, n_rows: int, shared: set[str], dtype: torch.dtype) -> None:
        self.grad, self.fish, self.n_rows, self.shared, self.dtype = grad, fish, n_rows, shared, dtype
        self.pending: dict[tuple[int, str], torch.Tensor] = {}

    def add(self, k: int, name: str, g: torch.Tensor) -> None:
        g = g.float().cpu()
        if name not in self.shared:
            self._take(name, g)
        elif (k, name) in self.pending:
            self.pending[(k, name)].add_(g)
        else:
            self.pending[(k, name)] = g.clone()

    def flush(self) -> None:
        for key in sorted(self.pending):
            self._take(key[1], self.pending.pop(key))

    def _take(self, name: str, g: torch.Tensor) -> None:
        _check_grad(name, g, self.dtype)
        self.grad[name].add_(g, alpha=1.0 / self.n_rows)
        if self.fish is not None:
            self.fish[name].addcmul_(g, g, value=1.0 / self.n_rows)


def collect_gradients_layerwise(
    onload: Onloader, ids: torch.Tensor, names: set[str], fisher: bool, state_budget: float, *, ignore_index: int | None = None,
    progress: ProgressFn | None = None, start: tuple[dict, dict | None, list[float]] | None = None,
    on_sample: Callable[[int, int, dict, dict | None, list[float]], None] | None = None, ranks: Ranks | None = None,
) -> GradStats:
    """:func:`collect_gradients` for a model held under a memory cap (``onload``): each window's backward
    layer by layer, the sums in float32 on the CPU, the stored weights back in the model on return.

    ``state_budget``: bytes of kept boundary states (chunks of windows share the weights' trips);
    ``on_sample`` runs after each chunk (a weight shared by the head and the embedding makes chunks
    of one window, so that its parts are added per window without holding a copy per window).
    """
    ranks = ranks or Ranks()
    if ranks.spread and (start is not None or on_sample is not None):
        raise ValueError("a gradient pass spread over ranks is not journaled (start/on_sample)")
    model = onload.adapter.model
    check_layerwise(model, onload.dtype, onload.device)
    onload.release()
    params = {n: p for n, p in model.named_parameters() if n in names}
    if names - set(params):
        raise ValueError(f"no parameters named {sorted(names - set(params))[:3]}")
    grad = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
    fish = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()} if fisher else None
    losses: list[float] = []
    if start is not None:
        _load_start(start, grad, fish)
        losses = list(start[2])
    n_rows, resumed = ids.shape[0], len(losses)
    mine = [i for i in range(resumed, n_rows) if ranks.owner(i) == ranks.rank]
    shared = shared_names(onload, set(params))
    sums = _Sums(grad, fish, n_rows, shared, onload.dtype)
    label = "gradients" + (f" · {ranks.world} ranks" if ranks.spread else "")

    def after_chunk(_: int) -> None:
        sums.flush()
        if on_sample:
            on_sample(len(losses), n_rows, grad, fish, losses)
        if progress:
            progress(label, len(losses) - resumed, len(mine))

    was_training = model.training
    try:
        model.eval()
        for group in ([[i] for i in mine] if shared else [mine] if mine else []):
            layerwise_gradients(onload, [ids[i:i + 1].to(onload.device) for i in group],
                                _window_loss(ignore_index, onload.dtype, losses), set(params), sums.add,
                                state_budget=state_budget, on_chunk=after_chunk)
    finally:
        onload.release()
        model.train(was_training)
    if ranks.spread:
        losses = _reduce(ranks, grad, fish, mine, losses[resumed:], n_rows=n_rows)
    return GradStats(grad, fish, sum(losses) / len(losses), n_rows, int(ids.numel()), losses)


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


def part_scores(family: Family, importance: str, stats: GradStats | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[n_parts, n]`` float64: each part's summed score per structure. ``dtype``: the weights as
    computed in it (a model held in its checkpoint's dtype under a memory cap)."""
    rows = []
    for part in family.parts:
        w = part.param if dtype is None else part.param.to(dtype)
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


def family_scores(family: Family, importance: str, how: str, stats: GradStats | None, *,
                  generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Group score per structure of ``family`` (float64 ``[n]``); lower = pruned first (``dtype``: see :func:`part_scores`)."""
    if importance == "random":
        return torch.rand(family.n, generator=generator, dtype=torch.float64)
    return aggregate(part_scores(family, importance, stats, dtype), how, importance)


def needed_parameters(families: list[Family]) -> set[str]:
    """Names of the parameters whose gradients the families' scores read."""
    return {p.name for fam in families for p in fam.parts}


def finite_or_raise(scores: torch.Tensor, where: str) -> None:
    if torch.isnan(scores).any():
        raise PrunekitError(f"importance scores of {where} are NaN.", "Use `dtype` float32.")


__all__ = [
    "GradStats", "aggregate", "check_gradient_dtype", "check_layerwise", "collect_gradients", "collect_gradients_layerwise",
    "element_scores", "family_scores", "finite_or_raise", "needed_parameters", "part_scores",
]
