"""Depth-pruning baselines on the same footing as BlockPruner: same units, budget, engine and plan.

Each is a method with :func:`prunekit.methods.depth.blockpruner.blockpruner`'s signature, registered in
``DEPTH_METHODS`` (layer methods also in ``UNIT_KINDS``). Units, scores and what decides:

================== ====== ===================================================================
method             unit   score (the unit with the lowest is removed first)
================== ====== ===================================================================
shortgpt           layer  Block Influence ``BI_i = 1 - mean_t cos(x_i[t], x_{i+1}[t])`` over all
                          calibration tokens ``t`` (ShortGPT, arXiv 2403.03853); one shot
sleb               layer  greedy: calibration perplexity of the model without the layer (SLEB,
                          arXiv 2402.09025); the engine's exact greedy search
layer-ppl          layer  calibration perplexity of the dense model without that layer alone
                          (Shortened LLaMA's PPL criterion, arXiv 2402.02834); one shot
taylor             layer  Taylor+: ``sum_w |w * dL/dw|`` over the layer's weights (norms
                          included), ``L`` the calibration loss; the first ``round(L/8)`` and
                          last ``round(L/16)`` layers are kept (the authors keep 4 and 2 of 32)
relative-magnitude block  ``mean_t ||f(x)[t]|| / ||x[t] + f(x)[t]||`` (Samragh et al. 2023; a
                          BlockPruner baseline); one shot
blockpruner-oneshot block calibration perplexity without that block alone (BlockPruner's
                          ablation); one shot
finercut           block  greedy: Jensen-Shannon divergence of the pruned model's next-token
                          distributions from the dense model's on the calibration tokens
                          (FinerCut, arXiv 2405.18218; its configs use ``js_divergence``)
================== ====== ===================================================================

Here ``x_i`` is the residual stream entering layer ``i`` (``[batch, T, hidden]``), ``f(x)`` a
block's contribution (its output minus its input). One-shot methods rank every unit on the dense
model, then remove in rank order until the stop rule (the ``--ratio`` / ``--remove`` budget) is
met; each record carries the score that decided it (``score`` and ``value`` are both the score;
the plan's ``options.criterion`` names it). The greedy methods record the criterion total
(``score``) and its per-token value (``value``) after each step, as BlockPruner does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunekit.core.errors import PrunekitError
from prunekit.engine.layerwise import layerwise_gradients
from prunekit.engine.runner import Engine
from prunekit.methods.depth.blockpruner import blockpruner
from prunekit.methods.depth.outcome import DepthOutcome, ProgressFn, RecordFn, StopFn
from prunekit.methods.depth.units import Unit, unit_name
from prunekit.methods.options import DepthConfig
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel


# --- scores ------------------------------------------------------------------------------------
def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> tuple[float, int]:
    """``(sum over tokens of cos(h_in[t], h_out[t]), number of tokens)`` for states ``[..., hidden]``.

    ShortGPT's ``BI = 1 - sum / count`` once summed over all batches.
    """
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    return float(cos.double().sum()), cos.numel()


def relative_magnitude(h_in: torch.Tensor, h_out: torch.Tensor) -> tuple[float, int]:
    """``(sum over tokens of ||f|| / ||h_in + f||, number of tokens)`` with ``f = h_out - h_in``."""
    f = (h_out.float() - h_in.float()).norm(dim=-1)
    r = f / h_out.float().norm(dim=-1).clamp_min(1e-12)
    return float(r.double().sum()), r.numel()


def _walk(engine: Engine, units: list[Unit], fn, progress: ProgressFn | None, stage: str) -> dict[Unit, float]:
    """Mean over tokens of ``fn(state in, state out)`` per unit, on the dense model (``fn`` returns (sum, count)).

    Block-major: every window batch through a unit before the next unit, so under a memory cap each
    block's weights come in once."""
    e = engine
    order = sorted(units, key=lambda u: u[0])
    sums = {u: 0.0 for u in order}
    count = {u: 0 for u in order}
    hs, b = [e.h0(j) for j in range(e.n_batches)], 0

    def advance(stop: int) -> None:  # every batch through block ``blk`` before block ``blk + 1``
        for blk in range(b, stop):
            for j in range(e.n_batches):
                hs[j] = e.run(j, hs[j], blk, blk + 1, frozenset())

    for k, u in enumerate(order):
        advance(u[0])
        b, ins = u[0], list(hs)
        advance(u[-1] + 1)
        for j in range(e.n_batches):
            s, n = fn(ins[j].to(hs[j].device), hs[j])  # a unit's input may lie on the device before it
            sums[u] += s
            count[u] += n
        b = u[-1] + 1
        if progress:
            progress(stage, k + 1, len(order))
    return {u: sums[u] / max(count[u], 1) for u in order}


