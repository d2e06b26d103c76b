"""LLM-Pruner (arXiv 2305.11627) as a plan: groups -> importance -> choice -> plan -> apply_plan.

:func:`plan_width` is what ``prunekit prune --method llm-pruner`` runs. Steps:

1. the coupled families (:mod:`.groups`): KV groups and MLP channels of the layers in
   ``--layers`` (``--strategy block``), or the hidden channels (``--strategy channel``); the
   attention groups are checked against the model's own behaviour (:func:`trace_kv_readers`);
2. calibration gradients over ``--samples`` windows of ``--seq-len`` tokens (Taylor scores only);
3. group scores (:mod:`.importance`) and the choice under the parameter budget (:mod:`.select`);
4. the plan (``method: "llm-pruner"``, ``removed: []``, ``width``: kept indices per layer); the
   pipeline's :func:`prunekit.plan.apply.apply_plan` then slices the model
   (:mod:`prunekit.plan.slicing`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig, calibration_windows
from prunekit.engine.onload import Onloader
from prunekit.engine.ranks import Ranks
from prunekit.engine.runner import default_cache_bytes
from prunekit.methods.options import base_name, ratio_base
from prunekit.methods.width.fusion import fusion_scores
from prunekit.methods.width.importance import (
    GradStats,
    collect_gradients,
    collect_gradients_layerwise,
    family_scores,
    finite_or_raise,
    needed_parameters,
)
from prunekit.methods.width.journal import GradientJournal
from prunekit.methods.width.options import WidthConfig, parse_layers
from prunekit.methods.width.select import Choice, count_for, global_rank, uniform
from prunekit.models.contract import ATTN, SOFTMAX, Block
from prunekit.models.groups import Family, block_families, hidden_family, kv_readers, trace_kv_readers
from prunekit.models.loading import LoadedModel
from prunekit.plan.schema import Plan, build_plan, model_record

ProgressFn = Callable[[str, int, int], None]
#: ``options.ratio_is`` of a plan: what its ``ratio`` is a fraction of (the words of plans written before ``ratio_of``).
RATIO_IS = {"total": "the total parameters", "decoder": "the decoder layers' parameters"}


def refuse_pruned(loaded: LoadedModel) -> None:
    """Refuse a model that is already pruned (width plans apply to a base model)."""
    a = loaded.adapter
    if a.removed_blocks() or getattr(a.model.config, "prunekit_width", None) or loaded.info.get("plan"):
        raise PrunekitError(
            f"'{loaded.spec}' is already pruned; width plans apply to a base model.",
            "Prune the base model (plan.model.spec of that output).",
        )


def check_groups(loaded: LoadedModel, families: list[Family], onload: Onloader | None = None) -> None:
    """Compare the adapter's KV groups with the readers traced on the model (a short random input).
    ``onload``: the model is held under a memory cap; the embedding and each traced attention are
    brought in (the trace perturbs the resident copy), and given back after."""
    fams = [f for f in families if f.kind == "attn" and loaded.adapter.mixer_kind(f.layer) == SOFTMAX]
    if not fams or loaded.device.type == "meta":
        return
    adapter = loaded.adapter
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, adapter.model.config.vocab_size, (1, 8), generator=gen).to(onload.device if onload else loaded.device)
    if onload is not None:
        onload.bring("embed")
    h0, kwargs = adapter.capture_inputs(ids)
    hidden = torch.randn(h0.shape, generator=gen).to(device=h0.device, dtype=h0.dtype)
    for fam in fams:
        a = adapter.attention(fam.layer)
        if onload is not None:
            onload.bring(Block.of(fam.layer, ATTN).index)
        traced = trace_kv_readers(adapter, fam.layer, kwargs[fam.layer], hidden)
        if traced != kv_readers(a.num_heads, a.num_kv_heads):
            raise PrunekitError(
                f"layer {fam.layer}: the model's query heads read KV heads as {traced}, not as the adapter's groups assume.",
                "This architecture needs its own adapter (report it with the model's config).",
            )
    if onload is not None:
        onload.release()


def width_record(families: list[Family], choice: Choice, strategy: str, adapter) -> dict:
    """The plan's ``width`` record: kept KV groups (and their query heads), channels or hidden channels per layer."""
    layers: dict[int, dict] = {}
    hidden = None
    for fam, removed in zip(families, choice.removed):
        if not removed:
            continue
        kept = [i for i in range(fam.n) if i not in set(removed)]
        if fam.kind == "hidden":
            hidden = kept
            continue
        entry = layers.setdefault(fam.layer, {"layer": fam.layer})
        if fam.expert is not None:  # every routed expert of the layer, the untouched ones whole
            experts = entry.setdefault("expert_channels",
                                       [list(range(f.n)) for f in families if f.layer == fam.layer and f.expert is not None])
            experts[fam.expert] = kept
            entry["moe_intermediate_size"] = len(kept)
        elif fam.shared:  # the shared expert of a sparse MoE layer
            entry["shared_channels"] = kept
            entry["shared_intermediate_size"] = len(kept)
        elif fam.kind == "attn":  # KV groups; a linear mixer's groups: key heads, each with its value heads
            readers = kv_readers(*adapter.head_counts(fam.layer))
            entry["kv_heads"] = kept
            entry["heads"] = sorted(h for g in kept for h in readers[g])
            entry["num_kv_heads"] = len(kept)
            entry["num_heads"] = len(entry["heads"])
        else:
            entry["mlp_channels"] = kept
            entry["intermediate_size"] = len(kept)
    return {
        "strategy": strategy,
        "layers": [layers[k] for k in sorted(layers)],
        "hidden": hidden,
        "hidden_size": len(hidden) if hidden is not None else int(adapter.embed.weight.shape[1]),
        "per_layer_fraction": choice.fraction,
    }


