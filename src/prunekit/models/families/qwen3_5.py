"""Qwen3.5 (text, ``qwen3_5_text``): Gated DeltaNet and gated-attention layers, each with a dense MLP.

The layer, its cache slots and its width structures are described in ``_hybrid.py``; Qwen3.5's Gated
DeltaNet keeps its input projections split (``in_proj_qkv`` = ``[q | k | v]``, ``in_proj_z``,
``in_proj_b``, ``in_proj_a``). Exports after blocks are removed or widths sliced rebuild each linear
mixer from the kept layer's own head counts (``heads_config``: ``linear_num_value_heads``,
``linear_num_key_heads``).
"""

from prunekit.models.families._hybrid import GatedDeltaNetAdapter


class Qwen3_5TextAdapter(GatedDeltaNetAdapter):
    model_type = "qwen3_5_text"
