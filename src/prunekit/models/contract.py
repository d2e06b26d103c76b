"""The block contract's plain data: block ids, the family facts, and the views the adapter hands out.

A family's decoder layer is described by its *facts* (:data:`LLAMA_FACTS`, :func:`family_facts`; a hybrid
family adds :data:`HYBRID_FACTS`): attribute names on the layer, as JSON-able data that the adapter
(:mod:`prunekit.models.adapter`) and the exported ``modeling_pruned.py`` both read. What the adapter
returns about a layer is a frozen view over the model's own modules: a :class:`Block` (``2*i`` = the mixer
of layer ``i``, ``2*i + 1`` its feed-forward block), its :class:`BlockSpec`, projections as :class:`Proj`
row ranges of a Linear (:class:`AttentionProjections`, :class:`MlpProjections`, :class:`ExpertProjections`),
the :class:`Head` and the :class:`LlamaFolds`. This module holds no behaviour of a model family.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ATTN, MLP = "attn", "mlp"

#: What a family's decoder layer is made of, as plain data (attribute names on the layer and its
#: sub-layers): Llama's here, the contract's default; a family file declares its own with
#: :func:`family_facts`. The adapter reads its block specs and projections from them, and a per-layer hf
#: export writes them into its config (``prunekit_family_facts``) for ``modeling_pruned.py``, which sizes
#: and removes blocks by them without importing prunekit.
LLAMA_FACTS: dict = {
    "attention_sublayer": "self_attn",  # the attention sub-layer
    "attention_norms": ["input_layernorm", None],  # its (input norm, output norm); None: the family has none
    # or {"qkv": fused [Q|K|V], "o"}; or latent attention {"q": [names, the first present], "kv": per head [k | v], "o"}
    "attention_projections": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"},
    "head_norms": {},  # norms whose weight spans all heads' rows, {"q": name, "k": name} (OLMo 2)
    "head_parameters": [],  # 1-D Parameters of the attention with one entry per query head (gpt-oss's sinks)
    "heads_from_config": False,  # the attention slices its fused rows by its config's head counts (Phi-3)
    "mlp_sublayer": "mlp",  # the MLP (or sparse MoE) sub-layer
    "mlp_norms": ["post_attention_layernorm", None],
    "mlp_projections": {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"},  # or {"gate_up": fused [gate|up], "down"}
    "mlp_returns_tuple": False,  # the MLP block returns (hidden, router scores) (gpt-oss)
    # sparse MoE: {"module": ..., "gate_up": 3-D [E, 2I, H], "down": 3-D [E, H, I]}; with "interleaved": true,
    # gate_up [E, H, 2I] (channel j = columns 2j, 2j+1), down [E, I, H] and "gate_up_bias" [E, 2I] (gpt-oss)
    "routed_experts": None,
    "shared_mlp": None,  # a gated MLP inside the sparse MoE block whose channels are pruned (DeepSeek's), or None
}


#: Facts only a hybrid family declares (the others' facts, and so their exports' configs, stay without them):
#: ``layer_types_key``: the config list naming each layer's type (``layer_types``, ``layers_block_type``);
#: ``mixers``: per layer type, the block it fills (``slot``: ``attn`` = the mixer slot, ``mlp`` = the
#: feed-forward slot), its ``sublayer`` and ``norms``, the ``stub`` that stands in for it once removed
#: (``attention``: keeps a KV cache layer's length; ``linear``: keeps a linear-attention cache layer's
#: token count; ``mlp``: nothing to keep) and, for a linear mixer, ``heads_config``: the config fields of its
#: head counts ``[heads, kv_heads]`` (Gated DeltaNet: value and key heads; Mamba2: heads and groups);
#: ``one_block_per_layer``: each layer holds only the block its type names (Nemotron-H);
#: ``query_gate``: the attention's q projection holds ``[q_h | gate_h]`` rows per head (Qwen3.5, Qwen3-Next).
HYBRID_FACTS: dict = {"layer_types_key": None, "mixers": None, "one_block_per_layer": False, "query_gate": False}

#: Mixer kinds (:meth:`~prunekit.models.adapter.ModelAdapter.mixer_kind`): softmax attention, or a linear (recurrent) mixer.
SOFTMAX, LINEAR = "attention", "linear"


def family_facts(**changes: Any) -> dict:
    """Llama's facts (:data:`LLAMA_FACTS`) with ``changes`` (which may add :data:`HYBRID_FACTS` keys): a new dict, JSON-able."""
    unknown = set(changes) - set(LLAMA_FACTS) - set(HYBRID_FACTS)
    if unknown:
        raise KeyError(f"unknown family facts: {sorted(unknown)}")
    return copy.deepcopy(LLAMA_FACTS) | copy.deepcopy(changes)


@dataclass(frozen=True, order=True)
class Block:
    """One prunable block: ``index = 2 * layer + (0 for attn, 1 for mlp)``."""

    index: int

    @property
    def layer(self) -> int:
        return self.index // 2

    @property
    def kind(self) -> str:
        return ATTN if self.index % 2 == 0 else MLP

    @classmethod
    def of(cls, layer: int, kind: str) -> "Block":
        return cls(2 * layer + (0 if kind == ATTN else 1))

    def __str__(self) -> str:
        return f"{self.kind} {self.layer}"


