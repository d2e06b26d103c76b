"""Hybrid families: layers whose mixer is softmax attention or a linear (recurrent) mixer, by layer type.

Checked against transformers' ``modeling_qwen3_5.py`` and ``modeling_qwen3_next.py`` (5.25; see
``shared/FAMILIES-2026.md``). A decoder layer is ``residual + mixer(input_layernorm(x))`` then
``residual + mlp(post_attention_layernorm(x))``; the mixer is a Gated DeltaNet (``linear_attn``) when
``config.layer_types[i]`` is ``linear_attention``, else the gated softmax attention (``self_attn``).
Both are block ``2i`` (the mixer slot), the MLP block ``2i + 1``. The norms are zero-centred
(``x * (1 + weight)``), which slicing and removal treat like any norm.

**Removed mixers and the cache.** ``generate`` builds one cache layer per ``layer_types`` entry: a KV
layer for attention, a linear-attention layer (conv and recurrent state) for a Gated DeltaNet. A
removed attention is :class:`~prunekit.models.zero_blocks.ZeroAttention` (it still appends one key of
ones per token, so the first full-attention slot, which sizes the causal mask, keeps its length); a
removed Gated DeltaNet is :class:`~prunekit.models.zero_blocks.ZeroLinearMixer` (it still advances its
slot's token count, so slot 0, which numbers positions, keeps its length).

**Gated attention.** ``q_proj`` holds ``[q_h | gate_h]`` (``2 * head_dim`` rows) per head
(``query_gate``); the attention's output is multiplied by ``sigmoid(gate)`` before ``o_proj``. A KV group
owns its ``n_rep`` heads' ``2 * n_rep * head_dim`` q rows and ``n_rep * head_dim`` o columns; the q/k
norms are per head dimension and shared by every head, so they are not sliced.

**Gated DeltaNet width.** Key head ``g`` serves the ``r = num_v_heads / num_k_heads`` consecutive value
heads ``g*r .. g*r + r - 1`` (``repeat_interleave``). A structure is one whole key-head group: its q and
k rows, its ``r`` value heads' v and z rows, b and a rows, ``A_log`` and ``dt_bias`` entries, the
depthwise conv's channels (order ``[q all | k all | v all]``) and ``out_proj`` columns; the gated norm
is per value-head dimension and shared, so it is kept. Removing whole groups keeps ``r``, so the
remaining heads compute exactly what they did. Qwen3.5 keeps ``in_proj_qkv`` split as ``[q | k | v]``
(and ``in_proj_z``, ``in_proj_b``, ``in_proj_a`` apart); Qwen3-Next fuses ``in_proj_qkvz`` as
``[q_g | k_g | v_g | z_g]`` per key head and ``in_proj_ba`` as ``[b_g | a_g]`` per key head, while its
conv keeps the ``[q | k | v]`` order (``fix_query_key_value_ordering``).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, LINEAR, Block, family_facts
from prunekit.models.groups import Family, Part

HYBRID_WIDTH_OPTIONS_REFUSAL = ("a hybrid model's linear mixers read and write the residual stream through projections that "
                                "the hidden-channel strategy does not slice: hidden channels and global ranking are refused")


def _qwen_facts(**changes) -> dict:
    mixers = {
        "full_attention": {"slot": ATTN, "sublayer": "self_attn", "norms": ["input_layernorm", None], "stub": "attention",
                           "heads_config": None},
        "linear_attention": {"slot": ATTN, "sublayer": "linear_attn", "norms": ["input_layernorm", None], "stub": LINEAR,
                             "heads_config": ["linear_num_value_heads", "linear_num_key_heads"]},
    }
    return family_facts(layer_types_key="layer_types", mixers=mixers, query_gate=True, **changes)


def _rows(n: int, width: int, offset: int = 0) -> torch.Tensor:
    """``[n, width]``: structure ``g`` owns indices ``offset + g*width .. offset + g*width + width - 1``."""
    return offset + torch.arange(n * width, dtype=torch.long).reshape(n, width)


def _part(module: nn.Module, attr: str, dim: int, index: torch.Tensor, role: str, *, names: dict[int, str]) -> Part:
    p = getattr(module, attr)
    return Part(module, attr, dim, index, role, names.get(id(p), f"<{role}.{attr}>"), p.numel() // p.shape[dim])


class GatedDeltaNetAdapter(ModelAdapter):
    """Qwen3.5's and Qwen3-Next's layer: a Gated DeltaNet or a gated attention, then the MLP (or MoE) block."""

    facts = _qwen_facts()
    width_options_refusal = HYBRID_WIDTH_OPTIONS_REFUSAL
    hidden_resize_refusal = "the linear mixers' projections keep the full hidden size"
    llama_layout_refusal = "its linear-attention (Gated DeltaNet) mixers and gated attention have no place in it"
    stock_width = False
    #: ``in_proj_qkvz`` / ``in_proj_ba`` fused per key head (Qwen3-Next) rather than split (Qwen3.5)
    grouped_projections = False

    def _gdn(self, layer: int) -> nn.Module:
        return self.sublayer(Block.of(layer, ATTN))

    def linear_heads(self, layer: int) -> tuple[int, int]:
        gdn = self._gdn(layer)
        return int(gdn.num_v_heads), int(gdn.num_k_heads)

    def mixing_macs(self, layer: int, seq_len: int) -> float:
        """Attention's as in the contract; a Gated DeltaNet's depthwise conv (``conv_dim * kernel``) and its
        recurrent update per token and value head (decay, ``k^T S``, the rank-one update and ``q S``:
        ``4 * head_k_dim * head_v_dim``), as the recurrent form counts them."""
        if self.mixer_kind(layer) != LINEAR:
            return super().mixing_macs(layer, seq_len)
        gdn = self._gdn(layer)
        return float(gdn.conv1d.weight.numel() + 4 * gdn.num_v_heads * gdn.head_k_dim * gdn.head_v_dim)

    def linear_family(self, layer: int, names: dict[int, str]) -> Family:
        """Key-head group ``g`` of the Gated DeltaNet of ``layer`` and every row, column and entry it owns."""
        gdn = self._gdn(layer)
        nk, nv, hk, hv = gdn.num_k_heads, gdn.num_v_heads, gdn.head_k_dim, gdn.head_v_dim
        r = nv // nk
        key_dim = nk * hk
        q, k, v = _rows(nk, hk), _rows(nk, hk, key_dim), _rows(nk, r * hv, 2 * key_dim)
        heads, values = _rows(nk, r), _rows(nk, r * hv)
        parts = [_part(gdn.conv1d, "weight", 0, t, role, names=names) for t, role in ((q, "conv_q"), (k, "conv_k"), (v, "conv_v"))]
        if self.grouped_projections:
            parts += [_part(gdn.in_proj_qkvz, "weight", 0, _rows(nk, 2 * hk + 2 * r * hv), "qkvz", names=names),
                      _part(gdn.in_proj_ba, "weight", 0, _rows(nk, 2 * r), "ba", names=names)]
        else:
            parts += [_part(gdn.in_proj_qkv, "weight", 0, t, role, names=names) for t, role in ((q, "q"), (k, "k"), (v, "v"))]
            parts += [_part(gdn.in_proj_z, "weight", 0, values, "z", names=names),
                      _part(gdn.in_proj_b, "weight", 0, heads, "b", names=names),
                      _part(gdn.in_proj_a, "weight", 0, heads, "a", names=names)]
        parts += [_part(gdn, "A_log", 0, heads, "A_log", names=names), _part(gdn, "dt_bias", 0, heads, "dt_bias", names=names),
                  _part(gdn.out_proj, "weight", 1, values, "out", names=names)]
        return Family(ATTN, layer, nk, parts)

    def sync_attention(self, layer: int) -> None:
        """After key-head groups are sliced away: the Gated DeltaNet's head counts and sizes (its forward splits
        and reshapes by them) and its conv's channel count agree with the kept weights."""
        if self.mixer_kind(layer) != LINEAR:
            return super().sync_attention(layer)
        gdn = self._gdn(layer)
        r = gdn.num_v_heads // gdn.num_k_heads
        nv = int(gdn.A_log.shape[0])
        gdn.num_v_heads, gdn.num_k_heads = nv, nv // r
        gdn.key_dim, gdn.value_dim = gdn.num_k_heads * gdn.head_k_dim, nv * gdn.head_v_dim
        gdn.conv_dim = 2 * gdn.key_dim + gdn.value_dim
        conv = gdn.conv1d
        conv.in_channels = conv.out_channels = conv.groups = gdn.conv_dim
