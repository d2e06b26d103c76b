"""OLMo 2: norms after the sub-layers, q/k norms over all heads.

Checked against transformers' ``modeling_olmo2.py`` (5.24): no input norm; the attention block
is ``self_attn -> post_attention_layernorm -> residual`` and the MLP block ``mlp ->
post_feedforward_layernorm -> residual``. ``q_norm`` / ``k_norm`` are RMSNorms over the whole
``num_heads * head_dim`` (``num_kv_heads * head_dim``) projection output, applied before the
heads are split: removing heads slices them with their heads' rows
(:attr:`AttentionProjections.head_norms`). Their RMS is a mean over all heads, so after removal
:meth:`sync_attention` multiplies the kept norm weights by ``sqrt(n_before / n_after)``: a head
whose q (k) rows are zero then leaves the others' normalisation exactly as it was (up to the
norm's epsilon).
"""

from __future__ import annotations

import math

import torch

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import family_facts


class Olmo2Adapter(ModelAdapter):
    model_type = "olmo2"
    llama_layout_refusal = "OLMo 2's norms after the sub-layers and its q/k norms over all heads have no place in it"
    facts = family_facts(attention_norms=[None, "post_attention_layernorm"], mlp_norms=[None, "post_feedforward_layernorm"],
                         head_norms={"q": "q_norm", "k": "k_norm"})

    @torch.no_grad()
    def sync_attention(self, layer: int) -> None:
        a = self.attention(layer)
        for (norm, which), before in zip(a.head_norms, (self.config.num_attention_heads, self.config.num_key_value_heads)):
            after = a.num_heads if which == "q" else a.num_kv_heads
            if after != before and norm.weight.device.type != "meta":
                norm.weight.mul_(math.sqrt(before / after))
