"""Coupled groups: the structures that must be removed together, derived through the adapter.

A *family* is the set of interchangeable structures of one kind in one place, e.g. the KV
groups of layer 7; each structure (index ``s`` in ``0..n-1``) owns a slice of several
parameters (its *parts*). Removing structure ``s`` removes all of its slices at once, and the
rest of the model keeps computing the same function of the remaining structures.

- ``attn`` (one per layer): structure ``g`` = KV group ``g``. With ``n_rep = num_heads //
  num_kv_heads`` (Hugging Face's ``repeat_kv``: query head ``h`` reads KV head ``h // n_rep``),
  it owns rows ``[g*hd, (g+1)*hd)`` of k and v (and their biases), the rows of query heads
  ``g*n_rep .. g*n_rep + n_rep - 1`` in q (and its bias), and the same columns of o. Without
  GQA (``n_rep = 1``) a group is one head.
- ``mlp`` (one per layer): structure ``j`` = channel ``j``: row ``j`` of gate and up (and their
  biases), column ``j`` of down.
- ``mlp`` of a sparse MoE layer: one family per routed expert ``e``, structure ``j`` = its channel
  ``j``: rows ``j`` and ``I + j`` of ``gate_up[e]``, column ``j`` of ``down[e]`` (parts over the
  slab ``e`` of the 3-D Parameters); its shared expert, when the family prunes it (DeepSeek's), is one more
  family of channels like a dense MLP's (``shared``).
- Fused projections (:class:`~prunekit.models.contract.Proj` parts of one Linear: Phi-3's
  ``qkv_proj``, ``gate_up_proj``) own their rows at the part's offset; norms that span all heads
  (OLMo 2's ``q_norm``/``k_norm``) own the rows of their heads.
- ``hidden`` (one for the model): structure ``c`` = hidden channel ``c``: column ``c`` of the
  embedding and of every linear layer reading the residual stream (q, k, v, gate, up, LM head),
  row ``c`` of every layer writing it (o, down, and their biases), entry ``c`` of every norm.

The geometry comes from :meth:`ModelAdapter.attention` / :meth:`ModelAdapter.mlp`, so no
architecture is named here. :func:`trace_kv_readers` checks the attention groups against the
model itself: it perturbs one KV head's value projection and watches which query heads' outputs
(the inputs of o) change. torch-pruning's ``DependencyGraph`` would be the generic tracer, but
with transformers 5.x it fails on these models (see docs/ARCHITECTURE.md, width section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, MLP, SOFTMAX, Block, Proj


@dataclass
class Part:
    """One parameter's share of a family: structure ``s`` owns ``index[s]`` along ``dim``.

    ``index``: int64 ``[n_structures, k]``; ``per_index``: parameters per index along ``dim``
    (the product of the other dimensions), so structure ``s`` holds ``k * per_index`` of them.
    """

    module: nn.Module
    attr: str
    dim: int
    index: torch.Tensor
    role: str
    name: str = ""
    per_index: int = 0
    expert: int | None = None  # a slab ``param[expert]`` of a 3-D experts Parameter (``dim`` counts in the slab)

    @property
    def param(self) -> torch.Tensor:
        p = getattr(self.module, self.attr)
        return p if self.expert is None else p[self.expert]


@dataclass
class Family:
    """Interchangeable coupled structures of one kind (``attn``, ``mlp`` or ``hidden``)."""

    kind: str
    layer: int | None
    n: int
    parts: list[Part] = field(default_factory=list)
    expert: int | None = None  # routed expert ``expert`` of a sparse MoE layer (kind ``mlp``)
    align: int = 1  # kept counts are multiples of this (see :meth:`aligned`)
    shared: bool = False  # the channels of a sparse MoE layer's shared expert (kind ``mlp``)

    def aligned(self, k: int) -> int:
        """``k`` removed structures, moved so that the kept count is a multiple of ``align`` (the nearest one,
        at least ``align``; all removed stays all removed). Routed experts use 8: transformers'
        ``grouped_mm`` experts kernel needs rows of a multiple of 16 bytes (8 values in 16-bit floats)."""
        kept = self.n - k
        if self.align == 1 or k == 0 or kept <= 0:
            return k
        return self.n - max(self.align, int(math.floor(kept / self.align + 0.5)) * self.align)

    @property
    def params_per_structure(self) -> int:
        """Parameters that removing one structure removes (equal for every structure of a family)."""
        return sum(p.index.shape[1] * p.per_index for p in self.parts)

    def key(self) -> str:
        base = self.kind if self.layer is None else f"{self.kind} {self.layer}"
        if self.shared:
            return f"{base} shared expert"
        return base if self.expert is None else f"{base} expert {self.expert}"


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``model.named_parameters()`` (a tied weight under its first name)."""
    return {id(p): n for n, p in model.named_parameters()}


