"""The public operations ``prune`` and ``evaluate``: typed functions over (model, config, calibration).

``prune`` looks the method up in the registry (:mod:`prunekit.methods.registry`), has it make a
plan (:func:`~prunekit.methods.depth.planner.plan_depth` or
:func:`~prunekit.methods.width.llm_pruner.plan_width`), applies the plan with
:func:`~prunekit.plan.apply.apply_plan` and, given ``out``, writes the pruned model, the journal,
``timing.json`` and the run report. The caller's model is never changed: the plan is applied to a
copy (``loaded`` given as a :class:`LoadedModel`) or to the model loaded here (a spec). With a
:class:`~prunekit.methods.depth.patch.PatchConfig`, a depth plan gets its linear patch fitted after the
search (:func:`~prunekit.methods.depth.patch.fit_linear_patch`) and written beside it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.io import check_output_dir
from prunekit.core.journal import Journal
from prunekit.data.calibration import CalibConfig, calibration_record, calibration_windows
from prunekit.data.windows import build_windows
from prunekit.engine.memo import ScoreMemo
from prunekit.engine.onload import Onloader
from prunekit.engine.ranks import Ranks, current, rank_device, requested_world
from prunekit.engine.runner import default_cache_bytes
from prunekit.evaluation.perplexity import perplexity
from prunekit.evaluation.report import write_report
from prunekit.methods.depth.patch import PatchConfig, check_patchable, fit_linear_patch, patch_windows
from prunekit.methods.depth.planner import plan_depth, stop_rule
from prunekit.methods.depth.units import make_units
from prunekit.methods.options import DepthConfig
from prunekit.methods.registry import method_for
from prunekit.methods.width.importance import check_gradient_dtype, check_layerwise
from prunekit.methods.width.llm_pruner import Gradients
from prunekit.methods.width.options import WidthConfig
from prunekit.models.loading import LoadedModel, resolve_dtype
from prunekit.models.registry import get_adapter
from prunekit.pipeline.load import as_loaded
from prunekit.plan.apply import apply_plan, save_pruned
from prunekit.plan.schema import Plan, model_record

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PruneResult:
    """The plan, the pruned model and the run's timings and counted work."""

    plan: Plan
    loaded: LoadedModel
    timing: dict = field(default_factory=dict)


def with_plan(loaded: LoadedModel, plan: Plan, owned: bool, check: bool = False, patch_tensors: dict | None = None) -> LoadedModel:
    """``loaded`` with ``plan`` applied: in place when this call loaded the model itself (``owned``),
    else on a copy, so a caller's model is never changed. ``patch_tensors``: the matrices of the plan's linear patch."""
    if not owned:
        model = copy.deepcopy(loaded.model)
        loaded = LoadedModel(model, loaded.tokenizer, get_adapter(model), loaded.spec, dict(loaded.info))
    apply_plan(loaded.model, plan, check=check, dtype=loaded.info.get("compute_dtype"), patch=patch_tensors)  # stored: hashed as computed
    if patch_tensors is not None:
        loaded.info["patch"] = patch_tensors
    return loaded


