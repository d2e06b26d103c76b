"""Training-free linear patches for a depth plan (``--patch linear``; after ReplaceMe, arXiv 2505.02819).

For each maximal run of removed blocks ``a .. a+n-1`` (attention and MLP blocks are separate units) the kept
block ``i = a - 1`` before it writes ``M`` to the residual stream (``[tokens, d]``: its output after its
projection and residual scale, before it is added). The pruned model then carries ``h_i + M`` past the run,
where the dense model carries ``h_{a+n}``. The patch replaces ``M`` by ``M T`` with

    T = argmin_T ||M T - R||^2 + lam ||T - I||^2 = (M^T M + lam I)^{-1} (M^T R + lam I),    R = h^dense_{a+n} - h_i

(``h_i``: the pruned, already patched model's residual before block ``i``; ``lam = ridge * trace(M^T M) / d``,
so ``ridge`` is scale-free; the ridge pulls ``T`` toward the identity, the unpatched model, rather than toward
zero). ``T = I`` is the unpatched model, so the fit never moves the stream after a run further from the dense
one than no patch does, on the fit data (``fit.mse <= fit.mse_identity``, recorded per run). ReplaceMe's form,
``Y = h_{i+n} - h_i + M`` with ``h_i`` after block ``i``, is the same target.

The runs are fitted in forward order on the model with the earlier runs removed and patched: block-major over
the patch windows (every batch at block ``b`` before ``b + 1``), the dense and the pruned streams side by
side on the search's engine (forward passes only; ``M^T M`` and ``M^T R`` accumulated in float64). The map is
folded into block ``i``'s output projection (:mod:`prunekit.plan.patch`), so nothing is added to the model.
A run that starts at block 0 has no block before it and is skipped (recorded in ``patch.skipped``). A family
whose blocks write to the residual through an output norm (Gemma 2/3, OLMo 2) or a sparse MoE block is refused
before any search runs: the fold would not be exact there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from prunekit.core.errors import PrunekitError, check_choice, check_positive_int
from prunekit.data.calibration import CalibConfig, calibration_windows
from prunekit.data.windows import Windows
from prunekit.engine.onload import Onloader
from prunekit.engine.runner import Engine
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel
from prunekit.plan.patch import encode_patch, removed_runs
from prunekit.plan.schema import Plan, removed_blocks, with_patch

PATCHES = ("none", "linear")
DEFAULT_RIDGE = 1e-4
TOKENS_PER_HIDDEN = 32  # the default number of fit tokens, per hidden channel (a d x d fit)
ProgressFn = Callable[[str, int, int], None]


@dataclass
class PatchConfig:
    """Options of the linear patch: ``ridge`` (>= 0; scaled by the mean diagonal of ``M^T M``), ``tokens`` (fit
    tokens; default ``32 x hidden_size``) taken as the first windows of the search's calibration source and
    ``seq_len`` (``source`` overrides the source)."""

    kind: str = "linear"
    ridge: float = DEFAULT_RIDGE
    tokens: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        check_choice("`patch`", self.kind, PATCHES[1:])
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise PrunekitError(f"`patch_ridge` {self.ridge} is not a finite number >= 0.",
                                "Use e.g. `patch_ridge` 1e-4 (0: plain least squares).")
        if self.tokens is not None:
            check_positive_int("patch_tokens", self.tokens)

    def windows_for(self, hidden: int, seq_len: int) -> int:
        """How many ``seq_len``-token windows the fit takes."""
        return max(1, math.ceil((self.tokens or TOKENS_PER_HIDDEN * hidden) / seq_len))

    def as_dict(self) -> dict:
        return asdict(self)


def patch_windows(loaded: LoadedModel, calib: CalibConfig, config: PatchConfig) -> Windows:
    """The fit's windows: the first of ``calib``'s source (or ``config.source``) in ``calib.seq_len`` tokens, as many
    as ``config.tokens`` needs; without ``tokens``, at most ``32 x hidden_size`` tokens (fewer when the source is short)."""
    want = config.windows_for(loaded.model.config.hidden_size, calib.seq_len)
    every = calibration_windows(loaded, replace(calib, source=config.source or calib.source, windows=None, sample="first"))
    if config.tokens is not None and want > every.n_windows:
        raise PrunekitError(f"`patch_tokens` {config.tokens} needs {want} windows of {calib.seq_len} tokens; '{every.source}' "
                            f"gives {every.n_windows}.", f"Use `patch_tokens` {every.n_tokens} or less, or a longer source.")
    n = min(want, every.n_windows)
    return Windows(every.ids[:n], every.source, every.text_sha256, every.recipe | {"windows": n})


def patch_refusal(adapter: ModelAdapter) -> str | None:
    """Why the model's family cannot take a linear patch (None when every block's output projection can hold one)."""
    for b in adapter.blocks():
        if not adapter.is_removed(b):
            reason = adapter.output_fold_refusal(b)
            if reason is not None:
                return reason
    return None


def check_patchable(adapter: ModelAdapter) -> None:
    """Refuse, in one line, a family whose structure forbids an exact fold (before a search is spent)."""
    reason = patch_refusal(adapter)
    if reason is not None:
        raise PrunekitError(f"`patch` linear folds a map into the output projection before each removed run, and here {reason}.",
                            "Prune without `patch` for this family.")


def solve_patch(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """``T = (G + lam I)^{-1} (C + lam I)``, ``lam = ridge * trace(G) / d`` (float64 ``[d, d]``; ``G = M^T M``,
    ``C = M^T R``). With ``ridge`` 0 and a singular ``G``, the least-squares solution of least norm."""
    d = gram.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=gram.device)
    lam = ridge * float(torch.trace(gram)) / d
    a, b = gram + lam * eye, cross + lam * eye
    if lam > 0:
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.cholesky_solve(b, factor)
    return torch.linalg.lstsq(a.cpu(), b.cpu(), driver="gelsd").solution.to(gram.device)


def _residual(rr: float, gram: torch.Tensor, cross: torch.Tensor, t: torch.Tensor) -> float:
    """``||M T - R||^2 = ||R||^2 - 2 tr(T^T C) + tr(T^T G T)`` from the accumulated sums."""
    return rr - 2.0 * float((t * cross).sum()) + float((t * (gram @ t)).sum())


class _Run:
    """One run's accumulators: ``G = M^T M``, ``C = M^T R``, ``||R||^2`` (float64) and the tokens seen."""

    def __init__(self, blocks: list[int], d: int, device: torch.device) -> None:
        self.blocks, self.into = blocks, blocks[0] - 1
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.cross = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.rr, self.tokens = 0.0, 0

    def add(self, m: torch.Tensor, r: torch.Tensor) -> None:
        m = m.reshape(-1, m.shape[-1]).to(self.gram.device, torch.float64)
        r = r.reshape(-1, r.shape[-1]).to(self.gram.device, torch.float64)
        self.gram += m.T @ m
        self.cross += m.T @ r
        self.rr += float((r * r).sum())
        self.tokens += m.shape[0]


