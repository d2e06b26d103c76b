"""The adapter contract: what every algorithm may know about a model family.

Algorithms never touch ``model.model.layers`` or branch on architecture; they ask the adapter
for the decoder layers, the blocks, the projections and the head geometry, and let it skip or
remove blocks.

Blocks. Decoder layer ``i`` holds two blocks, numbered in forward order:
``2*i`` = the attention block (its pre-norm + self-attention) and ``2*i + 1`` = the MLP block
(its pre-norm + MLP). Running block ``b`` on the residual stream ``h`` (shape ``[batch, seq,
hidden]``) computes ``h + f_b(norm_b(h))``; removing it leaves ``h`` unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ATTN, MLP = "attn", "mlp"


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
class AttentionProjections:
    """Attention of one layer. Query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class MlpProjections:
    """Gated MLP of one layer: ``down(act(gate(x)) * up(x))``; channel j = row j of gate/up, column j of down."""

    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


class ZeroAttention(nn.Module):
    """Stands in for a removed self-attention: outputs zeros, so the residual passes unchanged.

    It holds no weights. Under a KV cache it appends zero-width keys/values for its layer so that
    the cache still reports the right sequence length to ``generate``.
    """

    removed = True

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        cache = kwargs.get("past_key_values")
        if cache is not None:
            b, t = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 1, t, 0)
            cache.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """Stands in for a removed MLP: outputs zeros and holds no weights."""

    removed = True

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Replaces a decoder layer for one forward: records the layer's inputs and passes ``h`` on."""

    def __init__(self, record: list, stop: bool) -> None:
        super().__init__()
        self.record, self.stop = record, stop

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.record.append((hidden_states, kwargs))
        if self.stop:
            raise _StopForward
        return hidden_states


