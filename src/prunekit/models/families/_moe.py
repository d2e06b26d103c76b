"""Sparse mixture-of-experts families: Mixtral, Qwen2-MoE, Qwen3-MoE.

Checked against transformers' ``modeling_mixtral.py``, ``modeling_qwen2_moe.py`` and
``modeling_qwen3_moe.py`` (5.24). The decoder layer is Llama's, and the MLP block is the sparse
MoE block (a router and the experts, whose weights are 3-D Parameters ``gate_up_proj`` ``[E, 2I,
H]`` and ``down_proj`` ``[E, H, I]``; Qwen2-MoE adds a gated shared expert): the block returns
one tensor, so it runs and is removed like any MLP block.

Qwen2/3-MoE choose which layers are sparse by index: layer ``i`` is sparse when ``i`` is not in
``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``. Blocks removed in memory keep
their modules' places, so nothing changes there; an export that drops whole layers renumbers
them, so :meth:`kept_layers_config` records the kept layers' kinds as an explicit
``mlp_only_layers`` with ``decoder_sparse_step`` 1.

LLM-Pruner prunes each routed expert's channels as its own family (:meth:`experts`: channel ``j``
of expert ``e`` = rows ``j`` and ``I + j`` of ``gate_up_proj[e]``, column ``j`` of
``down_proj[e]``); the experts of a layer share one 3-D tensor, so every expert of a layer keeps
the same number of channels (the uniform strategy gives them that). Global ranking and the
hidden-channel strategy are refused; Qwen2-MoE's shared expert is not pruned.
"""

from __future__ import annotations

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import MLP, Block, ExpertProjections, MlpProjections, family_facts

MOE_OPTIONS_REFUSAL = ("llm-pruner prunes a mixture-of-experts model's experts by the same fraction in every layer and "
                       "expert (the experts of a layer share one tensor): global ranking and hidden channels are refused")


class MoeAdapter(ModelAdapter):
    """Base of the sparse-MoE families; subclasses say which layers are sparse and the experts' width."""

    facts = family_facts(routed_experts={"module": "experts", "gate_up": "gate_up_proj", "down": "down_proj"})
    width_options_refusal = MOE_OPTIONS_REFUSAL
    stock_width = False
    llama_layout_refusal = "the sparse mixture-of-experts MLP has no place in its dense layers"

    def is_sparse(self, layer: int) -> bool:
        return True

    def num_experts(self) -> int:
        return int(self.config.num_local_experts)

    def weight_macs(self, block: Block) -> float:
        """Dense weights once each; each expert's 3-D weights scaled by the active share ``top_k / E``."""
        share = self.config.num_experts_per_tok / self.num_experts()
        macs = 0.0
        for p in self.sublayer(block).parameters():
            macs += p.numel() * (share if p.dim() == 3 else 1.0)
        return macs

    def experts(self, layer: int) -> ExpertProjections | None:
        if not self.is_sparse(layer) or self.is_removed(Block.of(layer, MLP)):
            return None
        names = self.facts["routed_experts"]
        experts = getattr(self.sublayer(Block.of(layer, MLP)), names["module"])
        gate_up, down = getattr(experts, names["gate_up"]), getattr(experts, names["down"])
        if names.get("interleaved"):  # down [E, I, H]
            return ExpertProjections(experts, names["gate_up"], names["down"], gate_up.shape[0], down.shape[1],
                                     interleaved=True, gate_up_bias=names.get("gate_up_bias"))
        return ExpertProjections(experts, names["gate_up"], names["down"], gate_up.shape[0], down.shape[2])

    def sync_experts(self, layer: int) -> None:
        """Keep the experts module's width attribute true to its sliced weights."""
        ex = self.experts(layer)
        ex.module.intermediate_dim = ex.width

    def mlp(self, layer: int) -> MlpProjections:
        if self.is_sparse(layer):
            raise PrunekitError(f"layer {layer}'s MLP is a sparse MoE block; its experts are `experts({layer})`.",
                                "Report this as a prunekit bug.")
        return super().mlp(layer)

    def mlp_width(self, layer: int) -> int:
        ex = self.experts(layer)
        return ex.width if ex is not None else super().mlp_width(layer)


class MixtralAdapter(MoeAdapter):
    model_type = "mixtral"


class _QwenMoeAdapter(MoeAdapter):
    def is_sparse(self, layer: int) -> bool:
        c = self.config
        return layer not in (c.mlp_only_layers or []) and c.num_experts > 0 and (layer + 1) % c.decoder_sparse_step == 0

    def num_experts(self) -> int:
        return int(self.config.num_experts)

    def kept_layers_config(self, sources: list[int]) -> dict:
        dense = [k for k, src in enumerate(sources) if not self.is_sparse(src)]
        return super().kept_layers_config(sources) | {"mlp_only_layers": dense, "decoder_sparse_step": 1}


class Qwen2MoeAdapter(_QwenMoeAdapter):
    model_type = "qwen2_moe"


class Qwen3MoeAdapter(_QwenMoeAdapter):
    model_type = "qwen3_moe"
