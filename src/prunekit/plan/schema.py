"""The plan: the JSON record of a pruning run, and the only input :func:`prunekit.apply_plan` needs.

Schema (``"prunekit_plan": 1``)::

    {
      "prunekit_plan": 1,
      "method": "blockpruner",            # or a baseline, or "llm-pruner"
      "options": {...},                   # the method's options as run
      "model": {"spec", "model_type", "config", "weights_sha256", "weights_dtype", "parameters"},
      "calibration": {"source", "text_sha256", "seq_len", "windows", "sample", "seed"},
      "removed": [{"step", "unit", "blocks", "score", "value"}, ...],   # depth units, in order
      "width": null | {...},              # width pruning: kept heads / channels per layer
      "dense_value": float,               # calibration perplexity of the dense model
      "params_before": int, "params_after": int, "ratio_removed": float,
      "patch": {...},                     # optional: a depth plan's linear patch (prunekit.plan.patch)
      "decoder_params_before": int,       # parameters of the decoder layers (no embedding, final norm, LM head)
      "decoder_ratio_removed": float      # the fraction of those removed (options.ratio_of: what `ratio` meant)
    }

``ratio_removed`` is the fraction of all parameters removed, ``decoder_ratio_removed`` that of the decoder
layers' parameters; every plan records both (plans written before them lack the two decoder fields).

Timings live in a separate ``timing.json`` so that the same inputs give a byte-identical plan.
Every plan is made by :func:`build_plan` and checked by :func:`validate_plan` (on write, on read
and before it is applied), so a hand-edited plan whose steps repeat a block, name a block outside
the model or are out of order is refused with the entry named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NotRequired, TypedDict

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.io import weights_hash, write_json_atomic
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel
from prunekit.plan.patch import check_patch_record

PLAN_VERSION = 1
STEP_FIELDS = ("step", "unit", "blocks", "score", "value")  # what a method's step record gives the plan


class Plan(TypedDict):
    """The plan's type (a JSON object; see the module docstring)."""

    prunekit_plan: int
    method: str
    options: dict
    model: dict
    calibration: dict
    removed: list[dict]
    width: dict | None
    dense_value: float | None
    params_before: int
    params_after: int
    ratio_removed: float
    patch: NotRequired[dict]
    decoder_params_before: int
    decoder_ratio_removed: float


def model_record(loaded: LoadedModel, dtype: torch.dtype | None = None) -> dict:
    """The plan's description of the base model: spec, config, weights hash, parameter count.

    ``dtype``: hash the weights as converted to this dtype (a model held in its checkpoint's dtype
    under a memory cap and computed in ``dtype`` gets the record of the model loaded in ``dtype``).
    """
    return {
        "spec": loaded.spec,
        "model_type": loaded.model.config.model_type,
        "config": loaded.model.config.to_dict() | {"dtype": "float32"},
        "weights_sha256": weights_hash(loaded.model, dtype),
        "weights_dtype": str(dtype or next(loaded.model.parameters()).dtype).removeprefix("torch."),  # what the hash is of
        "parameters": loaded.adapter.total_params(),
    }


def build_plan(
    method: str, options: dict, model: dict, calibration: dict, params_before: int, *, decoder_params: int,
    steps: list[tuple[int, dict]] = (), width: dict | None = None, params_removed: int | None = None,
    decoder_removed: int | None = None, dense_value: float | None = None,
) -> Plan:
    """The one way a plan is made, then validated.

    ``steps``: for a depth plan, ``(parameters of the unit, the method's step record)`` in removal
    order; each plan entry keeps :data:`STEP_FIELDS` of the record and the running totals.
    ``params_removed``: for a width plan (no steps), the parameters its ``width`` record removes.
    ``decoder_params``: the decoder layers' parameters before; ``decoder_removed``: how many of them the
    plan removes, when not every removed parameter is one of them (hidden channels also narrow the
    embedding and the LM head); by default all are (blocks, heads and MLP channels live in the layers).
    """
    removed, n = [], 0
    for unit_params, rec in steps:
        n += unit_params
        removed.append({k: rec[k] for k in STEP_FIELDS if k in rec} | {"params_removed": n, "ratio_removed": n / params_before})
    if params_removed is not None:
        n += params_removed
    plan: Plan = {
        "prunekit_plan": PLAN_VERSION,
        "method": method,
        "options": options,
        "model": model,
        "calibration": calibration,
        "removed": removed,
        "width": width,
        "dense_value": dense_value,
        "params_before": params_before,
        "params_after": params_before - n,
        "ratio_removed": n / params_before,
        "decoder_params_before": decoder_params,
        "decoder_ratio_removed": (n if decoder_removed is None else decoder_removed) / decoder_params,
    }
    return validate_plan(plan)


