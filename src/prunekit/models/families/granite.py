"""Granite: Llama's layer with four multipliers.

Checked against transformers' ``modeling_granite.py`` (5.24): the embedding is multiplied by
``embedding_multiplier`` in the model's preamble (``capture_inputs`` sees it); each block adds
``residual_multiplier * f(norm(h))`` (both the attention and the MLP branch); the attention
scale is ``attention_multiplier`` (a module attribute: unchanged by head removal); the logits
are divided by ``logits_scaling``.

In Llama's layout (gguf, nemotron-nas) the multipliers are folded into the weights
(:meth:`llama_folds`): the embedding times ``embedding_multiplier``, the q rows times
``attention_multiplier * sqrt(head_dim)`` (Llama scales by ``head_dim ** -0.5``), o and down times
``residual_multiplier``, the LM head divided by ``logits_scaling``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Block, BlockSpec, Head, LlamaFolds
from prunekit.models.families.llama import as_llama_config


class GraniteAdapter(ModelAdapter):
    model_type = "granite"

    def block_spec(self, block: Block) -> BlockSpec:
        return replace(super().block_spec(block), residual_scale=float(self.config.residual_multiplier))

    def head(self) -> Head:
        return Head(self.decoder.norm, self.model.lm_head, logit_divisor=float(self.config.logits_scaling))

    def llama_folds(self) -> LlamaFolds:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return LlamaFolds(embed=float(c.embedding_multiplier), query=float(c.attention_multiplier) * math.sqrt(head_dim),
                          residual=float(c.residual_multiplier), logits=1.0 / float(c.logits_scaling))

    def llama_config(self, config: dict) -> dict:
        return as_llama_config(config)
