"""The stand-ins for removed blocks: a zero attention and a zero MLP, without weights.

They are prunekit's in-memory removed blocks (:meth:`prunekit.models.adapter.ModelAdapter.remove_block`)
and, copied next to ``modeling_pruned.py`` into per-layer ``hf`` exports, the removed blocks of the
exported model. So this file imports only torch: a user loads an export with transformers alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ZeroAttention(nn.Module):
    """Stands in for a removed self-attention: outputs zeros, so the residual passes unchanged.

    It holds no weights. Under a KV cache it still appends, for its layer, one key and one value per
    new token: a ``[batch, 1, tokens, 1]`` tensor of ones (one head of width 1; nothing reads them).
    The cache then reports the layer's true length, from which ``generate`` sizes the attention mask
    (transformers asks the first full-attention layer, layer 0 in most families). Zero-width keys would
    not do: a dynamic cache layer counts its keys only when they hold elements (``keys.numel()``), so
    it would report 0, and a left-padded batch would attend to its padding. Ones rather than zeros,
    because a cache that counts the positions holding non-zero keys would not count zeros.
    """

    removed = True

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            b, t = hidden_states.shape[:2]
            ones = hidden_states.new_ones(b, 1, t, 1)
            cache.update(ones, ones, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """Stands in for a removed MLP: outputs zeros and holds no weights. ``returns_tuple``: as ``(zeros, None)``,
    for a family whose MLP block returns its router scores beside its output (gpt-oss)."""

    removed = True

    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.returns_tuple else zeros
