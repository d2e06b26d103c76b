"""Gemma 2 and Gemma 3 (text): sandwich norms, soft-capped logits, per-layer attention types.

Checked against transformers' ``modeling_gemma2.py`` and ``modeling_gemma3.py`` (5.24):

- attention block: ``input_layernorm -> self_attn -> post_attention_layernorm`` (this norm
  normalises the attention *output*) ``-> residual``;
- MLP block: ``pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm -> residual``;
- the embedding multiplies by ``sqrt(hidden_size)`` inside the embedding module
  (``embed_scale``, a buffer computed from the config at construction), so slicing hidden
  channels keeps the original normaliser; the model's own preamble applies it
  (``capture_inputs``);
- head: ``lm_head(norm(h))`` then ``final_logit_softcapping * tanh(logits / cap)``;
- attention scale ``query_pre_attn_scalar ** -0.5`` is a module attribute: unchanged by head
  removal. Gemma 3's q/k norms are per head (``head_dim`` wide).
- sliding or global attention follows ``config.layer_types[i]`` (and in Gemma 3 the rope of that
  type): each attention module keeps its type; exports keep each kept layer's own type
  (:meth:`ModelAdapter.kept_layers_config`).

Gemma's RMSNorm scales by ``1 + weight``; blocks and channels slice it like any other norm.
"""

from __future__ import annotations

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import Head, family_facts


class Gemma2Adapter(ModelAdapter):
    model_type = "gemma2"
    llama_layout_refusal = "Gemma's norms on the attention and MLP outputs and its logit soft-capping have no place in it"
    hidden_resize_refusal = ("Gemma's config derives the embedding normaliser sqrt(hidden_size) from the hidden size, "
                             "so a narrower one would change it")
    facts = family_facts(attention_norms=["input_layernorm", "post_attention_layernorm"],
                         mlp_norms=["pre_feedforward_layernorm", "post_feedforward_layernorm"])

    def head(self) -> Head:
        return Head(self.decoder.norm, self.model.lm_head, softcap=getattr(self.config, "final_logit_softcapping", None))


class Gemma3TextAdapter(Gemma2Adapter):
    model_type = "gemma3_text"
