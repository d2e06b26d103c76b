"""The stand-ins for removed blocks: a zero attention, a zero linear mixer and a zero MLP, without weights
(and, for hybrid families, an identity norm in a removed block's norm's place).

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


class ZeroLinearMixer(nn.Module):
    """Stands in for a removed linear mixer (Gated DeltaNet, Mamba2) of a hybrid model: outputs zeros.

    Its cache slot is a linear-attention layer, which counts the tokens it has seen in its conv-state
    update; the cache reports slot 0's count as the sequence length, from which the model numbers
    positions and ``generate`` slices its inputs. So under a cache it still writes a conv state of one
    channel and width 1 (zeros; nothing reads it) for each call, which advances the count by the call's
    tokens, as the mixer it replaces would.
    """

    removed = True

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cache = kwargs.get("cache", kwargs.get("cache_params", kwargs.get("past_key_values")))
        if cache is not None:
            b, t = hidden_states.shape[:2]
            cache.update_conv_state(hidden_states.new_zeros(b, 1, t), self.layer_idx, conv_kernel_size=1)
        return torch.zeros_like(hidden_states)


class IdentityNorm(nn.Identity):
    """A removed block's norm in a hybrid model: passes its input through, and has an empty ``weight``
    (a buffer, not saved) because the family's layer casts its input to the norm weight's dtype."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)