def _part(where: nn.Module | Proj | None, attr: str, dim: int, index: torch.Tensor, role: str, *,
          names: dict[int, str]) -> Part | None:
    """A part over ``where`` (a module, or a :class:`Proj`: its rows offset ``index`` along dim 0)."""
    if isinstance(where, Proj):
        module, offset = where.module, where.start
    else:
        module, offset = where, 0
    p = getattr(module, attr, None) if module is not None else None
    if p is None:
        return None
    if offset and dim == 0:
        index = index + offset
    per_index = p.numel() // p.shape[dim]
    return Part(module, attr, dim, index, role, names.get(id(p), f"<{role}.{attr}>"), per_index)


def _blocks(n: int, width: int) -> torch.Tensor:
    """``[n, width]``: structure ``s`` owns indices ``s*width .. s*width + width - 1``."""
    return torch.arange(n * width, dtype=torch.long).reshape(n, width)


def kv_readers(num_heads: int, num_kv_heads: int) -> list[list[int]]:
    """Query heads that read each KV head under ``repeat_kv``: KV head ``g`` -> ``[g*n_rep, ..., g*n_rep+n_rep-1]``."""
    n_rep = num_heads // num_kv_heads
    return [list(range(g * n_rep, (g + 1) * n_rep)) for g in range(num_kv_heads)]


def attention_family(adapter: ModelAdapter, layer: int, names: dict[int, str] | None = None) -> Family | None:
    """The KV groups of ``layer`` (None when its attention block is removed)."""
    if adapter.is_removed(Block.of(layer, ATTN)):
        return None
    names = names if names is not None else parameter_names(adapter.model)
    if adapter.mixer_kind(layer) != SOFTMAX:  # a linear mixer: its groups are the family's own (adapter.linear_family)
        return adapter.linear_family(layer, names)
    a = adapter.attention(layer)
    if a.num_heads % a.num_kv_heads:
        raise ValueError(f"layer {layer}: {a.num_heads} query heads do not divide into {a.num_kv_heads} KV heads")
    n_rep, hd = a.num_heads // a.num_kv_heads, a.head_dim
    q_rows = _blocks(a.num_kv_heads, n_rep * hd * a.q_rows_per_head)
    # o's columns per group: n_rep heads of the value width (a gated q's gate rows and a latent value size aside)
    o_cols = q_rows if a.q_rows_per_head == 1 and a.o_width == hd else _blocks(a.num_kv_heads, n_rep * a.o_width)
    kv_rows = _blocks(a.num_kv_heads, hd)
    parts = [_part(a.q, "weight", 0, q_rows, "q", names=names), _part(a.q, "bias", 0, q_rows, "q", names=names)]
    if a.kv is not None:  # latent attention: each head's [k_nope | v] rows of the latent's up-projection
        kv_rows = _blocks(a.num_kv_heads, a.kv_head_dim)
        parts += [_part(a.kv, "weight", 0, kv_rows, "kv", names=names), _part(a.kv, "bias", 0, kv_rows, "kv", names=names)]
    else:
        parts += [
            _part(a.k, "weight", 0, kv_rows, "k", names=names), _part(a.k, "bias", 0, kv_rows, "k", names=names),
            _part(a.v, "weight", 0, kv_rows, "v", names=names), _part(a.v, "bias", 0, kv_rows, "v", names=names),
        ]
    parts.append(_part(a.o, "weight", 1, o_cols, "o", names=names))
    for norm, which in a.head_norms:  # norms spanning all heads (OLMo 2): sliced with their heads' rows
        rows = q_rows if which == "q" else kv_rows
        parts += [_part(norm, "weight", 0, rows, f"{which}_norm", names=names), _part(norm, "bias", 0, rows, f"{which}_norm", names=names)]
    for module, attr in a.head_params:  # one entry per query head (gpt-oss's sinks)
        parts.append(_part(module, attr, 0, _blocks(a.num_kv_heads, n_rep), attr, names=names))
    return Family(ATTN, layer, a.num_kv_heads, [p for p in parts if p is not None])


