"""Gradients layer by layer under a memory cap: the backward pass of a model that is not resident.

Under ``--max-memory`` (:mod:`prunekit.engine.onload`) a gradient pass cannot hold the whole model,
so :func:`layerwise_gradients` runs it block by block, with each block brought in by the
:class:`~prunekit.engine.onload.Onloader` (compute device, compute dtype) and given back under the cap:

1. **forward**, block-major: every sample's residual state through block ``b`` before block
   ``b + 1``; the state at every boundary is kept detached (on the compute device when all of a
   chunk's states fit ``state_budget``, else on the CPU);
2. **head**: the final state as a leaf, the sample's loss ``loss_fn(adapter.logits, h, ids)``, its
   gradient with respect to the state and to the head's wanted weights;
3. **backward**, from the last block: block ``b`` again, its forward recomputed from the kept input
   (which requires grad), ``autograd.grad`` with the incoming gradient gives the gradient of the
   block's wanted weights and of its input, which goes on down;
4. **embedding**: when its weights are wanted, the model's own preamble up to layer 0 with gradients.

A sample is one row group of token ids ``[B, T]`` with one scalar loss. The gradient of wanted
parameter ``name`` for sample ``k`` goes to ``accumulate(k, name, grad)`` (the compute device's
tensor; the caller sums it in float32 where it keeps its sums). A parameter the head and the
embedding share (tied embeddings) is reported from each use separately; the sum of the two is its
gradient. Each sample's arithmetic is the model's own forward split at block boundaries, so sums
equal those of a whole-model backward up to float rounding.

Samples go in chunks as large as the kept states allow (``(blocks + 2)`` states per sample); each
chunk moves the weights twice (forward, then backward), and ``on_chunk(done)`` runs after each.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import psutil
import torch

from prunekit.engine.onload import Onloader
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Block

LossFn = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]
AccumulateFn = Callable[[int, str, torch.Tensor], None]


class _Stop(Exception):
    """Raised by the hook on layer 0 once the embedding's output is caught."""


def _plain(value):
    """A copy of captured layer inputs usable by autograd (inference tensors cannot be saved for backward)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _wanted_names(onload: Onloader, names: set[str]) -> dict[int, str]:
    """``id(stored parameter) -> name`` of the wanted parameters (names as ``model.named_parameters()`` gives them)."""
    onload.release()  # the model holds its stored parameters, the ones the units' slots name
    return {id(p): n for n, p in onload.adapter.model.named_parameters() if n in names}


def _resident(onload: Onloader, key: Hashable, wanted: dict[int, str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Bring unit ``key`` in; its wanted parameters' resident copies (requiring grad), the others not."""
    onload.bring(key)
    out = []
    for module, attr, stored in onload.units[key]:
        p = getattr(module, attr)
        name = wanted.get(id(stored))
        p.requires_grad_(name is not None)
        if name is not None:
            out.append((name, p))
    return out


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor | None) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(out, inputs, grad_outputs=grad_out, allow_unused=True))


def _report(k: int, params: list[tuple[str, torch.nn.Parameter]], grads: list, accumulate: AccumulateFn) -> None:
    for (name, _), g in zip(params, grads):
        if g is not None:
            accumulate(k, name, g.detach())


