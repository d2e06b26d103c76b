"""The linear patch of a depth plan (``--patch linear``): its record, its sidecar file and its fold.

A plan may carry ``"patch"``: one ``d x d`` map ``T`` per maximal run of removed blocks, fitted on
calibration activations (:mod:`prunekit.methods.depth.patch`) and folded into the output projection of the
kept block just before the run (``block into``)::

    "patch": {
      "kind": "linear", "ridge": 1e-4, "tokens": 18432, "calibration": {...},   # the fit's windows
      "file": "patch.safetensors", "sha256": "<of that file>",                  # beside the plan
      "runs": [{"blocks": [12, 13, 14, 15], "into": 11, "module": "model.layers.5.mlp.down_proj",
                "tensor": "run_0", "fit": {"mse_identity": ..., "mse": ...}}],
      "skipped": [{"blocks": [0, 1], "reason": "..."}]
    }

The matrices live in a safetensors sidecar (float32 ``[d, d]``, one per run, named by ``tensor``) beside the
plan, recorded by file name and sha256, so the plan stays small JSON and re-applies to the same weights.

The fold. What block ``into`` writes to the residual is ``M = s * (x W^T + b)`` (``W`` ``[d, in]``, the
rows of its output projection; ``s`` the residual scale). The patched block writes ``M T`` (row vectors),
which is ``s * (x (T^T W)^T + T^T b)``: the projection's weight becomes ``T^T W`` and its bias ``T^T b``. This
is exact only where the projection's output reaches the residual linearly
(:meth:`~prunekit.models.adapter.ModelAdapter.output_fold_refusal`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Block

PATCH_KINDS = ("linear",)
FIXED = "Use the plan and its patch file as prunekit wrote them."


def removed_runs(removed: list[int] | set[int]) -> list[list[int]]:
    """Maximal runs of consecutive block indices, in order: ``{3, 4, 5, 9}`` -> ``[[3, 4, 5], [9]]``."""
    runs: list[list[int]] = []
    for b in sorted(set(removed)):
        if runs and runs[-1][-1] == b - 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def check_patch_record(patch: object, removed: list[int], where: str) -> None:
    """A plan's ``patch`` record: a known kind, a plain file name, and runs that are maximal runs of the plan's
    removed blocks, each folded into the kept block just before it (part of :func:`~prunekit.plan.schema.validate_plan`)."""
    if not isinstance(patch, dict) or patch.get("kind") not in PATCH_KINDS:
        raise PrunekitError(f"{where} field 'patch' is not a patch record of a known kind ({', '.join(PATCH_KINDS)}).", FIXED)
    file = patch.get("file")
    if not isinstance(file, str) or not file or Path(file).name != file or not isinstance(patch.get("sha256"), str):
        raise PrunekitError(f"{where} patch names no plain file name and sha256 of its matrices.", FIXED)
    runs, gone = removed_runs(removed), set(removed)
    for i, run in enumerate(patch.get("runs") or []):
        run = run if isinstance(run, dict) else {}
        blocks, into, tensor = run.get("blocks"), run.get("into"), run.get("tensor")
        if blocks not in runs or not isinstance(into, int) or into != blocks[0] - 1 or into in gone or not isinstance(tensor, str):
            raise PrunekitError(f"{where} patch.runs[{i}] is not a run of the removed blocks folded into the block before it.", FIXED)


def encode_patch(tensors: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    """The sidecar's bytes (safetensors, float32, contiguous) and their sha256."""
    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(tensors.items())})
    return data, hashlib.sha256(data).hexdigest()


def read_patch(plan_path: str | Path, plan: dict) -> dict[str, torch.Tensor] | None:
    """The patch matrices of ``plan`` (read from ``plan_path``: its plan.json or the directory holding it), checked
    against the plan's sha256; None for a plan without a patch."""
    patch = plan.get("patch")
    if not patch:
        return None
    plan_path = Path(plan_path)
    path = (plan_path if plan_path.is_dir() else plan_path.parent) / patch["file"]
    try:
        data = path.read_bytes()
    except OSError:
        raise PrunekitError(f"the plan's linear patch '{path}' is missing.",
                            "Keep the patch file beside its plan.json (they are written together).") from None
    if hashlib.sha256(data).hexdigest() != patch["sha256"]:
        raise PrunekitError(f"the linear patch '{path}' is not the one its plan records (sha256 differs).",
                            "Use the patch file written with this plan.")
    try:
        return load(data)
    except SafetensorError as e:  # pragma: no cover - the hash matched what prunekit wrote
        raise PrunekitError(f"could not read the linear patch '{path}' ({e}).", FIXED) from None


def _folded(module: nn.Linear, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(T^T W, T^T b)`` in ``module``'s dtype and device (computed in float64 where the weights are real)."""
    w, b = module.weight, module.bias
    tt = t.to(device=w.device, dtype=torch.float64 if w.device.type != "meta" else w.dtype).T
    new_w = (tt @ w.to(tt.dtype)).to(w.dtype)
    new_b = None if b is None else (tt @ b.to(tt.dtype)).to(b.dtype)
    return new_w, new_b


def _targets(adapter: ModelAdapter, patch: dict, tensors: dict[str, torch.Tensor]) -> list[tuple[nn.Linear, torch.Tensor]]:
    """(the output projection of each run's ``into`` block, its map), checked against the model."""
    out = []
    for run in patch["runs"]:
        into = Block(run["into"])
        t = tensors.get(run["tensor"])
        reason = adapter.output_fold_refusal(into)
        if reason is not None:
            raise PrunekitError(f"the plan's linear patch cannot be folded into this model: {reason}.", FIXED)
        module = adapter.output_projection(into).module
        d = module.weight.shape[0]
        if t is None or tuple(t.shape) != (d, d):
            raise PrunekitError(f"the linear patch lacks a {d} x {d} matrix '{run['tensor']}' for {into}.", FIXED)
        out.append((module, t))
    return out


def fold_patch(adapter: ModelAdapter, patch: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Fold every run's map into its block's output projection, for good (what :func:`~prunekit.plan.apply.apply_plan` calls)."""
    for module, t in _targets(adapter, patch, tensors):
        new_w, new_b = _folded(module, t)
        module.weight = nn.Parameter(new_w, requires_grad=module.weight.requires_grad)
        if new_b is not None:
            module.bias = nn.Parameter(new_b, requires_grad=module.bias.requires_grad)


@contextlib.contextmanager
def patched(adapter: ModelAdapter, patch: dict, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """The patch folded for the duration, the original Parameters restored after (compare evaluates each cell
    on the one loaded model, as :meth:`~prunekit.models.adapter.ModelAdapter.skipping` does for blocks)."""
    saved = [(m, m.weight, m.bias) for m, _ in _targets(adapter, patch, tensors)]
    try:
        fold_patch(adapter, patch, tensors)
        yield
    finally:
        for m, w, b in saved:
            m.weight, m.bias = w, b
