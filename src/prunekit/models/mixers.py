"""The mixer slot of the block contract: what a decoder layer's block ``2i`` holds, by the layer's type.

A plain family's mixer is softmax attention in every layer. A hybrid family (its facts carry
:data:`~prunekit.models.contract.HYBRID_FACTS`) puts, by ``config.<layer_types_key>[i]``, softmax
attention or a linear (recurrent) mixer — Gated DeltaNet, Mamba2 — in the mixer slot, and a family whose
layers hold one block each (Nemotron-H) leaves the other slot *absent* (:class:`Absent`: no weights,
removed from the start, never a block a method can choose). :class:`MixerSlots` answers, from the facts
alone, what each slot holds (:meth:`~MixerSlots.mixer_kind`, :meth:`~MixerSlots.is_absent`), how the
slot's sub-layer is called (:meth:`~MixerSlots.call_sublayer`), its head counts and extra MACs, which
stand-in replaces it once removed (a KV or linear cache slot keeps its bookkeeping:
:mod:`prunekit.models.zero_blocks`) and which removed layers an export still writes for the hybrid cache
(:meth:`~MixerSlots.cache_layers`). Nothing outside ``models/`` branches on a mixer's kind beyond asking these.

:class:`MixerSlots` is a base of :class:`~prunekit.models.adapter.ModelAdapter` and reads what the adapter
defines: ``facts``, ``config``, ``layers``, ``num_layers``, ``block_spec``, ``is_removed`` and ``attention``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.models.contract import ATTN, LINEAR, MLP, SOFTMAX, Block
from prunekit.models.zero_blocks import IdentityNorm, ZeroAttention, ZeroLinearMixer, ZeroMLP


class Absent(nn.Module):
    """The sub-layer of an absent block slot (a Nemotron-H layer holds one block): no weights, removed from the start."""

    removed = True

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # pragma: no cover - never run
        return torch.zeros_like(hidden_states)


ABSENT = Absent()  # the sub-layer of every absent slot


class MixerSlots:
    """The mixer-slot part of the adapter (module docstring): every method reads the family's facts; hybrid
    families override :meth:`linear_heads`, :meth:`linear_family` and :meth:`mixing_macs` for their linear mixers."""

    def layer_type(self, layer: int) -> str | None:
        """The type the config gives decoder layer ``layer`` (hybrid families: which mixer it holds), else None."""
        key = self.facts.get("layer_types_key")
        return getattr(self.config, key)[layer] if key else None

    def _mixer_facts(self, block: Block) -> dict | None:
        """The hybrid facts of the sub-layer in ``block``'s slot; None for a plain family's or an absent slot
        (``{}`` for the feed-forward slot a hybrid layer always has)."""
        mixers = self.facts.get("mixers")
        if not mixers:
            return None
        m = mixers[self.layer_type(block.layer)]
        if m["slot"] == block.kind:
            return m
        return None if self.facts.get("one_block_per_layer") else {}

    def is_absent(self, block: Block) -> bool:
        """True for the empty slot of a layer that holds one block (never a block of the model)."""
        return not self.block_spec(block).sublayer

    def mixer_kind(self, layer: int) -> str:
        """What the mixer slot of ``layer`` holds: :data:`SOFTMAX` attention, a :data:`LINEAR` mixer (Gated
        DeltaNet, Mamba2), or ``mlp`` (a Nemotron-H feed-forward layer, whose mixer slot is absent)."""
        m = self.facts.get("mixers")
        return m[self.layer_type(layer)]["stub"] if m else SOFTMAX

    def has_attention(self, layer: int) -> bool:
        """True when ``layer`` holds a softmax attention block that is not removed."""
        return self.mixer_kind(layer) == SOFTMAX and not self.is_removed(Block.of(layer, ATTN))

    def head_counts(self, layer: int) -> tuple[int, int]:
        """(heads, KV heads) of ``layer``'s present mixer: query and KV heads of an attention; a linear
        mixer's (value heads, key heads) or (heads, groups) (see :meth:`linear_heads`)."""
        if self.mixer_kind(layer) == SOFTMAX:
            a = self.attention(layer)
            return a.num_heads, a.num_kv_heads
        return self.linear_heads(layer)

    def linear_heads(self, layer: int) -> tuple[int, int]:
        """(heads, heads sharing one key) of a linear mixer: hybrid families override it."""
        raise NotImplementedError

    def linear_family(self, layer: int, names: dict[int, str]):
        """The width family (``models.groups.Family``) of ``layer``'s linear mixer: one structure per key-head
        group, with every row and column it owns (hybrid families override it; None: not pruned in width)."""
        return None

    def mixing_macs(self, layer: int, seq_len: int) -> float:
        """MACs per token of the mixer of ``layer`` beyond its weights, on ``seq_len``-token windows: softmax
        attention's ``Q K^T`` and ``A V``, ``n_heads * (head_dim + value width)`` per attended key (the value
        width is ``head_dim`` but in DeepSeek's latent attention), ``(seq_len + 1) / 2`` keys on average under
        the causal mask (hybrid families add their linear mixers' state updates)."""
        a = self.attention(layer)
        return a.num_heads * (a.head_dim + a.o_width) * (seq_len + 1) / 2.0

    def call_sublayer(self, block: Block, sub: nn.Module, x: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
        """``block``'s sub-layer on its normed input ``x``: an attention gets the layer's keyword inputs and
        returns ``(out, weights)``; a linear mixer gets the layer's mask and returns a tensor; a feed-forward
        block gets ``x`` alone (and returns a tensor, or ``(out, router scores)`` where ``facts["mlp_returns_tuple"]``)."""
        if block.kind != ATTN:
            y = sub(x)
            return y[0] if self.facts["mlp_returns_tuple"] else y
        if self.mixer_kind(block.layer) == LINEAR:
            return sub(x, attention_mask=layer_kwargs.get("attention_mask"))
        return sub(hidden_states=x, **layer_kwargs)[0]

    def cache_layers(self, sources: list[int]) -> list[int]:
        """Removed base layers that an export of the kept layers ``sources`` still writes, as zero mixers, for the
        hybrid cache's sake (plain families: none): layer 0 when the kept layers would start with a feed-forward
        layer, whose cache slot has no length for ``generate`` to read (Nemotron-H); and the first full-attention
        layer when no kept layer has attention, since the model sizes its causal mask from one."""
        if not self.facts.get("mixers") or not sources:
            return []
        keep = []
        if self.mixer_kind(sources[0]) == MLP and self.mixer_kind(0) != MLP and 0 not in sources:
            keep.append(0)
        attention = [i for i in range(self.num_layers) if self.mixer_kind(i) == SOFTMAX]
        if attention and not any(self.mixer_kind(i) == SOFTMAX for i in sources) and attention[0] not in keep:
            keep.append(attention[0])
        return sorted(keep)

    def _zero(self, block: Block) -> dict[str, nn.Module]:
        """What stands in for ``block`` once removed (by attribute name on its layer): the zero stub of its kind for
        its sub-layer, identities for its norms."""
        spec = self.block_spec(block)
        m = self._mixer_facts(block)
        stub = m.get("stub", MLP) if m else (SOFTMAX if block.kind == ATTN else MLP)
        layer = self.layers[block.layer]
        zero = {SOFTMAX: lambda: ZeroAttention(block.layer), LINEAR: lambda: ZeroLinearMixer(block.layer)}.get(
            stub, lambda: ZeroMLP(self.facts["mlp_returns_tuple"]))()
        mods = {spec.sublayer: zero}
        for name in (spec.input_norm, spec.output_norm):
            if name:  # a hybrid layer may read its norm's weight dtype (Nemotron-H): an identity that has one
                mods[name] = IdentityNorm(getattr(layer, name).weight.dtype) if m is not None else nn.Identity()
        return mods
