"""Rebuilding an export as an in-memory pruned model: the family's stock model with per-layer geometry.

What each format's reader extracts (:func:`prunekit.export.gguf_read.read_gguf`,
:func:`prunekit.export.nemotron_nas.nas_geometry`, the lists of a per-layer hf config) — the base config
and a :class:`Geometry` — is turned into a model here by :func:`build_pruned_model`: the base family's
stock transformers model with prunekit's in-memory pruning (removed blocks as zero modules, per-layer
widths as resized projections, by ``modeling_pruned.apply_per_layer_geometry`` and the family's facts),
holding the read weights, so every prunekit command (eval, bench, info, export) works on it.
:mod:`prunekit.export.load_export` tells the formats apart and dispatches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import embedding_keys
from prunekit.models.modeling_pruned import FACTS_KEY, PER_LAYER_KEYS, SHARED_KEY, apply_per_layer_geometry
from prunekit.models.registry import ADAPTERS

CONFIG_DROP = ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "dtype",
               "torch_dtype", "block_configs", "prunekit_width", FACTS_KEY, SHARED_KEY, *PER_LAYER_KEYS)


class Geometry(NamedTuple):
    """Per-layer geometry of an export: query heads, KV heads and MLP width of each layer (0 = block absent),
    and the head size shared by all layers."""

    heads: list[int]
    kv_heads: list[int]
    inter: list[int]
    head_dim: int
    shared: list[int] | None = None  # the shared experts' widths (``modeling_pruned.SHARED_KEY``), where pruned


def build_pruned_model(family: str, base_config: dict, geometry: Geometry, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The family's stock model with per-layer ``geometry``, holding ``state`` (float32, on the CPU)."""
    if family not in ADAPTERS:
        raise PrunekitError(f"the export's model_type '{family}' is not supported.",
                            f"Supported model types: {', '.join(sorted(ADAPTERS))}.")
    heads, kv_heads, inter, head_dim = geometry.heads, geometry.kv_heads, geometry.inter, geometry.head_dim
    cfg = {k: v for k, v in base_config.items() if k not in CONFIG_DROP}
    cfg |= {"num_hidden_layers": len(heads), "head_dim": head_dim}
    # Layouts without these global fields (nemotron-nas): take them from the first layer that has the block.
    cfg.setdefault("num_key_value_heads", next((k for k in kv_heads if k), cfg.get("num_attention_heads")))
    cfg.setdefault("intermediate_size", next((n for n in inter if n), 1))
    config = AutoConfig.for_model(family, **cfg)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    apply_per_layer_geometry(model, heads, kv_heads, inter, head_dim, facts=ADAPTERS[family].facts, shared=geometry.shared)
    tied = getattr(config, "tie_word_embeddings", False)
    head_key, _ = embedding_keys(model)
    if tied:
        state = {k: v for k, v in state.items() if k != head_key}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == head_key)]
    if missing or unexpected:
        raise PrunekitError(
            f"the weights do not match the export's config (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            "Re-export the model; the directory was modified or truncated.",
        )
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model.eval()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the export's ``model.safetensors`` (or of the shards its index names)."""
    files = [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    state: dict[str, torch.Tensor] = {}
    try:
        for f in files:
            state.update(load_file(str(f)))
    except (SafetensorError, OSError) as e:
        raise PrunekitError(f"could not read the weights in '{path}' ({e}).", "Re-export the model.") from None
    return state


def model_logits(model: torch.nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    """float32 CPU logits of ``model`` on ``ids`` (default: 16 fixed token ids)."""
    if ids is None:
        ids = torch.arange(1, 17).remainder(model.config.vocab_size).unsqueeze(0)
    with torch.inference_mode():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def logits_gap(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor | None = None) -> float:
    """max |logits_a - logits_b| on ``ids`` (default: 16 fixed token ids), in float32."""
    return (model_logits(a, ids) - model_logits(b, ids)).abs().max().item()
