"""Nemotron-H (``nemotron_h``): one mixer per layer, Mamba2, attention, MLP or MoE, by ``layers_block_type``.

Checked against transformers' ``modeling_nemotron_h.py`` (5.25; ``shared/FAMILIES-2026.md`` §3). Each
``NemotronHBlock`` is ``residual + mixer(norm(x))`` with one norm and no post-norm, and
``config.layers_block_type[i]`` (``layer_types`` is its alias) picks the mixer: ``linear_attention`` =
Mamba2, ``full_attention`` = attention without positions, ``moe`` / ``mlp`` = the feed-forward kinds.
So layer ``i`` holds one block: a Mamba2 or attention layer its mixer block ``2i`` (its feed-forward slot
``2i + 1`` absent), an MLP or MoE layer its feed-forward block ``2i + 1`` (its mixer slot absent).
Removing the block removes the layer's computation; the layer keeps its place (and its norm becomes an
:class:`~prunekit.models.zero_blocks.IdentityNorm`: the block casts its input to the norm weight's dtype).

**Cache.** ``generate`` builds a linear-attention cache layer for a Mamba2 layer, a KV layer for attention
and a dummy layer (no length) for MLP and MoE. Slot 0 numbers positions, so a removed layer-0 Mamba2 is a
:class:`~prunekit.models.zero_blocks.ZeroLinearMixer` (it keeps counting), and an export never starts with a
feed-forward layer: when the kept layers would, the removed layer 0 is written first as a zero mixer
(:meth:`~prunekit.models.adapter.ModelAdapter.cache_layers`; so is the first attention layer when none is kept,
since the model sizes its causal mask from one).

**Width** is refused: a Mamba2 head's output is normalised by the gated RMS norm over its group of
``intermediate_size / n_groups`` channels, which spans several heads, so removing heads changes the
remaining heads' normalisation (no exact slice), and the MLP has no gate projection for the contract's
gated-MLP channels.
"""

from __future__ import annotations

from torch import nn

from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import ATTN, LINEAR, MLP, SOFTMAX, Block, Head, family_facts

_NORMS = ["norm", None]
_MAMBA_HEADS = ["mamba_num_heads", "n_groups"]
MIXERS = {
    "linear_attention": {"slot": ATTN, "sublayer": "mixer", "norms": _NORMS, "stub": LINEAR, "heads_config": _MAMBA_HEADS},
    "full_attention": {"slot": ATTN, "sublayer": "mixer", "norms": _NORMS, "stub": SOFTMAX, "heads_config": None},
    "moe": {"slot": MLP, "sublayer": "mixer", "norms": _NORMS, "stub": MLP, "heads_config": None},
    "mlp": {"slot": MLP, "sublayer": "mixer", "norms": _NORMS, "stub": MLP, "heads_config": None},
}


class NemotronHAdapter(ModelAdapter):
    model_type = "nemotron_h"
    facts = family_facts(attention_sublayer="mixer", attention_norms=_NORMS, mlp_sublayer="mixer", mlp_norms=_NORMS,
                         mlp_projections={"up": "up_proj", "down": "down_proj"}, layer_types_key="layers_block_type",
                         mixers=MIXERS, one_block_per_layer=True)
    width_refusal = ("Nemotron-H's Mamba2 heads share a gated RMS norm over each group of heads (group_size = "
                     "intermediate_size / n_groups), so removing heads changes the kept heads' normalisation: no exact slice")
    llama_layout_refusal = "its Mamba2 and mixture-of-experts layers have no place in it"
    hidden_resize_refusal = "the Mamba2 mixers' projections keep the full hidden size"
    layer_attributes = ("block_type",)  # the model picks each layer's mask by its block_type

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.embeddings

    def head(self) -> Head:
        return Head(self.decoder.norm_f, self.model.lm_head)

    def linear_heads(self, layer: int) -> tuple[int, int]:
        mamba = self.sublayer(Block.of(layer, ATTN))
        return int(mamba.num_heads), int(mamba.n_groups)

    def mixing_macs(self, layer: int, seq_len: int) -> float:
        """Attention's as in the contract; a Mamba2 mixer's depthwise conv (``conv_dim * kernel``) and its state
        update and read-out per token and head (``3 * head_dim * ssm_state_size``: decay, input, ``C h``)."""
        if self.mixer_kind(layer) != LINEAR:
            return super().mixing_macs(layer, seq_len)
        m = self.sublayer(Block.of(layer, ATTN))
        return float(m.conv1d.weight.numel() + 3 * m.num_heads * m.head_dim * m.ssm_state_size)

    def weight_macs(self, block: Block) -> float:
        """Linear weights once each; a MoE block's routed experts (3-D weights) scaled by the active share ``top_k / E``."""
        share = self.config.num_experts_per_tok / self.config.n_routed_experts
        return float(sum(p.numel() * (share if p.dim() == 3 else 1.0) for m in self.sublayer(block).modules()
                         for p in ([m.weight] if isinstance(m, nn.Linear) else [p for p in m.parameters(recurse=False) if p.dim() == 3])))

    def mlp_width(self, layer: int) -> int:
        """Channels of ``layer``'s MLP (``up_proj`` rows), or of each routed expert of its MoE (``up_proj [E, I, H]``)."""
        m = self.sublayer(Block.of(layer, MLP))
        experts = getattr(m, "experts", None)
        return int(experts.up_proj.shape[1]) if experts is not None else int(m.up_proj.out_features)

    def linear_modules(self, block: Block) -> list[nn.Module]:
        """The Linear layers LoRA adapts; peft refuses a Mamba mixer's ``out_proj`` (and its conv)."""
        mods = super().linear_modules(block)
        if block.kind == ATTN and self.mixer_kind(block.layer) == LINEAR:
            out = self.sublayer(block).out_proj
            mods = [m for m in mods if m is not out]
        return mods

    def kept_layers_config(self, sources: list[int]) -> dict:
        """``layers_block_type`` of the kept layers (``num_hidden_layers`` is its length)."""
        return {"layers_block_type": [self.config.layers_block_type[i] for i in sources]}