def layer_block_influence(engine: Engine, units: list[Unit], progress: ProgressFn | None = None) -> dict[Unit, float]:
    """ShortGPT's BI of each unit on the dense model: ``1 - mean over all tokens of cos(state in, state out)``."""
    return {u: 1.0 - c for u, c in _walk(engine, units, block_influence, progress, "block influence").items()}


def block_relative_magnitude(engine: Engine, units: list[Unit], progress: ProgressFn | None = None) -> dict[Unit, float]:
    """Mean over all tokens of ``||f(x)|| / ||x + f(x)||`` for each unit on the dense model."""
    return _walk(engine, units, relative_magnitude, progress, "relative magnitude")


def alone_totals(engine: Engine, units: list[Unit], progress: ProgressFn | None = None) -> dict[Unit, float]:
    """The engine's criterion total of the dense model without each unit alone.

    Batch by batch, the dense state walks forward; at each unit's first block the model without
    that unit runs to the end from it, so unit ``u`` costs only the blocks after it and the head.
    """
    e = engine
    order = sorted(units, key=lambda u: u[0])
    totals = {u: 0.0 for u in order}
    done, n = 0, e.n_batches * len(order)
    for j in range(e.n_batches):
        if e.onload is not None:  # under a memory cap: every unit at once, each block's weights in once per batch
            _alone_group(e, j, order, totals)
            done += len(order)
            if progress:
                progress("scoring units alone", done, n)
            continue
        h, b = e.h0(j), 0
        for u in order:
            h = e.run(j, h, b, u[0], frozenset())
            b = u[0]
            out = e.run(j, h, u[0], e.num_blocks, frozenset(u))
            totals[u] += float(e.score(j, out).sum())
            done += 1
            if progress:
                progress("scoring units alone", done, n)
    return totals


def _alone_group(e: Engine, j: int, order: list[Unit], totals: dict[Unit, float]) -> None:
    """Batch ``j`` of :func:`alone_totals` with the units run together (``Engine.run_group``, block-major):
    the dense states at the units' first blocks, then every unit's run to the end in one walk."""
    h, b, items = e.h0(j), 0, []
    for u in order:
        h = e.run(j, h, b, u[0], frozenset())
        b = u[0]
        items.append((u[0], h, frozenset(u), ()))
    for u, (out, _) in zip(order, e.run_group(j, items)):
        totals[u] += float(e.score(j, out).sum())


def taylor_scores(loaded: LoadedModel, engine: Engine, units: list[Unit]) -> dict[Unit, float]:
    """``sum_w |w * dL/dw|`` over each unit's weights (pre-norms included).

    ``L`` = the calibration NLL summed over all counted targets / their number (the engine's
    windows, batches and ignore index), its gradient accumulated over the batches with the
    model's own forward. Only the units' weights get gradients; flags are restored after. Under a
    memory cap (``engine.onload``) the same gradients come layer by layer (:func:`_taylor_layerwise`).
    """
    if engine.onload is not None:
        return _taylor_layerwise(engine, units)
    adapter, model = engine.adapter, engine.adapter.model
    params = {u: [p for b in u for m in adapter.block_modules(Block(b)) for p in m.parameters()] for u in units}
    wanted = {id(p) for ps in params.values() for p in ps}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    ignore = -100 if engine.ignore_index is None else engine.ignore_index
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        with torch.enable_grad():
            for ids in engine.batches:
                logits = model(input_ids=ids, use_cache=False).logits
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                      ignore_index=ignore, reduction="sum")
                (nll / engine.n_targets).backward()
                # counted as 3 forward passes (forward, then backward through activations and weights)
                tokens = ids.numel()
                engine.counter.block_macs += 3 * sum(engine.macs) * tokens
                engine.counter.head_macs += 3 * engine.head_macs * tokens
        return {u: float(sum((p.detach().float() * p.grad.float()).abs().double().sum() for p in ps if p.grad is not None))
                for u, ps in params.items()}
    finally:
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)


