"""Phi-3 and Phi-4 (``model_type`` phi3): Llama's layer with fused projections.

Checked against transformers' ``modeling_phi3.py`` (5.24): ``qkv_proj`` packs ``[Q | K | V]``
rows (``num_heads * head_dim``, then ``num_kv_heads * head_dim`` twice); ``gate_up_proj`` is split
by ``chunk(2)``, so MLP channel ``j`` owns rows ``j`` and ``I + j``. The residual dropouts are
identities in evaluation. The attention slices its fused output with
``config.num_attention_heads`` and ``self.num_key_value_heads``, so after head removal
:meth:`sync_attention` gives the module its own copy of the config with its own head count.

In Llama's layout (gguf, nemotron-nas) the fused rows are written as separate q / k / v and
gate / up tensors; a scaled RoPE (``longrope``) or a partial rotary factor is refused there.
"""

from __future__ import annotations

import copy

from prunekit.models.adapter import ATTN, MLP, AttentionProjections, Block, MlpProjections, ModelAdapter, Proj
from prunekit.models.families.llama import as_llama_config


class Phi3Adapter(ModelAdapter):
    model_type = "phi3"

    @property
    def llama_layout_refusal(self) -> str | None:
        rope = getattr(self.config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            return f"its RoPE type '{rope.get('rope_type')}' is not Llama's"
        if float(rope.get("partial_rotary_factor", getattr(self.config, "partial_rotary_factor", None)) or 1.0) != 1.0:
            return "it rotates only part of each head (partial_rotary_factor), which Llama's layout cannot say"
        return None

    def attention(self, layer: int) -> AttentionProjections:
        attn = self.sublayer(Block.of(layer, ATTN))
        hd = attn.head_dim
        n_q = attn.o_proj.in_features // hd
        n_kv = (attn.qkv_proj.out_features // hd - n_q) // 2
        q_end, k_end = n_q * hd, (n_q + n_kv) * hd
        qkv = attn.qkv_proj
        return AttentionProjections(
            Proj(qkv, 0, q_end), Proj(qkv, q_end, k_end), Proj(qkv, k_end, k_end + n_kv * hd), Proj(attn.o_proj), n_q, n_kv, hd,
        )

    def mlp(self, layer: int) -> MlpProjections:
        m = self.sublayer(Block.of(layer, MLP))
        width = m.down_proj.in_features
        return MlpProjections(Proj(m.gate_up_proj, 0, width), Proj(m.gate_up_proj, width, 2 * width), Proj(m.down_proj))

    def sync_attention(self, layer: int) -> None:
        attn = self.sublayer(Block.of(layer, ATTN))
        a = self.attention(layer)
        if a.num_heads != attn.config.num_attention_heads or a.num_kv_heads != attn.num_key_value_heads:
            attn.config = copy.copy(attn.config)
            attn.config.num_attention_heads = a.num_heads
            attn.config.num_key_value_heads = a.num_kv_heads
            attn.num_key_value_heads = a.num_kv_heads
            attn.num_key_value_groups = a.num_heads // a.num_kv_heads

    def llama_config(self, config: dict) -> dict:
        return as_llama_config(config)
