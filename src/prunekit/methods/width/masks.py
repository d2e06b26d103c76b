"""Masks as multipliers in the engine's forward: the units of the policy-gradient method and their losses.

Units (:class:`Units`, flat index ``0..n-1``): the KV groups of each layer's attention and the channels of
each layer's gated MLP (the coupled families of :mod:`prunekit.models.groups`, the ones LLM-Pruner
removes), and with ``mixed`` the whole attention and MLP blocks. A unit's cost ``c`` is the parameters
removing it alone from the dense model removes (a family's ``params_per_structure``; a block's
``block_params``).

A mask ``m`` (``[K, n]``, 1 = kept) acts without changing a weight:

- KV group ``g`` of layer ``i``: the input of ``o_proj`` (the attention output ``[rows, T, heads * hd]``)
  is multiplied, on the columns of the query heads that read ``g``, by ``m[g]`` (a forward pre-hook on
  the Linear of the adapter's ``o`` :class:`~prunekit.models.contract.Proj`);
- MLP channel ``j``: the input of ``down_proj`` (``act(gate(x)) * up(x)``, ``[rows, T, I]``) by ``m[j]``;
- a block: its output replaces the residual stream only in the rows whose mask keeps it.

Zeroing those inputs is exactly what slicing the structure out does (a bias of ``o``/``down`` stays in
both), except where a norm spans all heads (OLMo 2's ``q_norm``/``k_norm``: a masked head still counts
in the norm of the others). The K masks of a step run as ONE forward on the engine's batch stacked
K times (``[K * B, T, hidden]``, row ``k * B + b`` = window ``b`` under mask ``k``; the layers' inputs
tiled by :meth:`~prunekit.models.adapter.ModelAdapter.tile_inputs`); :meth:`MaskedForward.losses`
returns each mask's LM loss: the token-weighted mean next-token NLL over the batch (float64 ``[K]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from prunekit.core.errors import PrunekitError
from prunekit.engine.loss import counted_targets, window_nll
from prunekit.engine.runner import Engine
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, MLP, SOFTMAX, Block
from prunekit.models.groups import Family, attention_family, mlp_family, parameter_names

HEAD, CHANNEL, BLOCK = 0, 1, 2
KIND_NAMES = {HEAD: "KV groups", CHANNEL: "MLP channels", BLOCK: "blocks"}


@dataclass
class Units:
    """The Bernoulli units of a run: families' structures first (in family order), then whole blocks."""

    families: list[Family]
    blocks: list[Block] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # start of each family in θ
    kind: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [n] HEAD, CHANNEL or BLOCK
    cost: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))  # [n] parameters

    @property
    def n(self) -> int:
        return int(self.kind.numel())

    def span(self, i: int) -> slice:
        """Family ``i``'s units in θ."""
        return slice(self.offsets[i], self.offsets[i] + self.families[i].n)

    def block_pos(self, block: Block) -> int | None:
        """Position of a whole-block unit in θ (None when blocks are not units)."""
        return self.offsets[-1] + self.blocks.index(block) if block in self.blocks else None


def refuse_experts(adapter: ModelAdapter, start: int, end: int) -> None:
    """Refuse a model whose MLPs in ``start..end`` are sparse MoE blocks (no Linear input to mask), or whose mixers
    there are not all softmax attention (a hybrid family's linear mixers have no o_proj over query heads)."""
    if adapter.width_refusal:
        raise PrunekitError(f"{adapter.width_refusal} (model_type '{adapter.model_type}').", "Use a depth method.")
    for layer in range(start, end):
        if adapter.mixer_kind(layer) != SOFTMAX:
            raise PrunekitError(
                f"policy-gradient masks the query heads' input of o_proj; layer {layer}'s mixer (model_type "
                f"'{adapter.model_type}') is a linear mixer, whose key-head groups it does not mask.",
                "Use `method` llm-pruner for hybrid models.")
    for layer in range(start, end):
        if adapter.experts(layer) is not None:
            raise PrunekitError(
                f"policy-gradient masks the input of a Linear (o_proj, down_proj); the routed experts of layer {layer} "
                f"(model_type '{adapter.model_type}') are 3-D Parameters with no per-row input to mask.",
                "Use `method` llm-pruner for mixture-of-experts models.")


def build_units(adapter: ModelAdapter, start: int, end: int, mixed: bool) -> Units:
    """The units of layers ``start <= layer < end`` (``mixed``: their attention and MLP blocks too)."""
    refuse_experts(adapter, start, end)
    names = parameter_names(adapter.model)
    families, kinds, costs, offsets, blocks = [], [], [], [], []
    pos = 0
    for layer in range(start, end):
        for fam, kind in ((attention_family(adapter, layer, names), HEAD), (mlp_family(adapter, layer, names), CHANNEL)):
            if fam is None:
                continue
            families.append(fam)
            offsets.append(pos)
            pos += fam.n
            kinds += [kind] * fam.n
            costs += [float(fam.params_per_structure)] * fam.n
    offsets.append(pos)
    if mixed:
        for layer in range(start, end):
            for b in (Block.of(layer, ATTN), Block.of(layer, MLP)):
                if not adapter.is_removed(b):
                    blocks.append(b)
                    kinds.append(BLOCK)
                    costs.append(float(adapter.block_params(b)))
    return Units(families, blocks, offsets, torch.tensor(kinds, dtype=torch.long), torch.tensor(costs, dtype=torch.float64))