def decoder_share(adapter, family: Family) -> int:
    """Parameters of the decoder layers that one structure of ``family`` owns: all of its parameters for KV groups and
    MLP channels; for a hidden channel, all but its entries of the embedding, the final norm and the LM head."""
    inside = {id(p) for p in adapter.layers.parameters()}
    return sum(p.index.shape[1] * p.per_index for p in family.parts if id(getattr(p.module, p.attr)) in inside)


def width_budget(adapter, width: WidthConfig) -> tuple[float, int]:
    """``(target, base)``: the parameters to remove, ``width.ratio`` of ``base`` (all parameters, or the decoder layers'
    with ``width.ratio_of`` decoder)."""
    base = ratio_base(adapter, width.ratio_of)
    return width.ratio * base, base


def choose_groups(width: WidthConfig, families: list[Family], scores: list[torch.Tensor], adapter) -> Choice:
    """The structures to remove under ``width``'s budget (:mod:`.select`); ``params_removed`` counts all parameters."""
    target, base = width_budget(adapter, width)
    of = base_name(width.ratio_of)
    if width.strategy == "channel":
        per = decoder_share(adapter, families[0]) if width.ratio_of == "decoder" else None
        return count_for(families[0], scores[0], target, base, width.ratio, at_least=width.at_least, of=of, per=per)
    if width.global_:
        return global_rank(families, scores, target, base, width.ratio, at_least=width.at_least, of=of)
    return uniform(families, scores, target, base, width.ratio, at_least=width.at_least, of=of)


def decoder_removed(adapter, families: list[Family], choice: Choice) -> int:
    """Parameters of the decoder layers that ``choice`` removes."""
    return sum(len(r) * decoder_share(adapter, f) for f, r in zip(families, choice.removed) if r)


@dataclass
class WidthOutcome:
    """The plan of a width run, its timings, and the gradient journal it wrote (or None)."""

    plan: Plan
    timing: dict
    journal: Path | None = None


@dataclass
class Gradients:
    """Calibration gradients for a width run, and the calibration record the plan keeps."""

    stats: GradStats
    calibration: dict
    journal: Path | None = None  # OUT/journal.jsonl when the pass was journaled
    resumed: int = 0  # windows taken from a journaled state (a resumed pass)


def families_for(adapter, width: WidthConfig) -> tuple[list[Family], str | None]:
    """The coupled families ``width`` prunes, and the resolved layer range (block strategy)."""
    if adapter.width_refusal:
        raise PrunekitError(f"{adapter.width_refusal} (model_type '{adapter.model_type}').",
                            "Use a depth method (blockpruner, shortgpt, sleb, ...).")
    if adapter.width_options_refusal and (width.strategy != "block" or width.global_):
        raise PrunekitError(f"{adapter.width_options_refusal} (model_type '{adapter.model_type}').",
                            "Use `strategy` block without `global`.")
    if width.strategy == "block":
        start, end = parse_layers(width.layers, adapter.num_layers)
        families = block_families(adapter, start, end)
        layer_range = f"{start}:{end}"
    else:
        families, layer_range = [hidden_family(adapter)], None
    if not families:
        raise PrunekitError("no attention or MLP block is left in `layers` to prune.", "Choose another `layers` range.")
    return families, layer_range


