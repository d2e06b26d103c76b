"""Qwen2-MoE and Qwen3-MoE: sparse or dense MLP by layer index (see ``_moe.py``)."""

from prunekit.models.families._moe import Qwen2MoeAdapter, Qwen3MoeAdapter

__all__ = ["Qwen2MoeAdapter", "Qwen3MoeAdapter"]
