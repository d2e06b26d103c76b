"""The explicit registry: ``config.model_type`` -> adapter class (one module per family in ``families/``)."""

from __future__ import annotations

from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.families.deepseek_v3 import DeepseekV3Adapter
from prunekit.models.families.gemma import Gemma2Adapter, Gemma3TextAdapter
from prunekit.models.families.gpt_oss import GptOssAdapter
from prunekit.models.families.granite import GraniteAdapter
from prunekit.models.families.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter
from prunekit.models.families.mixtral import MixtralAdapter
from prunekit.models.families.nemotron_h import NemotronHAdapter
from prunekit.models.families.olmo2 import Olmo2Adapter
from prunekit.models.families.phi3 import Phi3Adapter
from prunekit.models.families.qwen3_5 import Qwen3_5TextAdapter
from prunekit.models.families.qwen3_next import Qwen3NextAdapter
from prunekit.models.families.qwen_moe import Qwen2MoeAdapter, Qwen3MoeAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    cls.model_type: cls
    for cls in (
        LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Gemma2Adapter, Gemma3TextAdapter, Phi3Adapter,
        Olmo2Adapter, GraniteAdapter, MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, Qwen3_5TextAdapter,
        NemotronHAdapter, Qwen3NextAdapter, GptOssAdapter, DeepseekV3Adapter,
    )
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