@dataclass(frozen=True)
class BlockSpec:
    """How one block of a decoder layer is built, as attribute names on the layer.

    Running the block on the residual stream ``h``: ``y = input_norm(h)`` (or ``h`` when there is
    none), ``y = sublayer(y)``, ``y = output_norm(y)`` (when there is one), ``h + y * residual_scale``.
    Removing the block removes its norms and its sub-layer: the residual passes unchanged.
    """

    input_norm: str | None
    sublayer: str
    output_norm: str | None = None
    residual_scale: float = 1.0


@dataclass(frozen=True)
class Head:
    """The head: ``lm_head(final_norm(h)) / logit_divisor``, then ``cap * tanh(logits / cap)`` when ``softcap``."""

    final_norm: nn.Module
    lm_head: nn.Linear
    logit_divisor: float = 1.0
    softcap: float | None = None


@dataclass(frozen=True)
class LlamaFolds:
    """Factors that write a model in Llama's layout (gguf ``deci``, nemotron-nas): multiplying the
    token embedding, the q rows, the o / down rows (what each block writes to the residual) and the
    LM head by them gives Llama's semantics (embedding unscaled, attention scale ``head_dim ** -0.5``,
    residual scale 1, logits unscaled) the same function."""

    embed: float = 1.0
    query: float = 1.0
    residual: float = 1.0
    logits: float = 1.0

    @property
    def identity(self) -> bool:
        return self == LlamaFolds()


class Proj:
    """Output rows ``[start, stop)`` of a Linear: a whole projection, or one part of a fused one
    (Phi-3's ``qkv_proj`` = ``[Q | K | V]`` rows, ``gate_up_proj`` = ``[gate | up]`` rows).

    ``weight``/``bias`` are the module's own Parameters for a whole projection and views of them
    (writes go through) for a part; ``module`` is the Linear that holds them.
    """

    __slots__ = ("module", "start", "stop")

    def __init__(self, module: nn.Linear, start: int = 0, stop: int | None = None) -> None:
        self.module, self.start = module, start
        self.stop = module.out_features if stop is None else stop

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.module.weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        w = self.module.weight
        return w if self.whole else w[self.start:self.stop]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.module.bias
        return b if b is None or self.whole else b[self.start:self.stop]

    @property
    def out_features(self) -> int:
        return self.stop - self.start

    @property
    def in_features(self) -> int:
        return self.module.weight.shape[1]


@dataclass(frozen=True)
class AttentionProjections:
    """Attention of one layer. Query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``.

    ``head_norms``: norms whose weight spans all heads' rows (OLMo 2's ``q_norm``/``k_norm``), as
    ``(module, 'q' | 'k')``: removing heads slices them with the q (or k) rows.
    """

    q: Proj
    k: Proj | None
    v: Proj | None
    o: Proj
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_norms: tuple = ()
    q_rows_per_head: int = 1  # in units of head_dim: 2 when q holds [q_h | gate_h] per head (Qwen3.5's gated attention)
    head_params: tuple = ()  # (module, attr) of 1-D Parameters with one entry per query head (gpt-oss's sinks)
    kv: Proj | None = None  # latent attention: per head ``kv_head_dim`` rows ``[k_nope | v]``; k and v are None
    kv_head_dim: int = 0
    o_head_dim: int = 0  # o's input columns per query head (0: ``head_dim``; latent attention: the value size)

    @property
    def o_width(self) -> int:
        """o's input columns per query head."""
        return self.o_head_dim or self.head_dim

    def value_rows(self, kv_head: int) -> tuple[Proj, slice]:
        """The Linear (as a :class:`Proj`) and its rows that make ``kv_head``'s values."""
        if self.kv is not None:
            end = self.kv.start + (kv_head + 1) * self.kv_head_dim
            return self.kv, slice(end - self.o_width, end)
        return self.v, slice(self.v.start + kv_head * self.head_dim, self.v.start + (kv_head + 1) * self.head_dim)


@dataclass(frozen=True)
class ExpertProjections:
    """The routed experts of a sparse MoE block, as 3-D Parameters of ``module``: ``gate_up``
    ``[E, 2I, H]`` (expert ``e``'s channel ``j`` = rows ``j`` and ``I + j`` of slab ``e``, gate then
    up) and ``down`` ``[E, H, I]`` (column ``j`` of slab ``e``); or, ``interleaved`` (gpt-oss), ``gate_up``
    ``[E, H, 2I]`` with channel ``j`` in columns ``2j`` (gate) and ``2j + 1`` (up), its bias ``[E, 2I]`` alike,
    and ``down`` ``[E, I, H]`` (row ``j``)."""

    module: nn.Module
    gate_up: str
    down: str
    num_experts: int
    width: int
    interleaved: bool = False  # gate_up ``[E, H, 2I]`` (channel ``j`` = columns 2j, 2j+1), down ``[E, I, H]`` (row ``j``)
    gate_up_bias: str | None = None  # ``[E, 2I]``, laid out as gate_up's channels


@dataclass(frozen=True)
class MlpProjections:
    """Gated MLP of one layer: ``down(act(gate(x)) * up(x))``; channel j = row j of gate/up, column j of down."""

    gate: Proj
    up: Proj
    down: Proj


def block_set(blocks: Sequence[Block | int]) -> frozenset[int]:
    """The indices of ``blocks`` (blocks or indices)."""
    return frozenset(b.index if isinstance(b, Block) else int(b) for b in blocks)
