"""Mixtral: Llama's layer with a sparse MoE block as its MLP (see ``_moe.py``)."""

from prunekit.models.families._moe import MixtralAdapter

__all__ = ["MixtralAdapter"]