def width_gradients(
    loaded: LoadedModel, width: WidthConfig, calib: CalibConfig, progress: ProgressFn | None = None, *, fisher: bool | None = None,
    journal_dir: str | Path | None = None, resume: bool = False, weights_sha256: str | None = None,
    ranks: Ranks | None = None, onload: Onloader | None = None,
) -> Gradients:
    """Gradients (and the Fisher diagonal when ``fisher``, default: when the importance needs it) over
    ``width.samples`` windows of ``calib``; reusable across importances and ratios of the same families.

    ``journal_dir``: journal the pass there (``journal.jsonl`` + its state, :mod:`prunekit.methods.width.journal`);
    ``resume``: continue the pass journaled there (same model, calibration and options, or refused);
    ``weights_sha256``: the model's weights hash for the journal's fingerprint, when the caller has it.
    ``ranks``: torchrun ranks to split the windows over (sums all-reduced; the pass is then not
    journaled, and ``resume`` runs it again). ``onload``: the model is held under a memory cap; the
    pass runs layer by layer (:func:`collect_gradients_layerwise`; the same sums up to float rounding).
    """
    ranks = ranks or Ranks()
    families, _ = families_for(loaded.adapter, width)
    cal = CalibConfig(**(calib.as_dict() | {"windows": width.samples}))
    windows = calibration_windows(loaded, cal)
    ignore = loaded.model.config.pad_token_id
    need_f = width.needs_fisher if fisher is None else fisher
    calibration = windows.fingerprint() | {"ignore_index": ignore}
    journal = start = on_sample = None
    if journal_dir is not None and not ranks.spread:
        fingerprint = {"model": weights_sha256 or model_record(loaded, onload.dtype if onload else None)["weights_sha256"],
                       "calibration": calibration, "options": width.as_dict() | {"fisher": need_f}}
        journal = GradientJournal(Path(journal_dir), fingerprint, resume)
        start, on_sample = journal.start(), journal.after_sample
    if onload is not None:
        stats = collect_gradients_layerwise(onload, windows.ids, needed_parameters(families), need_f, default_cache_bytes(onload.device),
                                            ignore_index=ignore, progress=progress, start=start, on_sample=on_sample, ranks=ranks)
    else:
        stats = collect_gradients(loaded.model, windows.ids, needed_parameters(families), need_f, ignore_index=ignore,
                                  progress=progress, start=start, on_sample=on_sample, ranks=ranks)
    return Gradients(stats, calibration, journal.path if journal else None, len(start[2]) if start else 0)


def plan_width(
    loaded: LoadedModel, width: WidthConfig, calib: CalibConfig, progress: ProgressFn | None = None, *,
    gradients: Gradients | None = None, journal_dir: str | Path | None = None, resume: bool = False,
    ranks: Ranks | None = None, onload: Onloader | None = None,
) -> WidthOutcome:
    """Score and choose: the plan of an LLM-Pruner run on ``loaded`` (which is left as it is).

    ``gradients``: from :func:`width_gradients` on the same model and families, to share one
    gradient pass between runs (e.g. several importances or ratios). Otherwise the pass runs here,
    journaled in ``journal_dir`` when given (``resume`` continues a killed one there), spread over
    ``ranks`` when given (every rank gets the same plan). ``onload``: the model is held in its
    checkpoint's dtype under a memory cap (:mod:`prunekit.engine.onload`): the gradients come layer by
    layer and the weights are scored (and hashed) as converted to the compute dtype, so the plan is
    the one of the model loaded in that dtype.
    """
    refuse_pruned(loaded)
    adapter = loaded.adapter
    t0 = time.perf_counter()
    families, layer_range = families_for(adapter, width)
    check_groups(loaded, families, onload)
    total = adapter.total_params()
    target, base = width_budget(adapter, width)
    choose_groups(width, families, [torch.zeros(f.n, dtype=torch.float64) for f in families], adapter)  # refuse before any work
    dtype = onload.dtype if onload is not None else None
    record = model_record(loaded, dtype)
    stats, calibration = None, {"source": None, "note": f"--importance {width.importance} reads no calibration data"}
    if width.needs_gradients:
        if gradients is None:
            gradients = width_gradients(loaded, width, calib, progress, journal_dir=journal_dir, resume=resume,
                                        weights_sha256=record["weights_sha256"], ranks=ranks, onload=onload)
        elif width.needs_fisher and gradients.stats.fisher is None:
            raise ValueError("the given gradients lack the Fisher diagonal this importance needs")
        stats, calibration = gradients.stats, gradients.calibration
    gen = torch.Generator().manual_seed(width.seed)
    scores, fused = [], None
    if width.importance == "fusion":
        windows = calibration_windows(loaded, CalibConfig(**(calib.as_dict() | {"windows": width.samples})))
        scores, fused = fusion_scores(loaded, families, stats, windows, aggregate=width.aggregate, budget=(target, base, width.ratio))
    for i, fam in enumerate(families):
        if fused is None:
            scores.append(family_scores(fam, width.importance, width.aggregate, stats, generator=gen, dtype=dtype))
        finite_or_raise(scores[i], fam.key())
        if progress:
            progress("scores", i + 1, len(families))
    choice = choose_groups(width, families, scores, adapter)
    options = width.as_dict() | {
        "layers": layer_range,
        "ratio_is": f"fraction of {RATIO_IS[width.ratio_of]} (the paper's --pruning_ratio is per layer: see width.per_layer_fraction)",
    }
    plan = build_plan("llm-pruner", options, record, calibration, total,
                      width=width_record(families, choice, width.strategy, adapter) | ({"fusion": fused} if fused else {}),
                      params_removed=choice.params_removed, dense_value=math.exp(stats.loss) if stats else None,
                      decoder_params=adapter.decoder_params(), decoder_removed=decoder_removed(adapter, families, choice))
    timing = {"search_seconds": time.perf_counter() - t0, "gradient_samples": width.samples if stats else 0,
              "resumed_samples": gradients.resumed if gradients is not None else 0}
    return WidthOutcome(plan, timing, gradients.journal if gradients is not None else None)