EXPERT_ALIGN = 8


def expert_families(adapter: ModelAdapter, layer: int, names: dict[int, str] | None = None) -> list[Family]:
    """One family per routed expert of ``layer``'s sparse MoE block (none for a dense or removed MLP)."""
    ex = adapter.experts(layer)
    if ex is None:
        return []
    names = names if names is not None else parameter_names(adapter.model)
    gate_up, down = getattr(ex.module, ex.gate_up), getattr(ex.module, ex.down)
    rows = _blocks(ex.width, 1)
    gu, dn = names.get(id(gate_up), ""), names.get(id(down), "")
    out = []
    for e in range(ex.num_experts):
        if ex.interleaved:  # gate_up [E, H, 2I]: channel j = columns 2j (gate) and 2j + 1 (up); down [E, I, H]: row j
            parts = [Part(ex.module, ex.gate_up, 1, 2 * rows, "gate", gu, gate_up.shape[1], e),
                     Part(ex.module, ex.gate_up, 1, 2 * rows + 1, "up", gu, gate_up.shape[1], e)]
            if ex.gate_up_bias is not None:
                bias = getattr(ex.module, ex.gate_up_bias)
                parts += [Part(ex.module, ex.gate_up_bias, 0, 2 * rows + i, role, names.get(id(bias), ""), 1, e)
                          for i, role in enumerate(("gate", "up"))]
            parts.append(Part(ex.module, ex.down, 0, rows, "down", dn, down.shape[2], e))
        else:
            parts = [
                Part(ex.module, ex.gate_up, 0, rows, "gate", gu, gate_up.shape[2], e),
                Part(ex.module, ex.gate_up, 0, rows + ex.width, "up", gu, gate_up.shape[2], e),
                Part(ex.module, ex.down, 1, rows, "down", dn, down.shape[1], e),
            ]
        out.append(Family(MLP, layer, ex.width, parts, expert=e, align=EXPERT_ALIGN))
    return out


def mlp_family(adapter: ModelAdapter, layer: int, names: dict[int, str] | None = None) -> Family | None:
    """The channels of ``layer``'s gated MLP (None when its MLP block is removed or is a sparse MoE block)."""
    if adapter.is_removed(Block.of(layer, MLP)) or adapter.experts(layer) is not None:
        return None
    return _gated_family(adapter.mlp(layer), layer, names if names is not None else parameter_names(adapter.model))


def shared_family(adapter: ModelAdapter, layer: int, names: dict[int, str] | None = None) -> Family | None:
    """The channels of the shared expert of ``layer``'s sparse MoE block (None without one: see
    :meth:`ModelAdapter.shared_mlp`)."""
    m = adapter.shared_mlp(layer)
    if m is None:
        return None
    fam = _gated_family(m, layer, names if names is not None else parameter_names(adapter.model))
    fam.shared = True
    return fam


def _gated_family(m, layer: int, names: dict[int, str]) -> Family:
    """Channel ``j`` of a gated MLP: row ``j`` of gate and up (and their biases), column ``j`` of down."""
    n = m.gate.out_features
    rows = _blocks(n, 1)
    parts = [
        _part(m.gate, "weight", 0, rows, "gate", names=names), _part(m.gate, "bias", 0, rows, "gate", names=names),
        _part(m.up, "weight", 0, rows, "up", names=names), _part(m.up, "bias", 0, rows, "up", names=names),
        _part(m.down, "weight", 1, rows, "down", names=names),
    ]
    return Family(MLP, layer, n, [p for p in parts if p is not None])


