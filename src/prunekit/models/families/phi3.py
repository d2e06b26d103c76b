"""Phi-3 and Phi-4 (``model_type`` phi3): Llama's layer with fused projections.

Checked against transformers' ``modeling_phi3.py`` (5.24): ``qkv_proj`` packs ``[Q | K | V]``
rows (``num_heads * head_dim``, then ``num_kv_heads * head_dim`` twice); ``gate_up_proj`` is split
by ``chunk(2)``, so MLP channel ``j`` owns rows ``j`` and ``I + j``. The residual dropouts are
identities in evaluation. The attention slices its fused output with
``config.num_attention_heads`` and ``self.num_key_value_heads``, so after head removal
:meth:`sync_attention` gives the module its own copy of the config with its own head count.
"""

from __future__ import annotations

import copy

from prunekit.models.adapter import ATTN, MLP, AttentionProjections, Block, MlpProjections, ModelAdapter, Proj


class Phi3Adapter(ModelAdapter):
    model_type = "phi3"
    llama_layout_refusal = "prunekit does not yet split Phi-3's fused projections for it"

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
