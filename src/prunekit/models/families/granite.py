"""Granite: Llama's layer with four multipliers.

Checked against transformers' ``modeling_granite.py`` (5.24): the embedding is multiplied by
``embedding_multiplier`` in the model's preamble (``capture_inputs`` sees it); each block adds
``residual_multiplier * f(norm(h))`` (both the attention and the MLP branch); the attention
scale is ``attention_multiplier`` (a module attribute: unchanged by head removal); the logits
are divided by ``logits_scaling``.
"""

from __future__ import annotations

from prunekit.models.adapter import ATTN, Block, BlockSpec, Head, ModelAdapter


class GraniteAdapter(ModelAdapter):
    model_type = "granite"
    llama_layout_refusal = "prunekit does not yet fold Granite's multipliers into the weights for it"

    def block_spec(self, block: Block) -> BlockSpec:
        scale = float(self.config.residual_multiplier)
        if block.kind == ATTN:
            return BlockSpec("input_layernorm", "self_attn", None, scale)
        return BlockSpec("post_attention_layernorm", "mlp", None, scale)

    def head(self) -> Head:
        return Head(self.decoder.norm, self.model.lm_head, logit_divisor=float(self.config.logits_scaling))