REQUIRED = {
    "prunekit_plan": int, "method": str, "options": dict, "model": dict, "calibration": dict,
    "removed": list, "params_before": int, "params_after": int, "ratio_removed": float,
}
OPTIONAL = {"decoder_params_before": int, "decoder_ratio_removed": float}  # absent from plans written before them


def validate_plan(plan: object, where: str = "plan") -> dict:
    """Check a plan's version, fields and types; raise a one-line error naming what is wrong."""
    if not isinstance(plan, dict):
        raise PrunekitError(f"{where} is not a JSON object.", "Use a plan.json written by prunekit.")
    version = plan.get("prunekit_plan")
    if version != PLAN_VERSION:
        raise PrunekitError(
            f"{where} has plan version {version!r}; this prunekit reads version {PLAN_VERSION}.",
            "Re-run the pruning with this version of prunekit.",
        )
    for key, typ in (REQUIRED | OPTIONAL).items():
        if key not in plan:
            if key in OPTIONAL:
                continue
            raise PrunekitError(f"{where} lacks the field '{key}' (corrupted or hand-edited?).", "Use a plan.json written by prunekit.")
        value = plan[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise PrunekitError(f"{where} field '{key}' should be {typ.__name__}, not {type(plan[key]).__name__}.",
                                "Use a plan.json written by prunekit.")
    for key in ("model_type", "config"):
        if key not in plan["model"]:
            raise PrunekitError(f"{where} model lacks '{key}'.", "Use a plan.json written by prunekit.")
    _check_steps(plan, where)
    if plan.get("patch") is not None:
        check_patch_record(plan["patch"], removed_blocks(plan), where)
    return plan


def with_patch(plan: Plan, patch: dict) -> Plan:
    """A copy of the depth plan ``plan`` carrying the linear patch record ``patch`` (see :mod:`prunekit.plan.patch`), validated."""
    if plan.get("width"):
        raise PrunekitError("a linear patch applies to a depth plan; this plan narrows widths.", "Patch a depth method's plan.")
    return validate_plan(dict(plan) | {"patch": patch})


def _check_steps(plan: dict, where: str) -> None:
    """Each step names blocks inside the model, none twice, and the steps count 0, 1, 2, ... in order."""
    layers = plan["model"]["config"].get("num_hidden_layers")
    n_blocks = 2 * layers if isinstance(layers, int) else None
    seen: dict[int, int] = {}
    for i, step in enumerate(plan["removed"]):
        blocks = step.get("blocks") if isinstance(step, dict) else None
        if not isinstance(blocks, list) or not blocks or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise PrunekitError(f"{where} removed[{i}] has no valid 'blocks' list.", "Use a plan.json written by prunekit.")
        if step.get("step", i) != i:
            raise PrunekitError(
                f"{where} removed[{i}] is step {step.get('step')!r}, out of order (expected step {i}).",
                "List the steps in removal order (0, 1, 2, ...), or use a plan.json written by prunekit.",
            )
        for b in blocks:
            if n_blocks is not None and b >= n_blocks:
                raise PrunekitError(
                    f"{where} removed[{i}] names block {b} ({Block(b)}), outside the model's {n_blocks} blocks.",
                    "Use a plan made for this model.",
                )
            if b in seen:
                raise PrunekitError(
                    f"{where} removed[{i}] removes {Block(b)} again (already removed at removed[{seen[b]}]).",
                    "Remove each block once, or use a plan.json written by prunekit.",
                )
            seen[b] = i


def read_plan(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "plan.json"
    if not path.is_file():
        raise PrunekitError(f"plan file '{path}' does not exist.", "Give the plan.json (or the output directory) that prune wrote.")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunekitError(f"plan file '{path}' is not valid JSON ({e}).", "Use a plan.json written by prunekit.") from None
    return validate_plan(plan, where=f"plan '{path}'")


def write_plan(path: str | Path, plan: dict) -> None:
    validate_plan(plan)
    write_json_atomic(Path(path), plan)


def removed_blocks(plan: dict) -> list[int]:
    """All block indices the plan removes, in removal order."""
    return [b for step in plan["removed"] for b in step["blocks"]]