def _batch_nll(engine: Engine):
    """The loss of one window batch for :func:`taylor_scores`: its NLL over the counted targets of all windows."""
    ignore = -100 if engine.ignore_index is None else engine.ignore_index

    def loss(logits_fn, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(h[:, :-1]).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=ignore, reduction="sum")
        return nll / engine.n_targets

    return loss


def _taylor_layerwise(engine: Engine, units: list[Unit]) -> dict[Unit, float]:
    """:func:`taylor_scores` under a memory cap: the gradients summed over the batches in float32 on the
    CPU (:func:`prunekit.engine.layerwise.layerwise_gradients`), ``w`` in the compute dtype.

    Counted as four forward passes of the blocks (forward, recomputed forward, backward through
    activations and weights) and three of the head."""
    onload, adapter = engine.onload, engine.adapter
    onload.release()  # the stored parameters, which name the units' weights
    names = {id(p): n for n, p in adapter.model.named_parameters()}
    params = {u: [(names[id(p)], p) for b in u for m in adapter.block_modules(Block(b)) for p in m.parameters()] for u in units}
    sums: dict[str, torch.Tensor] = {}

    def add(k: int, name: str, g: torch.Tensor) -> None:
        g = g.float().cpu()
        if name in sums:
            sums[name].add_(g)
        else:
            sums[name] = g.clone()

    wanted = {n for ps in params.values() for n, _ in ps}
    layerwise_gradients(onload, list(engine.batches), _batch_nll(engine), wanted, add, state_budget=engine.store.budget)
    tokens = engine.windows.n_tokens
    engine.counter.block_macs += 4 * sum(engine.macs) * tokens
    engine.counter.head_macs += 3 * engine.head_macs * tokens
    return {u: float(sum((p.detach().to(onload.dtype).float() * sums[n]).abs().double().sum() for n, p in ps if n in sums))
            for u, ps in params.items()}


# --- one-shot ranking ----------------------------------------------------------------------------
def rank_and_remove(scores: dict[Unit, float], stop: StopFn, *, start: list[dict] | None = None,
                    on_record: RecordFn | None = None, excluded: set[Unit] | None = None,
                    method: str = "") -> list[dict]:
    """Units by increasing score (ties: lower block first), removed until ``stop`` says the budget is met.

    ``start``: records already finished (a resumed run), kept as they are. Returns all records.
    """
    records = list(start or [])
    chosen = [tuple(r["blocks"]) for r in records]
    ranked = sorted((u for u in scores if u not in set(chosen) and u not in (excluded or set())),
                    key=lambda u: (scores[u], u))
    for u in ranked:
        if stop(chosen):
            break
        chosen.append(u)
        rec = {"step": len(records), "unit": unit_name(u), "blocks": list(u), "score": scores[u], "value": scores[u]}
        records.append(rec)
        if on_record:
            on_record(rec)
    if not stop(chosen):
        kept = f" ({len(excluded)} units are kept by the method)" if excluded else ""
        raise PrunekitError(f"{method} ran out of units before reaching the budget{kept}.", "Use a smaller `ratio` or `remove`.")
    return records


def _outcome(records: list[dict], criterion: str, naive: float | None = None, **extra) -> DepthOutcome:
    return DepthOutcome([tuple(r["blocks"]) for r in records], records, naive, {"criterion": criterion, **extra})


def _no_search(depth: DepthConfig) -> None:
    if depth.search != "greedy":  # DepthConfig refuses this already; kept for direct calls
        raise PrunekitError(f"`search` {depth.search} does not apply to {depth.method} (one shot).", "Drop `search`.")


# --- the methods ---------------------------------------------------------------------------------
def shortgpt(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
             progress: ProgressFn | None = None, start: list[dict] | None = None, on_record: RecordFn | None = None) -> DepthOutcome:
    """ShortGPT: remove the layers of lowest Block Influence (one shot)."""
    _no_search(depth)
    scores = layer_block_influence(engine, units, progress)
    return _outcome(rank_and_remove(scores, stop, start=start, on_record=on_record, method="shortgpt"), "block_influence")


def relative_magnitude_method(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                              progress: ProgressFn | None = None, start: list[dict] | None = None,
                              on_record: RecordFn | None = None) -> DepthOutcome:
    """Relative magnitude: remove the blocks whose contribution is smallest against their output (one shot)."""
    _no_search(depth)
    scores = block_relative_magnitude(engine, units, progress)
    return _outcome(rank_and_remove(scores, stop, start=start, on_record=on_record, method="relative-magnitude"), "relative_magnitude")