def hidden_family(adapter: ModelAdapter, names: dict[int, str] | None = None) -> Family:
    """The hidden (residual-stream) channels of the whole model, in forward order of their parts."""
    names = names if names is not None else parameter_names(adapter.model)
    n = adapter.embed.weight.shape[1]
    idx = _blocks(n, 1)
    parts: list[Part | None] = [_part(adapter.embed, "weight", 1, idx, "embed", names=names)]
    for layer in range(adapter.num_layers):
        for kind in (ATTN, MLP):
            block = Block.of(layer, kind)
            if adapter.is_removed(block):
                continue
            for norm in adapter.norms(block):
                parts += [_part(norm, "weight", 0, idx, "norm", names=names), _part(norm, "bias", 0, idx, "norm", names=names)]
            if kind == ATTN:
                a = adapter.attention(layer)
                if a.kv is not None:
                    raise ValueError("hidden channels of a latent attention (its latent projections) are not described")
                parts += [_part(lin, "weight", 1, idx, r, names=names) for lin, r in ((a.q, "q"), (a.k, "k"), (a.v, "v"))]
                parts += [_part(a.o, "weight", 0, idx, "o", names=names), _part(a.o, "bias", 0, idx, "o", names=names)]
            else:
                m = adapter.mlp(layer)
                parts += [_part(m.gate, "weight", 1, idx, "gate", names=names), _part(m.up, "weight", 1, idx, "up", names=names)]
                parts += [_part(m.down, "weight", 0, idx, "down", names=names), _part(m.down, "bias", 0, idx, "down", names=names)]
    norm = adapter.final_norm
    parts += [_part(norm, "weight", 0, idx, "norm", names=names), _part(norm, "bias", 0, idx, "norm", names=names)]
    if adapter.lm_head.weight is not adapter.embed.weight:  # a tied head is the embedding: counted once
        parts.append(_part(adapter.lm_head, "weight", 1, idx, "lm_head", names=names))
    unique: dict[tuple[int, str], Part] = {}  # a fused Linear's columns (Phi-3's q, k, v) are one part
    for p in parts:
        if p is not None:
            unique.setdefault((id(p.module), p.attr), p)
    return Family("hidden", None, n, list(unique.values()))


def block_families(adapter: ModelAdapter, start: int, end: int) -> list[Family]:
    """Attention and MLP families (one per routed expert in a sparse MoE layer) of layers
    ``start <= layer < end`` (removed blocks skipped)."""
    names = parameter_names(adapter.model)
    out = []
    for layer in range(start, end):
        for fam in (attention_family(adapter, layer, names), mlp_family(adapter, layer, names), *expert_families(adapter, layer, names),
                    shared_family(adapter, layer, names)):
            if fam is not None:
                out.append(fam)
    return out


@torch.no_grad()
def trace_kv_readers(adapter: ModelAdapter, layer: int, layer_kwargs: dict, hidden: torch.Tensor) -> list[list[int]]:
    """Which query heads read each KV head, observed on the model rather than assumed.

    Runs the attention of ``layer`` on ``hidden`` (``[batch, seq, hidden_size]``, already
    normalised or not: only differences matter) with the layer's keyword inputs, once as is and
    once per KV head ``g`` with 1 added to ``g``'s value rows (so even all-zero weights show); the query heads whose slice of o's
    input changes are the ones that read ``g``. Returns one sorted list per KV head.
    """
    a = adapter.attention(layer)
    attn = adapter.sublayer(Block.of(layer, ATTN))
    seen: list[torch.Tensor] = []
    hook = a.o.module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        attn(hidden_states=hidden, **layer_kwargs)
        base = seen.pop()
        readers = []
        for g in range(a.num_kv_heads):
            proj, rows = a.value_rows(g)
            weight = proj.module.weight
            saved = weight[rows].clone()
            weight[rows] += 1.0
            try:
                attn(hidden_states=hidden, **layer_kwargs)
            finally:
                weight[rows] = saved
            diff = (seen.pop() - base).abs().reshape(*base.shape[:-1], a.num_heads, a.o_width)
            changed = diff.amax(dim=tuple(range(diff.dim() - 2)) + (diff.dim() - 1,))
            readers.append([h for h in range(a.num_heads) if float(changed[h]) > 0.0])
        return readers
    finally:
        hook.remove()
