"""Model families (adapters), their registry, and loading models from a spec."""

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, MLP, AttentionProjections, Block, BlockSpec, Head, MlpProjections, Proj
from prunekit.models.registry import ADAPTERS, get_adapter, supported_model_types

__all__ = [
    "ATTN", "MLP", "ADAPTERS", "AttentionProjections", "Block", "BlockSpec", "Head", "MlpProjections", "ModelAdapter", "Proj",
    "get_adapter", "supported_model_types",
]
