"""Qwen3-Next (``qwen3_next``): Gated DeltaNet and gated-attention layers, each with a sparse MoE (or a dense MLP).

The mixers, their cache slots and their width structures are described in ``_hybrid.py``; Qwen3-Next's Gated
DeltaNet fuses its input projections per key head (``in_proj_qkvz`` = ``[q_g | k_g | v_g | z_g]``, ``in_proj_ba``
= ``[b_g | a_g]`` for key head ``g``), while its conv keeps the ``[q | k | v]`` order. The feed-forward block is
Qwen-MoE's (``_moe.py``): a layer is sparse unless it is in ``mlp_only_layers`` or off the
``decoder_sparse_step`` (both by index, so exports that drop layers write an explicit ``mlp_only_layers``); the
routed experts' channels are pruned per expert (every expert of a layer to one count, a multiple of 8), the shared
expert and its per-token gate are kept.
"""

from prunekit.models.families._hybrid import GatedDeltaNetAdapter, _qwen_facts
from prunekit.models.families._moe import _QwenMoeAdapter


class Qwen3NextAdapter(GatedDeltaNetAdapter, _QwenMoeAdapter):
    model_type = "qwen3_next"
    facts = _qwen_facts(routed_experts={"module": "experts", "gate_up": "gate_up_proj", "down": "down_proj"})
    grouped_projections = True
