"""The explicit registry: ``config.model_type`` -> adapter class."""

from __future__ import annotations

from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "llama": LlamaAdapter,
    "mistral": MistralAdapter,
    "qwen2": Qwen2Adapter,
    "qwen3": Qwen3Adapter,
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type`` alone."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise PrunekitError(
            f"model_type '{model_type}' is not supported.",
            f"Supported model types: {', '.join(supported_model_types())}.",
        )
    return ADAPTERS[model_type](model)