def prune(
    model: str | LoadedModel, config: DepthConfig | WidthConfig, calib: CalibConfig, *, out: str | Path | None = None,
    overwrite: bool = False, resume: bool = False, progress: ProgressFn | None = None,
    on_step: Callable[[dict], None] | None = None, dtype: str = "float32", device: str | None = None,
    patch: PatchConfig | None = None, memo: ScoreMemo | None = None,
) -> PruneResult:
    """Plan what to remove with ``config.method``, remove it, and write ``out`` when given.

    ``config``: a :class:`DepthConfig` for the depth methods, a :class:`WidthConfig` for
    llm-pruner. With ``out``, every finished step (depth) or gradient point (width) is journaled in
    ``out``; ``resume=True`` continues a killed run from there (same inputs required). The output
    directory is assembled aside and renamed into place. ``patch``: fit a linear patch of the depth plan
    (``OUT/patch.safetensors``; ``timing['patch']``: its seconds and counted work). ``memo`` (depth methods, one
    process): candidate sums shared with another search on the same in-memory model and calibration
    (:mod:`prunekit.engine.memo`; the same plan).
    """
    method = method_for(config)
    if patch is not None and method.kind == "width":
        raise PrunekitError(f"`patch` linear applies to the depth methods; '{config.method}' is a width method.",
                            "Drop `patch`, or use a depth method (e.g. sleb, blockpruner, budget-greedy).")
    if method.kind == "width":
        return prune_width(model, config, calib, progress=progress, out=out, overwrite=overwrite, resume=resume,
                           dtype=dtype, device=device)
    if config.device_map is not None:  # before joining any torchrun process group
        _check_device_map_run(config, method.needs_gradients, requested_world(), device)
    ranks = current()
    if out is not None and not resume and ranks.is_main:
        check_output_dir(Path(out), overwrite)
    loaded = as_loaded(model, dtype, rank_device(device, ranks), stored=bool(config.max_memory), device_map=config.device_map)
    if patch is not None:
        check_patchable(loaded.adapter)  # before a search is spent
    onload = None
    if config.max_memory:  # weights stay stored; blocks come in, converted, under the cap
        onload = Onloader(loaded.adapter, loaded.info.get("compute_device", loaded.device),
                          loaded.info.get("compute_dtype", resolve_dtype(dtype)), config.max_memory * 2**30)
    record_dtype = onload.dtype if onload is not None else None
    kind = method.unit_kind(config.blocks_kind)
    stop_rule(loaded, make_units(loaded.adapter, kind), config, kind)  # an unreachable budget is refused before OUT is touched
    windows = calibration_windows(loaded, calib)
    fit_windows = patch_windows(loaded, calib, patch) if patch is not None else None  # a short source refused before the search
    calibration = calibration_record(windows, calib.batch_size, loaded.model.config.pad_token_id)
    journal, start = None, None
    if out is not None:
        fingerprint = {"model": model_record(loaded, record_dtype)["weights_sha256"], "calibration": calibration,
                       "options": config.plan_options()}
        journal, start = _open_journal(Path(out), fingerprint, resume, ranks)

    def on_record(rec: dict) -> None:
        if journal is not None:
            journal.append(rec)
        if on_step is not None:
            on_step(rec)

    cache_bytes = config.cache_gb * 2**30 if config.cache_gb else default_cache_bytes(onload.device if onload else loaded.device)
    main = ranks.is_main
    try:
        res = plan_depth(loaded, method.run, kind, config, windows, cache_bytes=cache_bytes, calibration=calibration,
                         progress=progress if main else None, start=start, on_record=on_record if main else None,
                         ranks=ranks, onload=onload, memo=memo)
        tensors = None
        if patch is not None:
            t0 = time.perf_counter()
            res.plan, tensors, engine = fit_linear_patch(loaded, res.plan, fit_windows, patch, batch_size=calib.batch_size,
                                                         progress=progress if main else None, onload=onload)
            res.timing["patch"] = {"seconds": time.perf_counter() - t0, "work": engine.counter.as_dict()}
    finally:
        if onload is not None:
            onload.release()  # the model holds its stored weights again
    pruned = with_plan(loaded, res.plan, owned=not isinstance(model, LoadedModel), patch_tensors=tensors)
    if pruned.adapter.total_params() != res.plan["params_after"]:
        raise AssertionError("parameter accounting differs from the pruned model")
    if out is not None and main:
        save_pruned(pruned, res.plan, out, overwrite=True, extra_files={"timing.json": res.timing}, copy_files=[journal.path],
                    patch=tensors)
        write_report(out)
    return PruneResult(res.plan, pruned, res.timing)


def _check_device_map_run(config: DepthConfig, needs_gradients: bool, world: int, device: str | None) -> None:
    """What a run split over devices (``device_map``) does not do: gradients, torchrun ranks, a `device` beside it."""
    if needs_gradients:
        raise PrunekitError(f"`method` {config.method} takes a backward pass through the whole model; `device_map` does not apply to it.",
                            "Drop `device_map`, or use a method without gradients (e.g. blockpruner, sleb, shortgpt).")
    if world > 1:
        raise PrunekitError(f"`device_map` splits one model over the devices of one process; this run has {world} torchrun ranks.",
                            "Run one process with `device_map`, or ranks without it.")
    if device is not None:
        raise PrunekitError("`device_map` places every module itself; `device` was given too.", "Drop `device`.")


def _open_journal(out: Path, fingerprint: dict, resume: bool, ranks: Ranks) -> tuple[Journal | None, list[dict]]:
    """Rank 0 opens (or resumes) the journal; every rank gets its finished steps (or rank 0's refusal)."""
    journal, payload = None, None
    if ranks.is_main:
        try:
            journal = Journal.open(out, fingerprint, resume)
            payload = journal.records
        except PrunekitError as e:
            payload = e
    payload = ranks.broadcast(payload)
    if isinstance(payload, PrunekitError):
        raise payload
    return journal, list(payload)


