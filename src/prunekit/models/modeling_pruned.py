"""Pruned decoder-only causal LMs with per-layer geometry, loadable with ``trust_remote_code=True``.

This file is copied verbatim into every ``prunekit export --format hf`` directory whose pruning the
stock config cannot express (attention or MLP removed in some layers, per-layer head counts or
intermediate sizes), with ``zero_blocks.py`` beside it. It imports only ``torch``, ``transformers`` and
that file: a user needs neither prunekit nor anything else to load, run, generate with or re-save the
model::

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

Each class subclasses the base family's own transformers classes (Llama, Mistral, Qwen2, Qwen3,
Gemma 2, Gemma 3 text, Phi-3, OLMo 2, Granite, Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss, DeepSeek-V3, Qwen3.5,
Qwen3-Next, Nemotron-H), so the forward pass, masks, rotary embeddings, KV cache and ``generate`` are the
family's own. The config adds three per-layer lists, one entry per decoder layer:

- ``layer_num_attention_heads[i]``: query heads of layer ``i`` (0 = its attention block is absent);
- ``layer_num_key_value_heads[i]``: KV heads of layer ``i`` (0 when its attention is absent);
- ``layer_intermediate_size[i]``: MLP width of layer ``i`` (0 = its MLP block is absent; for a sparse
  MoE block, the width of each routed expert);
- optional, ``layer_shared_intermediate_size[i]``: the width of layer ``i``'s shared expert where the family
  prunes it (DeepSeek-V3; 0 for a dense or absent MLP).

For a hybrid family (Qwen3.5, Qwen3-Next, Nemotron-H) the mixer of layer ``i`` is the one its config's layer type names
(``layer_types``, rewritten for the kept layers), and for a linear mixer (Gated DeltaNet) the two
first lists hold its own counts (value heads, key heads); a mixer whose counts differ from the config's
is rebuilt by its own class from a copy of the config with its counts. A removed linear mixer is a
zero module that still counts its cache slot's tokens, and a removed block's norms are identities.

``head_dim`` is explicit and shared by all layers. What the family's layer is made of comes from the
config too, as plain data (``prunekit_family_facts``, written by prunekit from the same declaration its
own adapter reads): the names of each block's sub-layer and norms, its projections (separate or fused),
norms that span all heads, and whether the attention reads its head counts from its config. An absent
block is a zero module without weights (``zero_blocks.py``), and its norms are identities: the residual
stream passes through unchanged, exactly as in prunekit's in-memory pruned model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3ForCausalLM
from transformers.models.gemma2.configuration_gemma2 import Gemma2Config
from transformers.models.gemma2.modeling_gemma2 import Gemma2ForCausalLM
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM
from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssForCausalLM
from transformers.models.granite.configuration_granite import GraniteConfig
from transformers.models.granite.modeling_granite import GraniteForCausalLM
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.models.mistral.configuration_mistral import MistralConfig
from transformers.models.mistral.modeling_mistral import MistralForCausalLM
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralForCausalLM
from transformers.models.nemotron_h.configuration_nemotron_h import NemotronHConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHForCausalLM
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
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5ForCausalLM
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeForCausalLM
from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextForCausalLM

from .zero_blocks import IdentityNorm, ZeroAttention, ZeroLinearMixer, ZeroMLP

PER_LAYER_KEYS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_size")
SHARED_KEY = "layer_shared_intermediate_size"  # optional: the width of each sparse layer's shared expert (0 elsewhere)
FACTS_KEY = "prunekit_family_facts"


def _resized(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A Linear like ``old`` (bias, device, dtype) with new shape; weights are loaded afterwards."""
    if (old.in_features, old.out_features) == (in_features, out_features):
        return old
    w = old.weight
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=w.device, dtype=w.dtype)