def fit_linear_patch(
    loaded: LoadedModel, plan: Plan, windows: Windows, config: PatchConfig, *, batch_size: int = 2, file: str = "patch.safetensors",
    progress: ProgressFn | None = None, onload: Onloader | None = None,
) -> tuple[Plan, dict[str, torch.Tensor], Engine]:
    """Fit the linear patch of the depth plan ``plan`` on ``windows`` (``loaded``: the dense model, left as it is).

    Returns the plan with its ``patch`` record (sidecar ``file``, its sha256), the matrices by tensor name
    (float32 ``[d, d]``) and the engine it ran on (its counter: the work). A plan that removes nothing gets a
    record with no runs.
    """
    adapter = loaded.adapter
    check_patchable(adapter)
    if plan.get("width"):
        raise PrunekitError("`patch` linear applies to depth plans; this plan narrows widths.", "Drop `patch`, or use a depth method.")
    engine = Engine(adapter, windows, batch_size=batch_size, cache_bytes=0, onload=onload)
    removed = frozenset(removed_blocks(plan))
    runs = removed_runs(removed)
    skipped = [{"blocks": r, "reason": "the run starts at block 0: no kept block before it to fold a map into"} for r in runs if r[0] == 0]
    fits = _fit(engine, [r for r in runs if r[0] > 0], removed, config.ridge, progress)
    tensors = {f"run_{k}": t for k, (_, t, _) in enumerate(fits)}
    names = {id(m): n for n, m in adapter.model.named_modules()}
    records = [{"blocks": run.blocks, "into": run.into, "module": names.get(id(adapter.output_projection(Block(run.into)).module), ""),
                "tensor": f"run_{k}", "fit": fit} for k, (run, _, fit) in enumerate(fits)]
    _, digest = encode_patch(tensors)
    record = {"kind": config.kind, "ridge": float(config.ridge), "tokens": windows.n_tokens,
              "calibration": windows.fingerprint() | {"batch_size": batch_size}, "file": file, "sha256": digest,
              "runs": records, "skipped": skipped}
    return with_patch(plan, record), tensors, engine


def _fit(engine: Engine, runs: list[list[int]], removed: frozenset[int], ridge: float,
         progress: ProgressFn | None) -> list[tuple[_Run, torch.Tensor, dict]]:
    """Walk the dense and the pruned-and-patched streams block-major; solve each run's map at its end."""
    n, empty = engine.n_batches, frozenset()
    dense = [engine.h0(j) for j in range(n)]
    pruned = list(dense)
    d = dense[0].shape[-1]
    starts = {r[0] - 1: r for r in runs}  # block i -> its run
    ends = {r[-1] + 1: r for r in runs}  # boundary after the run -> the run
    open_run: tuple[_Run, list[torch.Tensor]] | None = None
    out = []
    for b in range(engine.num_blocks + 1):
        if b in ends:  # the dense stream is at the run's end: accumulate, solve, patch the pruned stream
            run, ms = open_run
            for j in range(n):
                run.add(ms[j], dense[j].to(ms[j].device) - pruned[j].to(ms[j].device))
            t64 = solve_patch(run.gram, run.cross, ridge)
            t = t64.to(torch.float32)
            eye = torch.eye(d, dtype=torch.float64, device=t64.device)
            fit = {"mse_identity": _residual(run.rr, run.gram, run.cross, eye) / run.tokens,
                   "mse": _residual(run.rr, run.gram, run.cross, t.to(torch.float64)) / run.tokens}
            pruned = [pruned[j] + (ms[j] @ t.to(ms[j].device)).to(pruned[j].device, pruned[j].dtype) for j in range(n)]
            out.append((run, t.cpu(), fit))
            open_run = None
        if b == engine.num_blocks:
            break
        dense = [engine.run(j, dense[j], b, b + 1, empty) for j in range(n)]
        if b in starts:  # block i: keep what it writes, M, and hold the pruned stream before it until the run ends
            ms = [(engine.run(j, pruned[j], b, b + 1, empty) - pruned[j].to(engine.devices[b])) for j in range(n)]
            open_run = (_Run(starts[b], d, dense[0].device), ms)
        elif b not in removed:
            pruned = [engine.run(j, pruned[j], b, b + 1, empty) for j in range(n)]
        if progress is not None:
            progress("linear patch", b + 1, engine.num_blocks)
    return out