def prune_width(
    model: str | LoadedModel, width: WidthConfig, calib: CalibConfig, *, progress: ProgressFn | None = None,
    out: str | Path | None = None, overwrite: bool = False, gradients: Gradients | None = None, resume: bool = False,
    dtype: str = "float32", device: str | None = None,
) -> PruneResult:
    """LLM-Pruner: score, choose, slice; write ``out`` when given.

    ``gradients``: from :func:`prunekit.methods.width.llm_pruner.width_gradients` on the same model
    and families, to share one gradient pass between runs (e.g. several importances or ratios).
    Without them, and with ``out``, the gradient pass is journaled in ``out`` and ``resume``
    continues a killed one. Under torchrun ranks the windows are split over the ranks (the sums
    all-reduced, the same plan; not journaled) and rank 0 writes ``out``. With ``width.max_memory``
    the model is held as stored (checkpoint dtype, memory-mapped) and the gradient pass runs layer
    by layer under the cap (the same plan); the pruned model is sliced from the stored weights and
    saved in the checkpoint's dtype, as the depth methods do.
    """
    method = method_for(width)
    ranks = current()
    if out is not None and not resume and ranks.is_main:
        check_output_dir(Path(out), overwrite)
    loaded = as_loaded(model, dtype, rank_device(device, ranks), stored=width.max_memory is not None)
    onload = None
    if width.max_memory is not None:  # weights stay stored; blocks come in, converted, under the cap
        onload = Onloader(loaded.adapter, loaded.info.get("compute_device", loaded.device),
                          loaded.info.get("compute_dtype", resolve_dtype(dtype)), width.max_memory * 2**30)
    if width.needs_gradients and onload is not None:
        check_layerwise(loaded.model, onload.dtype, onload.device)
    elif width.needs_gradients:
        check_gradient_dtype(next(loaded.model.parameters()).dtype, loaded.device)
    try:
        res = method.run(loaded, width, calib, progress if ranks.is_main else None, gradients=gradients, journal_dir=out,
                         resume=resume, ranks=ranks, onload=onload)
    finally:
        if onload is not None:
            onload.release()  # the model holds its stored weights again
    if onload is not None:
        res.timing["weights"] = onload.stats()
    pruned = with_plan(loaded, res.plan, owned=not isinstance(model, LoadedModel))
    if pruned.adapter.total_params() != res.plan["params_after"]:
        raise AssertionError(f"parameter accounting differs: plan {res.plan['params_after']}, model {pruned.adapter.total_params()}")
    if out is not None and ranks.is_main:
        res.timing["ranks"] = ranks.world
        journaled = [res.journal] if res.journal is not None else []
        save_pruned(pruned, res.plan, out, overwrite=overwrite or resume or bool(journaled),
                    extra_files={"timing.json": res.timing}, copy_files=journaled)
        write_report(out)
    return PruneResult(res.plan, pruned, res.timing)


def evaluate(
    model: str | LoadedModel, sources: list[str] | tuple[str, ...] = ("wiki-test",), seq_len: int = 256,
    windows: int | None = 16, batch_size: int = 4, *, plan: Plan | None = None, dtype: str = "float32",
    device: str | None = None, max_memory: float | None = None, device_map: str | dict | None = None,
    patch_tensors: dict | None = None,
) -> dict:
    """Perplexity on each source (first ``windows`` windows of ``seq_len``) and the parameter count.

    With ``plan``, the plan is applied to a copy of the model first (the caller's model is left as it is);
    ``patch_tensors``: the matrices of its linear patch (:func:`prunekit.plan.patch.read_patch`).
    ``max_memory``: GiB of weights resident on ``device`` (a base checkpoint given as a spec, kept
    memory-mapped in its dtype; blocks brought in block-major): the values are the uncapped ones.
    ``device_map``: a base checkpoint split over devices by accelerate (``auto`` or ``{module: device}``),
    each block run on its own device.
    """
    if device_map is not None and (max_memory is not None or device is not None):
        raise PrunekitError("`device_map` goes alone: without `max_memory` and `device`.", "Drop `max_memory` and `device`.")
    if max_memory is not None and (isinstance(model, LoadedModel) or not max_memory > 0):
        raise PrunekitError("`max_memory` needs a positive number of GiB and a checkpoint path (not an in-memory model).",
                            "Give the checkpoint's path, or drop `max_memory`.")
    loaded = as_loaded(model, dtype, device, stored=max_memory is not None, device_map=device_map)
    if plan is not None:
        loaded = with_plan(loaded, plan, owned=not isinstance(model, LoadedModel), check=True, patch_tensors=patch_tensors)
    onload = None
    if max_memory is not None:
        onload = Onloader(loaded.adapter, loaded.info["compute_device"], loaded.info["compute_dtype"], max_memory * 2**30)
    out = {"model": loaded.spec, "parameters": loaded.adapter.total_params(), "perplexity": {}, "tokens": {}}
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    try:
        for src in sources:
            w = build_windows(loaded.tokenizer, src, seq_len, windows, max_positions=max_pos)
            with torch.inference_mode():
                out["perplexity"][src] = perplexity(loaded, w, batch_size, onload=onload)
            out["tokens"][src] = w.n_tokens
    finally:
        if onload is not None:
            onload.release()
    if onload is not None:
        out["weights"] = onload.stats()
    return out