def _resize_latent_attention(attn: nn.Module, names: dict, *, config, heads: int) -> None:
    """Latent attention (``names`` has "kv"): the first present of the ``names["q"]`` Linears and ``kv`` keep
    their rows per head (sized for the config's head count), o its columns per head."""
    q_name = next(n for n in names["q"] if getattr(attn, n, None) is not None)
    per_head = config.num_attention_heads
    for name, out_side in ((q_name, True), (names["kv"], True), (names["o"], False)):
        old = getattr(attn, name)
        if out_side:
            setattr(attn, name, _resized(old, old.in_features, old.out_features // per_head * heads))
        else:
            setattr(attn, name, _resized(old, old.in_features // per_head * heads, old.out_features))
    attn.num_heads = heads


def _resize_head_parameters(attn: nn.Module, names: list, heads: int) -> None:
    """1-D Parameters with one entry per query head (gpt-oss's sinks), to ``heads`` entries."""
    for name in names:
        p = getattr(attn, name)
        if p.shape[0] != heads:
            setattr(attn, name, nn.Parameter(torch.empty(heads, device=p.device, dtype=p.dtype)))


def _resize_attention(attn: nn.Module, facts: dict, *, config, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
    q, kv = heads * head_dim, kv_heads * head_dim
    names = facts["attention_projections"]
    _resize_head_parameters(attn, facts["head_parameters"], heads)
    if "kv" in names:
        return _resize_latent_attention(attn, names, config=config, heads=heads)
    if "qkv" in names:  # fused [Q | K | V] rows
        setattr(attn, names["qkv"], _resized(getattr(attn, names["qkv"]), hidden, q + 2 * kv))
    else:
        gate = 2 if facts.get("query_gate") else 1  # q rows [q_h | gate_h] per head
        for which, size in (("q", gate * q), ("k", kv), ("v", kv)):
            setattr(attn, names[which], _resized(getattr(attn, names[which]), hidden, size))
    if facts["heads_from_config"] and (heads != config.num_attention_heads or kv_heads != config.num_key_value_heads):
        attn.config = copy.copy(config)  # the module slices its fused rows with its config's head counts
        attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv_heads
    if facts["heads_from_config"]:
        attn.num_key_value_heads = kv_heads
    for which, name in facts["head_norms"].items():  # norms over all heads' rows
        norm, size = getattr(attn, name), q if which == "q" else kv
        if norm.weight.shape[0] != size:
            norm.weight = nn.Parameter(torch.empty(size, device=norm.weight.device, dtype=norm.weight.dtype))
    setattr(attn, names["o"], _resized(getattr(attn, names["o"]), q, hidden))
    attn.head_dim = head_dim
    attn.num_key_value_groups = heads // kv_heads


def _resize_mlp(mlp: nn.Module, facts: dict, hidden: int, width: int) -> None:
    names = facts["mlp_projections"]
    if "gate_up" in names:  # fused [gate | up] rows
        setattr(mlp, names["gate_up"], _resized(getattr(mlp, names["gate_up"]), hidden, 2 * width))
    else:
        for which in ("gate", "up"):
            setattr(mlp, names[which], _resized(getattr(mlp, names[which]), hidden, width))
    setattr(mlp, names["down"], _resized(getattr(mlp, names["down"]), width, hidden))
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


def _resize_experts(experts: nn.Module, names: dict, width: int) -> None:
    """Routed experts as 3-D Parameters ``gate_up [E, 2I, H]`` and ``down [E, H, I]``, to width ``I``; with
    ``names["interleaved"]``, ``gate_up [E, H, 2I]``, its bias ``[E, 2I]`` and ``down [E, I, H]``."""
    old_gu, old_down = getattr(experts, names["gate_up"]), getattr(experts, names["down"])
    interleaved = bool(names.get("interleaved"))
    if old_down.shape[1 if interleaved else 2] == width:
        return
    e = old_gu.shape[0]
    kw = {"device": old_gu.device, "dtype": old_gu.dtype}
    if interleaved:
        h = old_gu.shape[1]
        setattr(experts, names["gate_up"], nn.Parameter(torch.empty(e, h, 2 * width, **kw)))
        setattr(experts, names["down"], nn.Parameter(torch.empty(e, width, h, **kw)))
        if names.get("gate_up_bias"):
            setattr(experts, names["gate_up_bias"], nn.Parameter(torch.empty(e, 2 * width, **kw)))
        experts.intermediate_size = width
        return
    h = old_gu.shape[2]
    setattr(experts, names["gate_up"], nn.Parameter(torch.empty(e, 2 * width, h, **kw)))
    setattr(experts, names["down"], nn.Parameter(torch.empty(e, h, width, **kw)))
    experts.intermediate_dim = width


def apply_per_layer_geometry(model: nn.Module, heads: list[int], kv_heads: list[int], inter: list[int], head_dim: int, *,
                             facts: dict, shared: list[int] | None = None) -> None:
    """Give decoder layer ``i`` of ``model`` (a ``*ForCausalLM``) ``heads[i]`` query heads,
    ``kv_heads[i]`` KV heads and an MLP of width ``inter[i]``; 0 replaces the block by a zero module
    (and its norms by identities). For a sparse MoE block ``inter[i]`` is the width of every routed expert,
    and ``shared[i]`` (when given and not 0) the width of its shared expert (``facts["shared_mlp"]``).
    ``facts``: what the family's layer is made of (module docstring)."""
    layers = model.model.layers
    if any(len(v) != len(layers) for v in (heads, kv_heads, inter)):
        raise ValueError(f"per-layer lists need one entry per layer ({len(layers)})")
    hidden = model.config.hidden_size
    experts = facts["routed_experts"]
    for i, layer in enumerate(layers):
        if facts.get("mixers"):
            if not _hybrid_mixer(model, layer, i, facts, heads=heads[i], kv_heads=kv_heads[i], head_dim=head_dim, inter=inter[i]):
                continue
        elif heads[i] == 0:
            setattr(layer, facts["attention_sublayer"], ZeroAttention(i))
            for name in filter(None, facts["attention_norms"]):
                setattr(layer, name, nn.Identity())
        else:
            if kv_heads[i] < 1 or heads[i] % kv_heads[i]:
                raise ValueError(f"layer {i}: {heads[i]} query heads are not a multiple of {kv_heads[i]} KV heads")
            _resize_attention(getattr(layer, facts["attention_sublayer"]), facts, config=model.config, hidden=hidden,
                              heads=heads[i], kv_heads=kv_heads[i], head_dim=head_dim)
        mlp = getattr(layer, facts["mlp_sublayer"])
        if inter[i] == 0:
            setattr(layer, facts["mlp_sublayer"], ZeroMLP(facts["mlp_returns_tuple"]))
            for name in filter(None, facts["mlp_norms"]):
                setattr(layer, name, nn.Identity())
        elif experts and hasattr(mlp, experts["module"]):  # a sparse MoE block: ``inter[i]`` is its routed experts' width
            _resize_experts(getattr(mlp, experts["module"]), experts, inter[i])
            if shared and shared[i]:
                _resize_mlp(getattr(mlp, facts["shared_mlp"]), facts, hidden, shared[i])
        else:
            _resize_mlp(mlp, facts, hidden, inter[i])


def _hybrid_mixer(model: nn.Module, layer: nn.Module, i: int, facts: dict, *, heads: int, kv_heads: int, head_dim: int,
                  inter: int) -> bool:
    """The mixer slot of a hybrid family's layer ``i``, of the kind its layer type names: removed (``heads``
    0: the zero module that keeps its cache slot, identity norms), a linear mixer with its own head counts
    (rebuilt by its class from the config with them), or an attention resized like any other. Returns whether
    the layer's feed-forward slot is left to size; a layer of one block (Nemotron-H) has none, and its one
    feed-forward block is either kept as built (such families are not width-pruned) or removed (``inter`` 0)."""
    config = model.config
    mixer = facts["mixers"][getattr(config, facts["layer_types_key"])[i]]
    one_block = facts.get("one_block_per_layer", False)
    if mixer["slot"] != "attn":
        if one_block and inter == 0:
            setattr(layer, mixer["sublayer"], ZeroMLP())
            for name in filter(None, mixer["norms"]):
                setattr(layer, name, IdentityNorm(getattr(layer, name).weight.dtype))
        return not one_block
    if heads == 0:
        setattr(layer, mixer["sublayer"], ZeroAttention(i) if mixer["stub"] == "attention" else ZeroLinearMixer(i))
        for name in filter(None, mixer["norms"]):
            setattr(layer, name, IdentityNorm(getattr(layer, name).weight.dtype))
    elif mixer["stub"] == "attention":
        _resize_attention(getattr(layer, mixer["sublayer"]), facts, config=config, hidden=config.hidden_size,
                          heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    elif [getattr(config, f) for f in mixer["heads_config"]] != [heads, kv_heads]:
        own = copy.copy(config)
        for field, value in zip(mixer["heads_config"], (heads, kv_heads)):
            setattr(own, field, value)
        old = getattr(layer, mixer["sublayer"])
        w = next(old.parameters())
        setattr(layer, mixer["sublayer"], type(old)(own, layer_idx=i).to(device=w.device, dtype=w.dtype))
    return not one_block


class _PerLayerMixin:
    """Builds the family's model, then resizes or removes each layer's blocks as the config says."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        lists = [getattr(config, k, None) for k in (*PER_LAYER_KEYS, FACTS_KEY)]
        if any(v is None for v in lists):
            raise ValueError(f"config needs the per-layer lists {', '.join(PER_LAYER_KEYS)} and {FACTS_KEY}")
        apply_per_layer_geometry(self, *lists[:3], config.head_dim, facts=lists[3], shared=getattr(config, SHARED_KEY, None))


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
    "qwen3_5_text": (Qwen3_5TextConfig, Qwen3_5ForCausalLM), "nemotron_h": (NemotronHConfig, NemotronHForCausalLM),
    "qwen3_next": (Qwen3NextConfig, Qwen3NextForCausalLM),
    "gpt_oss": (GptOssConfig, GptOssForCausalLM), "deepseek_v3": (DeepseekV3Config, DeepseekV3ForCausalLM),
}
FAMILIES = {family: _pruned_classes(family, *bases) for family, bases in _BASES.items()}
globals().update({cls.__name__: cls for pair in FAMILIES.values() for cls in pair})