class ModelAdapter:
    """Base adapter for pre-norm decoder-only families laid out like Llama.

    Subclasses name their sub-modules through the class attributes below; families that differ
    (other norms, parallel blocks) override the methods.
    """

    model_type: str = ""
    attn_name = "self_attn"
    mlp_name = "mlp"
    attn_norm_name = "input_layernorm"
    mlp_norm_name = "post_attention_layernorm"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # --- structure ---------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_blocks(self) -> int:
        return 2 * self.num_layers

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def blocks(self, kind: str = "mix") -> list[Block]:
        """All blocks of ``kind`` ('mix' = both), in forward order, removed ones included."""
        out = [Block(i) for i in range(self.num_blocks)]
        return out if kind == "mix" else [b for b in out if b.kind == kind]

    def block_modules(self, block: Block) -> tuple[nn.Module, nn.Module]:
        """(pre-norm, sub-layer) of a block."""
        layer = self.layers[block.layer]
        if block.kind == ATTN:
            return getattr(layer, self.attn_norm_name), getattr(layer, self.attn_name)
        return getattr(layer, self.mlp_norm_name), getattr(layer, self.mlp_name)

    def is_removed(self, block: Block) -> bool:
        return getattr(self.block_modules(block)[1], "removed", False)

    def block_params(self, block: Block) -> int:
        """Parameters of the block (norm + sub-layer) as the model holds it now."""
        return sum(p.numel() for m in self.block_modules(block) for p in m.parameters())

    def total_params(self) -> int:
        """Parameters of the whole model, tied embeddings counted once."""
        return sum(p.numel() for p in self.model.parameters())

    def attention(self, layer: int) -> AttentionProjections:
        attn = getattr(self.layers[layer], self.attn_name)
        hd = attn.head_dim
        n_q = attn.q_proj.out_features // hd
        n_kv = attn.k_proj.out_features // hd
        return AttentionProjections(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, n_q, n_kv, hd)

    def mlp(self, layer: int) -> MlpProjections:
        m = getattr(self.layers[layer], self.mlp_name)
        return MlpProjections(m.gate_proj, m.up_proj, m.down_proj)

    # --- running blocks ----------------------------------------------------------------------
    def capture_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Embeddings and each decoder layer's keyword inputs (mask, rotary cos/sin) for a batch.

        The model's own preamble computes them (so every family's masks and position encodings
        are its own); the decoder layers are swapped for catchers and the forward stops before
        the LM head. Returns ``h0 [batch, seq, hidden]`` and one kwargs dict per layer.
        """
        record: list = []
        originals = list(self.layers)
        n = len(originals)
        for i in range(n):
            self.layers[i] = _Catcher(record, stop=(i == n - 1))
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
        h0 = record[0][0]
        keep = ("attention_mask", "position_embeddings", "position_ids")
        kwargs = [{k: v for k, v in kw.items() if k in keep} for _, kw in record]
        return h0, kwargs

    def run_block(self, block: Block, h: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
        """One block on the residual stream: ``h + f(norm(h))``."""
        norm, sub = self.block_modules(block)
        if block.kind == ATTN:
            return h + sub(hidden_states=norm(h), **layer_kwargs)[0]
        return h + sub(norm(h))

    def tile_inputs(self, layer_kwargs: dict, k: int, batch: int) -> dict:
        """A layer's keyword inputs for ``k`` copies of a ``batch``-window batch stacked along dim 0
        (several candidates run as one batch): tensors whose first dim is ``batch`` are tiled ``k``
        times (mask ``[batch, 1, T, T]``, rotary cos/sin ``[batch, T, d]``); size-1 dims broadcast."""

        def tile(v):
            if isinstance(v, torch.Tensor) and v.dim() > 1 and v.shape[0] == batch and batch > 1:
                return v.repeat(k, *([1] * (v.dim() - 1)))
            if isinstance(v, tuple):
                return tuple(tile(x) for x in v)
            return v

        return {name: tile(v) for name, v in layer_kwargs.items()}

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on residual states ``[..., hidden]`` -> ``[..., vocab]``."""
        return self.lm_head(self.final_norm(h))

    # --- skipping and removing -----------------------------------------------------------------
    def _swap(self, block: Block, norm: nn.Module, sub: nn.Module) -> tuple[nn.Module, nn.Module]:
        layer = self.layers[block.layer]
        names = (self.attn_norm_name, self.attn_name) if block.kind == ATTN else (self.mlp_norm_name, self.mlp_name)
        old = (getattr(layer, names[0]), getattr(layer, names[1]))
        setattr(layer, names[0], norm)
        setattr(layer, names[1], sub)
        return old

    def _zero(self, block: Block) -> tuple[nn.Module, nn.Module]:
        zero = ZeroAttention(block.layer) if block.kind == ATTN else ZeroMLP()
        return nn.Identity(), zero

    def remove_block(self, block: Block) -> None:
        """Remove a block for good: its weights leave the model, the residual passes through."""
        if not self.is_removed(block):
            self._swap(block, *self._zero(block))

    @contextlib.contextmanager
    def skipping(self, blocks: Iterable[Block]) -> Iterator[None]:
        """Temporarily skip blocks (used by the naive reference search and by evaluation)."""
        saved = []
        try:
            for b in blocks:
                if not self.is_removed(b):
                    saved.append((b, self._swap(b, *self._zero(b))))
            yield
        finally:
            for b, old in reversed(saved):
                self._swap(b, *old)

    def removed_blocks(self) -> list[Block]:
        return [b for b in self.blocks() if self.is_removed(b)]

    def describe(self) -> dict:
        """A JSON-able summary of the model's geometry."""
        a = self.attention(0) if not self.is_removed(Block.of(0, ATTN)) else None
        return {
            "model_type": self.model_type,
            "layers": self.num_layers,
            "blocks": self.num_blocks,
            "hidden_size": self.config.hidden_size,
            "num_heads": a.num_heads if a else self.config.num_attention_heads,
            "num_kv_heads": a.num_kv_heads if a else self.config.num_key_value_heads,
            "head_dim": a.head_dim if a else getattr(self.config, "head_dim", None),
            "intermediate_size": self.config.intermediate_size,
            "vocab_size": self.config.vocab_size,
            "parameters": self.total_params(),
        }


def block_set(blocks: Sequence[Block | int]) -> frozenset[int]:
    return frozenset(b.index if isinstance(b, Block) else int(b) for b in blocks)
