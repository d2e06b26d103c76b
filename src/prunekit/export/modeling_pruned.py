"""Pruned decoder-only causal LMs with per-layer geometry, loadable with ``trust_remote_code=True``.

This file is copied verbatim into every ``prunekit export --format hf`` directory whose pruning the
stock config cannot express (attention or MLP removed in some layers, per-layer head counts or
intermediate sizes). It imports only ``torch`` and ``transformers``: a user needs neither prunekit
nor anything else to load, run, generate with or re-save the model::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

Each class subclasses the base family's own transformers classes (Llama, Mistral, Qwen2, Qwen3,
Gemma 2, Gemma 3 text, Phi-3, OLMo 2, Granite, Mixtral, Qwen2-MoE, Qwen3-MoE), so the forward
pass, masks, rotary embeddings, KV cache and ``generate`` are the family's own. The config adds
three per-layer lists, one entry per decoder layer:

- ``layer_num_attention_heads[i]``: query heads of layer ``i`` (0 = its attention block is absent);
- ``layer_num_key_value_heads[i]``: KV heads of layer ``i`` (0 when its attention is absent);
- ``layer_intermediate_size[i]``: MLP width of layer ``i`` (0 = its MLP block is absent; for a sparse
  MoE block, the width of each routed expert).

``head_dim`` is explicit and shared by all layers. An absent block is a zero module without
weights, and its norms (``BLOCK_NORMS``: pre-norm, and the output norm of Gemma / OLMo 2) are
identities: the residual stream passes through unchanged, exactly
as in prunekit's in-memory pruned model. Under a KV cache an absent attention still records
one key and value per token for its layer (width 1, ones), so the cache reports the right sequence
length even when layer 0 has no attention (``generate`` sizes the attention mask from it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.models.gemma2.configuration_gemma2 import Gemma2Config
from transformers.models.gemma2.modeling_gemma2 import Gemma2ForCausalLM
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM
from transformers.models.granite.configuration_granite import GraniteConfig
from transformers.models.granite.modeling_granite import GraniteForCausalLM
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.models.mistral.configuration_mistral import MistralConfig
from transformers.models.mistral.modeling_mistral import MistralForCausalLM
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralForCausalLM
from transformers.models.olmo2.configuration_olmo2 import Olmo2Config
from transformers.models.olmo2.modeling_olmo2 import Olmo2ForCausalLM
from transformers.models.phi3.configuration_phi3 import Phi3Config
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM
from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeForCausalLM
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeForCausalLM

PER_LAYER_KEYS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_size")


class ZeroAttention(nn.Module):
    """An absent attention block: zeros out, no weights.

    Under a KV cache it appends, for its layer, a ``[batch, 1, tokens, 1]`` tensor of ones as keys and
    values (nothing reads them), so the layer reports its true length; ``generate`` sizes the attention
    mask from the first full-attention layer's length. Zero-width keys would read as an empty layer (a
    dynamic layer counts keys only when ``keys.numel()`` > 0) and a left-padded batch would attend to
    its padding; ones, not zeros, for caches that count the positions holding non-zero keys.
    """

    removed = True

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            b, t = hidden_states.shape[:2]
            ones = hidden_states.new_ones(b, 1, t, 1)
            cache.update(ones, ones, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """An absent MLP block: zeros out, no weights."""

    removed = True

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _resized(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A Linear like ``old`` (bias, device, dtype) with new shape; weights are loaded afterwards."""
    if (old.in_features, old.out_features) == (in_features, out_features):
        return old
    w = old.weight
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=w.device, dtype=w.dtype)


# family -> (norms of the attention block, norms of the MLP block): identities when the block is absent
# (checked against each family's transformers modeling code; prunekit's models/families/ describe the same).
BLOCK_NORMS = {
    "llama": (("input_layernorm",), ("post_attention_layernorm",)),
    "gemma2": (("input_layernorm", "post_attention_layernorm"), ("pre_feedforward_layernorm", "post_feedforward_layernorm")),
    "olmo2": (("post_attention_layernorm",), ("post_feedforward_layernorm",)),
}
for _name in ("mistral", "qwen2", "qwen3", "phi3", "granite", "mixtral", "qwen2_moe", "qwen3_moe"):
    BLOCK_NORMS[_name] = BLOCK_NORMS["llama"]
BLOCK_NORMS["gemma3_text"] = BLOCK_NORMS["gemma2"]


def _family(model: nn.Module) -> str:
    return model.config.model_type.removeprefix("prunekit_")


