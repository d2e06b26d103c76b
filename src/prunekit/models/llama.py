"""Adapters for the Llama family and the families laid out like it.

Mistral, Qwen2 (Qwen 1.5 in the BlockPruner paper; biases on q/k/v) and Qwen3 (q/k norms inside
attention) share Llama's decoder layer layout: ``input_layernorm -> self_attn -> residual ->
post_attention_layernorm -> mlp -> residual``, so they need nothing beyond the names.
"""

from __future__ import annotations

from prunekit.models.adapter import ModelAdapter


class LlamaAdapter(ModelAdapter):
    model_type = "llama"


class MistralAdapter(ModelAdapter):
    model_type = "mistral"


class Qwen2Adapter(ModelAdapter):
    model_type = "qwen2"


class Qwen3Adapter(ModelAdapter):
    model_type = "qwen3"
