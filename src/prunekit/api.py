"""The public operations: prune, evaluate. Thin, typed functions over (model, calibration, config)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .apply import apply_plan, save_pruned
from .config import CalibConfig, DepthConfig, default_cache_bytes
from .data.windows import Windows, build_windows
from .depth.methods import DEPTH_METHODS, unit_kind
from .depth.units import make_units, unit_params
from .engine.runner import Engine
from .errors import PrunekitError
from .io import check_output_dir, weights_hash
from .journal import Journal
from .models.loading import LoadedModel, load_model
from .plan import PLAN_VERSION

ProgressFn = Callable[[str, int, int], None]


@dataclass
class PruneResult:
    """The plan, the pruned model (pruned in place) and the run's timings and counted work."""

    plan: dict
    loaded: LoadedModel
    timing: dict = field(default_factory=dict)


def as_loaded(model: str | LoadedModel, dtype: str = "float32", device: str | None = None) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)


def calibration_windows(loaded: LoadedModel, calib: CalibConfig) -> Windows:
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    return build_windows(
        loaded.tokenizer, calib.source, calib.seq_len, calib.windows, calib.sample, calib.seed,
        max_positions=max_pos, rows=calib.rows,
    )


def model_record(loaded: LoadedModel) -> dict:
    """The plan's description of the base model: spec, config, weights hash, parameter count."""
    return {
        "spec": loaded.spec,
        "model_type": loaded.model.config.model_type,
        "config": loaded.model.config.to_dict() | {"dtype": "float32"},
        "weights_sha256": weights_hash(loaded.model),
        "parameters": loaded.adapter.total_params(),
    }


def _stop_rule(loaded: LoadedModel, units: list, depth: DepthConfig) -> Callable[[list], bool]:
    adapter = loaded.adapter
    total = adapter.total_params()
    kind = depth.blocks_kind
    if depth.remove is not None:
        if depth.remove >= len(units):
            raise PrunekitError(
                f"--remove {depth.remove} would remove every {kind} block ({len(units)} in this model).",
                f"Use --remove {len(units) - 1} or less.",
            )
        return lambda removed: len(removed) >= depth.remove
    sizes = sorted(unit_params(adapter, u) for u in units)
    reachable = sum(sizes) - sizes[0]
    target = depth.ratio * total
    if target > reachable:
        raise PrunekitError(
            f"--ratio {depth.ratio} cannot be reached: removing all but one {kind} block removes {reachable / total:.3f} of the parameters.",
            f"Use --ratio {math.floor(reachable / total * 100) / 100} or less, or --blocks-kind mix.",
        )
    return lambda removed: sum(unit_params(adapter, u) for u in removed) >= target


PLAN_STEP_FIELDS = ("step", "unit", "blocks", "score", "value")
RUNTIME_OPTIONS = ("cache", "early_exit", "cache_gb", "candidate_batch")  # change the speed, never the choices