def _resize_attention(family: str, attn: nn.Module, config, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
    q, kv = heads * head_dim, kv_heads * head_dim
    if family == "phi3":  # fused [Q | K | V] rows; the module slices them with its config's head count
        attn.qkv_proj = _resized(attn.qkv_proj, hidden, q + 2 * kv)
        if heads != config.num_attention_heads or kv_heads != config.num_key_value_heads:
            attn.config = copy.copy(config)
            attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv_heads
        attn.num_key_value_heads = kv_heads
    else:
        attn.q_proj = _resized(attn.q_proj, hidden, q)
        attn.k_proj = _resized(attn.k_proj, hidden, kv)
        attn.v_proj = _resized(attn.v_proj, hidden, kv)
    if family == "olmo2":  # q/k norms span all heads
        for name, size in (("q_norm", q), ("k_norm", kv)):
            norm = getattr(attn, name)
            if norm.weight.shape[0] != size:
                norm.weight = nn.Parameter(torch.empty(size, device=norm.weight.device, dtype=norm.weight.dtype))
    attn.o_proj = _resized(attn.o_proj, q, hidden)
    attn.head_dim = head_dim
    attn.num_key_value_groups = heads // kv_heads


def _resize_mlp(family: str, mlp: nn.Module, hidden: int, width: int) -> None:
    if family == "phi3":  # fused [gate | up] rows
        mlp.gate_up_proj = _resized(mlp.gate_up_proj, hidden, 2 * width)
    else:
        mlp.gate_proj = _resized(mlp.gate_proj, hidden, width)
        mlp.up_proj = _resized(mlp.up_proj, hidden, width)
    mlp.down_proj = _resized(mlp.down_proj, width, hidden)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


def _resize_experts(experts: nn.Module, width: int) -> None:
    """Routed experts as 3-D Parameters ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``, to width ``I``."""
    old_gu, old_down = experts.gate_up_proj, experts.down_proj
    if old_down.shape[2] == width:
        return
    e, h = old_gu.shape[0], old_gu.shape[2]
    kw = {"device": old_gu.device, "dtype": old_gu.dtype}
    experts.gate_up_proj = nn.Parameter(torch.empty(e, 2 * width, h, **kw))
    experts.down_proj = nn.Parameter(torch.empty(e, h, width, **kw))
    experts.intermediate_dim = width


def apply_per_layer_geometry(
    model: nn.Module, heads: list[int], kv_heads: list[int], inter: list[int], head_dim: int,
    zero_attention=ZeroAttention, zero_mlp=ZeroMLP,
) -> None:
    """Give decoder layer ``i`` of ``model`` (a ``*ForCausalLM``) ``heads[i]`` query heads,
    ``kv_heads[i]`` KV heads and an MLP of width ``inter[i]``; 0 replaces the block by a zero module
    (and its norms by identities). For a sparse MoE block ``inter[i]`` is the width of every routed expert."""
    family = _family(model)
    attn_norms, mlp_norms = BLOCK_NORMS[family]
    layers = model.model.layers
    if any(len(v) != len(layers) for v in (heads, kv_heads, inter)):
        raise ValueError(f"per-layer lists need one entry per layer ({len(layers)})")
    hidden = model.config.hidden_size
    for i, layer in enumerate(layers):
        if heads[i] == 0:
            layer.self_attn = zero_attention(i)
            for name in attn_norms:
                setattr(layer, name, nn.Identity())
        else:
            if kv_heads[i] < 1 or heads[i] % kv_heads[i]:
                raise ValueError(f"layer {i}: {heads[i]} query heads are not a multiple of {kv_heads[i]} KV heads")
            _resize_attention(family, layer.self_attn, model.config, hidden, heads[i], kv_heads[i], head_dim)
        if inter[i] == 0:
            layer.mlp = zero_mlp()
            for name in mlp_norms:
                setattr(layer, name, nn.Identity())
        elif hasattr(layer.mlp, "experts"):  # a sparse MoE block: ``inter[i]`` is its routed experts' width
            _resize_experts(layer.mlp.experts, inter[i])
        else:
            _resize_mlp(family, layer.mlp, hidden, inter[i])


class _PerLayerMixin:
    """Builds the family's model, then resizes or removes each layer's blocks as the config says."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        lists = [getattr(config, k, None) for k in PER_LAYER_KEYS]
        if any(v is None for v in lists):
            raise ValueError(f"config needs the per-layer lists {', '.join(PER_LAYER_KEYS)}")
        apply_per_layer_geometry(self, *lists, config.head_dim)


def _pruned_classes(family: str, config_cls, model_cls) -> tuple[type, type]:
    """``Pruned<Family>Config`` (``model_type`` ``prunekit_<family>``) and its ``*ForCausalLM`` with the mixin."""
    name = "".join(w.capitalize() for w in family.split("_"))
    conf = type(f"Pruned{name}Config", (config_cls,), {"model_type": f"prunekit_{family}", "__module__": __name__})
    model = type(f"Pruned{name}ForCausalLM", (_PerLayerMixin, model_cls), {"config_class": conf, "__module__": __name__})
    return conf, model


_BASES = {
    "llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM), "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM),
    "granite": (GraniteConfig, GraniteForCausalLM), "mixtral": (MixtralConfig, MixtralForCausalLM),
    "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM), "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
}
FAMILIES = {family: _pruned_classes(family, *bases) for family, bases in _BASES.items()}
globals().update({cls.__name__: cls for pair in FAMILIES.values() for cls in pair})