def _column_owner(adapter: ModelAdapter, fam: Family) -> torch.Tensor:
    """``[in_features]``: the structure of ``fam`` each input column of o_proj / down_proj belongs to."""
    if fam.kind == ATTN:
        a = adapter.attention(fam.layer)
        n_rep = a.num_heads // a.num_kv_heads
        return torch.arange(a.num_heads * a.o_width) // a.o_width // n_rep  # o's columns per head (a latent attention's value width)
    return torch.arange(fam.n)


def masked_module(adapter: ModelAdapter, fam: Family) -> torch.nn.Module:
    """The Linear whose input a family's mask multiplies: o_proj (KV groups) or down_proj (channels)."""
    return adapter.attention(fam.layer).o.module if fam.kind == ATTN else adapter.mlp(fam.layer).down.module


class MaskedForward:
    """Runs an engine's batches under K masks at once (see the module docstring)."""

    def __init__(self, engine: Engine, units: Units) -> None:
        self.engine, self.units = engine, units
        self.adapter = engine.adapter
        self.owners = [_column_owner(self.adapter, f) for f in units.families]
        self.modules = [masked_module(self.adapter, f) for f in units.families]
        self._mult: list[torch.Tensor | None] = [None] * len(units.families)
        dense = next(self.adapter.model.parameters())
        self.dtype = dense.dtype

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """Pre-hooks on the masked Linears for the duration (removed in ``finally``)."""
        handles = []
        try:
            for i, module in enumerate(self.modules):
                handles.append(module.register_forward_pre_hook(self._hook(i)))
            yield
        finally:
            for h in handles:
                h.remove()
            self._mult = [None] * len(self.units.families)

    def _hook(self, i: int):
        def pre(_module, args):
            mult = self._mult[i]
            return None if mult is None else (args[0] * mult, *args[1:])
        return pre

    def _set(self, masks: torch.Tensor, batch: int, device: torch.device) -> None:
        for i, owner in enumerate(self.owners):
            m = masks[:, self.units.span(i)][:, owner]  # [K, in_features]
            self._mult[i] = m.repeat_interleave(batch, dim=0).unsqueeze(1).to(device=device, dtype=self.dtype)

    @torch.inference_mode()
    def losses(self, j: int, masks: torch.Tensor) -> torch.Tensor:
        """Each mask's LM loss on the engine's batch ``j`` (float64 ``[K]``); ``masks``: ``[K, n]``."""
        eng, adapter = self.engine, self.adapter
        k = masks.shape[0]
        h0 = eng.h0(j)
        batch, t = h0.shape[:2]
        h = h0.repeat(k, 1, 1) if k > 1 else h0
        kwargs = eng.layer_inputs(j)
        block_keep = {b: masks[:, self.units.block_pos(b)] for b in self.units.blocks}
        with self.hooks():
            self._set(masks, batch, h.device)
            for b in range(eng.num_blocks):
                if eng.macs[b] == 0:
                    continue
                lkw = adapter.tile_inputs(kwargs[b // 2], k, batch) if k > 1 else kwargs[b // 2]
                y = adapter.run_block(Block(b), h, lkw)
                keep = block_keep.get(Block(b))
                if keep is not None:
                    rows = keep.repeat_interleave(batch).to(device=h.device).bool().view(-1, 1, 1)
                    y = torch.where(rows, y, h)
                h = y
                eng.counter.block_macs += eng.macs[b] * k * batch * t
                eng.counter.block_runs += k
        ids = eng.batches[j]
        nll = window_nll(adapter.logits, h, ids.repeat(k, 1), eng.ignore_index, eng.chunk_tokens)  # [K * B] summed
        eng.counter.head_macs += eng.head_macs * k * batch * (t - 1)
        return nll.view(k, batch).sum(dim=1).cpu() / counted_targets(ids, eng.ignore_index)


WANDA_WINDOWS = 128  # Wanda's calibration samples


@torch.inference_mode()
def wanda_scores(engine: Engine, units: Units, max_windows: int = WANDA_WINDOWS) -> tuple[list[torch.Tensor], float]:
    """Wanda-sp scores per structure of each family, and the dense model's mean NLL, over the engine's first
    batches holding at most ``max_windows`` windows (at least one batch).

    Per input column ``j`` of o_proj / down_proj: ``sum_i |W_ij| * ||X_j||_2`` (``X_j``: column ``j`` of the
    Linear's input over those calibration tokens); a structure's score is the sum over its columns."""
    fwd = MaskedForward(engine, units)
    sums = [torch.zeros(m.in_features, dtype=torch.float64) for m in fwd.modules]
    handles = []

    def recorder(i: int):
        def pre(_module, args):
            x = args[0].detach()
            sums[i].add_(x.double().pow(2).reshape(-1, x.shape[-1]).sum(dim=0).cpu())
        return pre

    total, targets = 0.0, 0
    try:
        for i, module in enumerate(fwd.modules):
            handles.append(module.register_forward_pre_hook(recorder(i)))
        seen = 0
        for j in range(engine.n_batches):
            seen += engine.batches[j].shape[0]
            if j and seen > max_windows:
                break
            ones = torch.ones(1, units.n, dtype=torch.float64)
            n_j = counted_targets(engine.batches[j], engine.ignore_index)
            total += float(fwd.losses(j, ones)[0]) * n_j
            targets += n_j
    finally:
        for h in handles:
            h.remove()
    scores = []
    for i, fam in enumerate(units.families):
        w = fwd.modules[i].weight.detach().double().abs().sum(dim=0).cpu()  # [in_features]
        col = w * sums[i].sqrt()
        scores.append(torch.zeros(fam.n, dtype=torch.float64).index_add_(0, fwd.owners[i], col))
    return scores, total / max(targets, 1)
