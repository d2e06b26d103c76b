"""DeepSeek-V3 (``model_type`` deepseek_v3; also Kimi K2, Moonlight): multi-head latent attention, dense MLPs
in the first layers and sparse MoE blocks with shared experts after them.

Checked against transformers' ``modeling_deepseek_v3.py`` (5.25):

- the layer is Llama's: ``input_layernorm -> self_attn -> residual -> post_attention_layernorm -> mlp ->
  residual``, no residual scale;
- the attention (MLA) projects the input to a query latent (``q_a_proj``, ``q_a_layernorm``) and up again with
  ``q_b_proj`` — or, when ``q_lora_rank`` is None, with one ``q_proj`` — whose rows are per head ``[nope |
  rope]`` (``qk_head_dim = qk_nope_head_dim + qk_rope_head_dim`` rows); keys and values come from one shared
  latent (``kv_a_proj_with_mqa``, ``kv_a_layernorm``, cached compressed) expanded per head by ``kv_b_proj``,
  whose rows are per head ``[k_nope | v]`` (``qk_nope_head_dim + v_head_dim``); ``o_proj`` reads
  ``v_head_dim`` columns per head. Every view infers the head count (``-1``) and ``num_key_value_groups``
  stays 1, so head ``h`` is a structure of its own: its q rows, its kv rows and its o columns
  (facts: ``attention_projections`` with ``kv``); the latent projections and norms are shared and kept.
  The softmax scale (``qk_head_dim ** -0.5``, YaRN's mscale) does not depend on the head count;
- layer ``i``'s MLP is the dense ``DeepseekV3MLP`` when ``i < first_k_dense_replace``, else ``DeepseekV3MoE``
  (router ``gate`` with group-limited top-k, experts as 3-D Parameters ``gate_up_proj`` ``[E, 2I, H]`` and
  ``down_proj`` ``[E, H, I]`` as Mixtral's, and ``shared_experts``, a dense MLP added without a gate). The
  dense layers are a prefix, so an export that drops layers writes ``first_k_dense_replace`` = the number of
  kept dense layers (:meth:`kept_layers_config`): each kept layer stays dense or sparse.

LLM-Pruner prunes the heads, the dense MLPs' channels, each routed expert's channels (Mixtral's families) and
the shared experts' channels (facts ``shared_mlp``: one more family of channels per sparse layer, its width
written per layer in a per-layer hf export). The router and the experts' count are kept.
"""

from __future__ import annotations

from prunekit.models.contract import ATTN, Block, family_facts
from prunekit.models.families._moe import MoeAdapter


class DeepseekV3Adapter(MoeAdapter):
    model_type = "deepseek_v3"
    facts = family_facts(attention_projections={"q": ["q_b_proj", "q_proj"], "kv": "kv_b_proj", "o": "o_proj"},
                         routed_experts={"module": "experts", "gate_up": "gate_up_proj", "down": "down_proj"},
                         shared_mlp="shared_experts")
    llama_layout_refusal = "DeepSeek's latent attention and its sparse mixture-of-experts MLP have no place in it"
    hidden_resize_refusal = "hidden channels of DeepSeek's latent attention are not pruned"

    def is_sparse(self, layer: int) -> bool:
        return layer >= int(self.config.first_k_dense_replace or 0)

    def num_experts(self) -> int:
        return int(self.config.n_routed_experts)

    def sync_attention(self, layer: int) -> None:
        """The head count the module keeps as an attribute (its views infer it)."""
        self.sublayer(Block.of(layer, ATTN)).num_heads = self.attention(layer).num_heads

    def kept_layers_config(self, sources: list[int]) -> dict:
        dense = sum(1 for src in sources if not self.is_sparse(src))
        return super().kept_layers_config(sources) | {"first_k_dense_replace": dense}
