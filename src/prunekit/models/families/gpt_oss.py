"""gpt-oss: Llama's pre-norm layer with attention sinks, biases everywhere and a sparse MoE block in every layer.

Checked against transformers' ``modeling_gpt_oss.py`` (5.25):

- the layer is ``input_layernorm -> self_attn -> residual -> post_attention_layernorm -> mlp -> residual``
  (no residual scale); the MLP block (``GptOssMLP``: ``router`` + ``experts``) returns ``(hidden, router
  scores)``, so its zero stand-in returns a pair too (facts ``mlp_returns_tuple``);
- q, k, v and o have biases; ``sinks`` holds one logit per *query head*, appended as an extra softmax column
  and dropped: removing a KV group removes its query heads' sinks with their q rows and o columns
  (facts ``head_parameters``), and a head whose o columns are zero contributes nothing, sink or not;
- layer ``i`` is sliding or full by ``config.layer_types[i]`` (the module's ``sliding_window`` and the mask
  mapping by position): an export that drops layers writes the kept layers' own types
  (:meth:`ModelAdapter.kept_layers_config`);
- the experts (``GptOssExperts``) are 3-D Parameters, transposed and interleaved: ``gate_up_proj`` ``[E, H,
  2I]`` with gate = columns ``0::2``, up = ``1::2``, ``gate_up_proj_bias`` ``[E, 2I]`` alike, ``down_proj``
  ``[E, I, H]`` and ``down_proj_bias`` ``[E, H]``; the gate is the clamped SwiGLU ``(clamp(up) + 1) *
  g * sigmoid(alpha g)`` with ``g = clamp(gate)``: a channel whose columns and biases are zero outputs 0, so
  channel ``j`` of expert ``e`` (columns ``2j``, ``2j + 1`` and their biases, row ``j`` of down) is a
  structure of its own (the down bias is added once per routed token, whatever the channels);
- the router (``weight`` and ``bias``, top-k of the logits then softmax over the k) is not pruned.

Every layer is sparse, so there is no dense MLP; the stock config states one expert width for all layers.
"""

from __future__ import annotations

from prunekit.models.contract import MLP, Block, family_facts
from prunekit.models.families._moe import MoeAdapter


class GptOssAdapter(MoeAdapter):
    model_type = "gpt_oss"
    facts = family_facts(head_parameters=["sinks"], mlp_returns_tuple=True,
                         routed_experts={"module": "experts", "gate_up": "gate_up_proj", "down": "down_proj",
                                         "interleaved": True, "gate_up_bias": "gate_up_proj_bias"})
    llama_layout_refusal = "gpt-oss's attention sinks and its sparse mixture-of-experts MLP have no place in it"

    def weight_macs(self, block: Block) -> float:
        """Dense weights once each; the experts' weights and biases scaled by the active share ``top_k / E``."""
        if block.kind != MLP:
            return super().weight_macs(block)
        share = self.config.num_experts_per_tok / self.num_experts()
        ex = self.experts(block.layer)
        routed = {id(p) for p in ex.module.parameters()} if ex is not None else set()
        return sum(p.numel() * (share if id(p) in routed else 1.0) for p in self.sublayer(block).parameters())

    def sync_experts(self, layer: int) -> None:
        ex = self.experts(layer)
        ex.module.intermediate_size = ex.width
