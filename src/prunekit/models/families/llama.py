"""Llama and the families laid out like it: Mistral, Qwen2, Qwen3.

Checked against transformers' ``modeling_llama.py`` / ``modeling_mistral.py`` / ``modeling_qwen2.py``
/ ``modeling_qwen3.py``: ``input_layernorm -> self_attn -> residual -> post_attention_layernorm ->
mlp -> residual``, separate ``q/k/v/o_proj`` and ``gate/up/down_proj`` Linears, head
``lm_head(norm(h))``. Qwen2 has q/k/v biases; Qwen3's q/k norms are per head (``head_dim`` wide),
so removing heads leaves them as they are. The contract's defaults are exactly this layout.
"""

from __future__ import annotations

from transformers import LlamaConfig

from prunekit.models.adapter import ModelAdapter


class LlamaAdapter(ModelAdapter):
    model_type = "llama"


class MistralAdapter(ModelAdapter):
    model_type = "mistral"


class Qwen2Adapter(ModelAdapter):
    model_type = "qwen2"


class Qwen3Adapter(ModelAdapter):
    model_type = "qwen3"


# Llama's state-dict names (of the model, or of decoder layer N below ``model.layers.N``) for each GGUF
# tensor name of llama.cpp's llama / deci architectures: how a GGUF is read back into a Llama-layout model.
LLAMA_GGUF_KEYS = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def as_llama_config(config: dict) -> dict:
    """A family's config dict as a Llama config dict: the entries Llama's config has, ``model_type`` llama."""
    keys = set(LlamaConfig().to_dict()) - {"architectures", "transformers_version"}
    return {k: v for k, v in config.items() if k in keys} | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
