"""Phi-3 and Phi-4 (``model_type`` phi3): Llama's layer with fused projections.

Checked against transformers' ``modeling_phi3.py`` (5.24): ``qkv_proj`` packs ``[Q | K | V]``
rows (``num_heads * head_dim``, then ``num_kv_heads * head_dim`` twice); ``gate_up_proj`` is split
by ``chunk(2)``, so MLP channel ``j`` owns rows ``j`` and ``I + j``. The residual dropouts are
identities in evaluation. The attention slices its fused output with
``config.num_attention_heads`` and ``self.num_key_value_heads``, so after head removal
``heads_from_config`` has the adapter's :meth:`sync_attention` give the module its own copy of the config
with its own head count.

In Llama's layout (gguf, nemotron-nas) the fused rows are written as separate q / k / v and
gate / up tensors; a scaled RoPE (``longrope``) or a partial rotary factor is refused there.
"""

from __future__ import annotations

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import family_facts
from prunekit.models.families.llama import as_llama_config


class Phi3Adapter(ModelAdapter):
    model_type = "phi3"
    facts = family_facts(attention_projections={"qkv": "qkv_proj", "o": "o_proj"}, heads_from_config=True,
                         mlp_projections={"gate_up": "gate_up_proj", "down": "down_proj"})

    @property
    def llama_layout_refusal(self) -> str | None:
        rope = getattr(self.config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            return f"its RoPE type '{rope.get('rope_type')}' is not Llama's"
        if float(rope.get("partial_rotary_factor", getattr(self.config, "partial_rotary_factor", None)) or 1.0) != 1.0:
            return "it rotates only part of each head (partial_rotary_factor), which Llama's layout cannot say"
        return None

    def llama_config(self, config: dict) -> dict:
        return as_llama_config(config)