def prune(
    model: str | LoadedModel, depth: DepthConfig, calib: CalibConfig, out: str | Path | None = None,
    overwrite: bool = False, resume: bool = False, progress: ProgressFn | None = None,
    on_step: Callable[[dict], None] | None = None, dtype: str = "float32", device: str | None = None,
) -> PruneResult:
    """Search which blocks to remove, remove them, and write ``out`` when given.

    With ``out``, every finished step is journaled to ``out/journal.jsonl``; ``resume=True``
    continues a killed search from its last finished step (same inputs required). The final
    directory (plan, kept weights, timings, report) is assembled aside and renamed into place.
    A :class:`prunekit.width.WidthConfig` in place of ``depth`` runs LLM-Pruner (width pruning).
    """
    from .width.config import WidthConfig

    if isinstance(depth, WidthConfig):
        from .width.api import prune_width

        return prune_width(as_loaded(model, dtype, device), depth, calib, progress=progress, out=out, overwrite=overwrite,
                           resume=resume)
    if out is not None and not resume:
        check_output_dir(Path(out), overwrite)
    loaded = as_loaded(model, dtype, device)
    adapter = loaded.adapter
    windows = calibration_windows(loaded, calib)
    units = make_units(adapter, unit_kind(depth))
    should_stop = _stop_rule(loaded, units, depth)
    record = model_record(loaded)
    options = {k: v for k, v in depth.as_dict().items() if k not in RUNTIME_OPTIONS}
    calibration = windows.fingerprint() | {"batch_size": calib.batch_size, "ignore_index": loaded.model.config.pad_token_id}
    journal = None
    if out is not None:
        fingerprint = {"model": record["weights_sha256"], "calibration": calibration, "options": options}
        journal = Journal.open(Path(out), fingerprint, resume)

    def on_record(rec: dict) -> None:
        if journal is not None:
            journal.append(rec)
        if on_step is not None:
            on_step(rec)

    t0 = time.perf_counter()
    cache_bytes = depth.cache_gb * 2**30 if depth.cache_gb else default_cache_bytes(loaded.device)
    engine = Engine(adapter, windows, batch_size=calib.batch_size, ignore_index=calibration["ignore_index"],
                    cache_bytes=cache_bytes)
    dense_value = engine.perplexity(engine.total_score(frozenset()))
    engine.counter = type(engine.counter)()
    start = list(journal.records) if journal is not None else []
    outcome = DEPTH_METHODS[depth.method](loaded, engine, units, should_stop, depth, progress, start, on_record)
    search_seconds = time.perf_counter() - t0
    params_before = adapter.total_params()
    removed_params = 0
    removed = []
    for unit, rec in zip(outcome.units, outcome.records):
        removed_params += unit_params(adapter, unit)
        step = {k: rec[k] for k in PLAN_STEP_FIELDS if k in rec}
        removed.append(step | {"params_removed": removed_params, "ratio_removed": removed_params / params_before})
    plan = {
        "prunekit_plan": PLAN_VERSION,
        "method": depth.method,
        "options": options | {"criterion": outcome.extra.get("criterion", "ppl")},
        "model": record,
        "calibration": calibration,
        "removed": removed,
        "width": None,
        "dense_value": dense_value,
        "params_before": params_before,
        "params_after": params_before - removed_params,
        "ratio_removed": removed_params / params_before,
    }
    apply_plan(loaded.model, plan, check=False)
    assert adapter.total_params() == plan["params_after"], "parameter accounting differs from the pruned model"
    timing = {
        "search_seconds": search_seconds,
        "resumed_steps": len(start) if resume else 0,
        "runtime_options": {k: depth.as_dict()[k] for k in RUNTIME_OPTIONS},
        "steps": [{k: r.get(k) for k in ("step", "unit", "evaluated", "dropped")} for r in outcome.records],
        "work": engine.counter.as_dict(),
        "naive_macs": outcome.naive_macs,
        "counted_ratio": (outcome.naive_macs or 0.0) / max(engine.counter.total_macs, 1.0),
        "peak_cache_bytes": engine.store.peak,
    }
    if out is not None:
        save_pruned(loaded, plan, out, overwrite=True, extra_files={"timing.json": timing},
                    copy_files=[journal.path])
        from .report import write_report

        write_report(out)
    return PruneResult(plan, loaded, timing)


def perplexity(loaded: LoadedModel, windows: Windows, batch_size: int = 4) -> float:
    """exp(token-weighted mean next-token NLL) of the model on ``windows`` — the search's own criterion."""
    engine = Engine(loaded.adapter, windows, batch_size=batch_size, ignore_index=loaded.model.config.pad_token_id, cache_bytes=0)
    return engine.perplexity(engine.total_score(frozenset()))


def evaluate(
    model: str | LoadedModel, sources: list[str] | tuple[str, ...] = ("wiki-test",), seq_len: int = 256,
    windows: int | None = 16, batch_size: int = 4, plan: dict | None = None, dtype: str = "float32",
    device: str | None = None,
) -> dict:
    """Perplexity on each source (first ``windows`` windows of ``seq_len``) and the parameter count."""
    loaded = as_loaded(model, dtype, device)
    if plan is not None:
        apply_plan(loaded.model, plan)
    out = {"model": loaded.spec, "parameters": loaded.adapter.total_params(), "perplexity": {}, "tokens": {}}
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    for src in sources:
        w = build_windows(loaded.tokenizer, src, seq_len, windows, max_positions=max_pos)
        with torch.inference_mode():
            out["perplexity"][src] = perplexity(loaded, w, batch_size)
        out["tokens"][src] = w.n_tokens
    return out