def _forward(onload: Onloader, blocks: list[int], inputs: list[tuple[torch.Tensor, list[dict]]],
             where: torch.device) -> list[list[torch.Tensor]]:
    """Every sample's state at every boundary of ``blocks`` (block-major), detached, on ``where``."""
    adapter = onload.adapter
    states = [[h0.to(where)] for h0, _ in inputs]
    with torch.no_grad():
        for b in blocks:
            onload.bring(b)
            for k, (_, kwargs) in enumerate(inputs):
                h = adapter.run_block(Block(b), states[k][-1].to(onload.device), kwargs[b // 2])
                states[k].append(h.to(where))
    return states


def _head(onload: Onloader, wanted: dict[int, str], finals: list[torch.Tensor], ids: list[torch.Tensor], loss_fn: LossFn, *,
          first: int, accumulate: AccumulateFn) -> tuple[list[torch.Tensor], list[float]]:
    """Each sample's loss and its gradient at the final state (and the head's wanted weights)."""
    params = _resident(onload, "head", wanted)
    out, losses = [], []
    for k, h in enumerate(finals):
        x = h.to(onload.device).requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(onload.adapter.logits, x, ids[k])
            gs = _grads(loss, [x] + [p for _, p in params], None)
        _report(first + k, params, gs[1:], accumulate)
        out.append(gs[0])
        losses.append(float(loss.detach()))
    return out, losses


def _backward_block(onload: Onloader, wanted: dict[int, str], b: int, xs: list[torch.Tensor], grads: list[torch.Tensor], *,
                    inputs: list[tuple[torch.Tensor, list[dict]]], first: int, accumulate: AccumulateFn) -> None:
    """Block ``b`` recomputed from each sample's kept input; ``grads`` becomes the gradient at that input."""
    params = _resident(onload, b, wanted)
    for k, x_kept in enumerate(xs):
        x = x_kept.to(onload.device).requires_grad_(True)
        with torch.enable_grad():
            y = onload.adapter.run_block(Block(b), x, inputs[k][1][b // 2])
            gs = _grads(y, [x] + [p for _, p in params], grads[k])
        _report(first + k, params, gs[1:], accumulate)
        grads[k] = gs[0]


def _embedding_output(adapter: ModelAdapter, ids: torch.Tensor) -> torch.Tensor:
    """The state entering layer 0 computed by the model's own preamble, with gradients (embedding scale included)."""
    caught: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        caught.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = adapter.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        adapter.model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return caught[0]


def _embedding(onload: Onloader, wanted: dict[int, str], ids: list[torch.Tensor], grads: list[torch.Tensor], *,
               first: int, accumulate: AccumulateFn) -> None:
    params = _resident(onload, "embed", wanted)
    if not params:
        return
    for k, x in enumerate(ids):
        with torch.enable_grad():
            gs = _grads(_embedding_output(onload.adapter, x), [p for _, p in params], grads[k])
        _report(first + k, params, gs, accumulate)


def chunk_size(state_bytes: int, n_blocks: int, n_samples: int, state_budget: float, device: torch.device) -> tuple[int, bool]:
    """Samples per chunk and whether their states stay on the compute device (else the CPU, where half
    the available memory is the budget; ``state_budget`` itself when the compute device is the CPU)."""
    per_sample = (n_blocks + 2) * state_bytes
    if per_sample * n_samples <= state_budget:
        return n_samples, True
    host = state_budget if device.type == "cpu" else psutil.virtual_memory().available / 2
    return int(max(1, min(n_samples, host // max(per_sample, 1)))), False


def layerwise_gradients(
    onload: Onloader, samples: list[torch.Tensor], loss_fn: LossFn, names: set[str], accumulate: AccumulateFn, *,
    state_budget: float, on_chunk: Callable[[int], None] | None = None, first: int = 0,
) -> list[float]:
    """Each sample's loss; the gradients of the parameters named ``names`` go to ``accumulate``
    (see the module docstring). ``first``: the index of ``samples[0]`` as ``accumulate`` and
    ``on_chunk`` number it (a resumed pass)."""
    adapter = onload.adapter
    wanted = _wanted_names(onload, names)
    blocks = [b for b in range(adapter.num_blocks) if b in onload.units]
    losses: list[float] = []
    if not samples:
        return losses
    onload.bring("embed")
    h0 = adapter.capture_inputs(samples[0])[0]
    size, on_device = chunk_size(h0.numel() * h0.element_size(), len(blocks), len(samples), state_budget, onload.device)
    for s in range(0, len(samples), size):
        onload.bring("embed")
        ids = samples[s:s + size]
        inputs = [_plain(adapter.capture_inputs(x)) for x in ids]
        states = _forward(onload, blocks, inputs, onload.device if on_device else torch.device("cpu"))
        grads, chunk_losses = _head(onload, wanted, [st[-1] for st in states], ids, loss_fn, first=first + s, accumulate=accumulate)
        for i in reversed(range(len(blocks))):
            _backward_block(onload, wanted, blocks[i], [st[i] for st in states], grads, inputs=inputs, first=first + s,
                            accumulate=accumulate)
        _embedding(onload, wanted, ids, grads, first=first + s, accumulate=accumulate)
        losses += chunk_losses
        if on_chunk is not None:
            on_chunk(first + s + len(ids))
    _no_grad_flags(onload)
    return losses


def _no_grad_flags(onload: Onloader) -> None:
    """The resident copies stop requiring grad (the engine's later runs are inference)."""
    for key in onload.resident:
        for module, attr, _ in onload.units[key]:
            getattr(module, attr).requires_grad_(False)


def shared_names(onload: Onloader, names: set[str]) -> set[str]:
    """Wanted parameters that more than one unit holds (a tied embedding and LM head)."""
    wanted = _wanted_names(onload, names)
    count: dict[int, int] = {}
    for slots in onload.units.values():
        for i in {id(stored) for _, _, stored in slots}:
            count[i] = count.get(i, 0) + 1
    return {n for i, n in wanted.items() if count.get(i, 0) > 1}