def _ppl_alone(engine: Engine, units: list[Unit], progress: ProgressFn | None) -> tuple[dict[Unit, float], float]:
    totals = alone_totals(engine, units, progress)
    naive = sum(engine.naive_candidate_macs(frozenset(), u) for u in units)
    return {u: engine.perplexity(t) for u, t in totals.items()}, naive


def layer_ppl(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
              progress: ProgressFn | None = None, start: list[dict] | None = None, on_record: RecordFn | None = None) -> DepthOutcome:
    """Shortened LLaMA, PPL criterion: remove the layers whose removal alone hurts calibration perplexity least."""
    _no_search(depth)
    scores, naive = _ppl_alone(engine, units, progress)
    return _outcome(rank_and_remove(scores, stop, start=start, on_record=on_record, method="layer-ppl"), "ppl_alone", naive)


def blockpruner_oneshot(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
                        progress: ProgressFn | None = None, start: list[dict] | None = None,
                        on_record: RecordFn | None = None) -> DepthOutcome:
    """BlockPruner's one-shot ablation: rank blocks by the calibration perplexity without each alone."""
    _no_search(depth)
    scores, naive = _ppl_alone(engine, units, progress)
    return _outcome(rank_and_remove(scores, stop, start=start, on_record=on_record, method="blockpruner-oneshot"), "ppl_alone", naive)


def taylor_kept_layers(num_layers: int) -> set[int]:
    """Taylor+'s kept layers: the first ``round(L/8)`` and the last ``round(L/16)`` (4 and 2 of 32)."""
    first, last = round(num_layers / 8), round(num_layers / 16)
    return set(range(first)) | set(range(num_layers - last, num_layers))


def taylor(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
           progress: ProgressFn | None = None, start: list[dict] | None = None, on_record: RecordFn | None = None) -> DepthOutcome:
    """Shortened LLaMA, Taylor+: remove the layers of lowest ``sum |w * dL/dw|``, sparing the first and last few."""
    _no_search(depth)
    if progress:
        progress("taylor gradients", 0, 1)
    scores = taylor_scores(loaded, engine, units)
    if progress:
        progress("taylor gradients", 1, 1)
    keep = taylor_kept_layers(engine.adapter.num_layers)
    excluded = {u for u in units if u[0] // 2 in keep}
    records = rank_and_remove(scores, stop, start=start, on_record=on_record, excluded=excluded, method="taylor")
    return _outcome(records, "taylor", kept_layers=sorted(keep))


def sleb(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
         progress: ProgressFn | None = None, start: list[dict] | None = None, on_record: RecordFn | None = None) -> DepthOutcome:
    """SLEB: greedy whole-layer removal by calibration perplexity (the block search with layer units)."""
    out = blockpruner(loaded, engine, units, stop, depth, progress=progress, start=start, on_record=on_record)
    out.extra.setdefault("criterion", "ppl")
    return out


def finercut(loaded: LoadedModel, engine: Engine, units: list[Unit], stop: StopFn, depth: DepthConfig, *,
             progress: ProgressFn | None = None, start: list[dict] | None = None, on_record: RecordFn | None = None) -> DepthOutcome:
    """FinerCut: greedy over attention and MLP blocks, lowest Jensen-Shannon divergence from the dense model.

    Runs on an engine like ``engine`` (same windows, batches, budget, onloaded weights) with ``criterion='js'``;
    its counted work goes to ``engine.counter``.
    """
    js = Engine(engine.adapter, engine.windows, batch_size=engine.batches[0].shape[0], criterion="js",
                ignore_index=engine.ignore_index, cache_bytes=engine.store.budget, cache_device=str(engine.store.device),
                chunk_tokens=engine.chunk_tokens, ranks=engine.ranks, onload=engine.onload)
    for name in ("block_macs", "head_macs", "block_runs", "head_tokens"):  # the dense reference run
        setattr(engine.counter, name, getattr(engine.counter, name) + getattr(js.counter, name))
    js.counter = engine.counter  # count the search's work live on the caller's engine
    try:
        out = blockpruner(loaded, js, units, stop, depth, progress=progress, start=start, on_record=on_record)
    finally:
        engine.store.peak = max(engine.store.peak, js.store.peak)
    out.extra["criterion"] = "js"
    for lvl in out.extra.get("levels", []):
        lvl.extra["criterion"] = "js"
    return out

