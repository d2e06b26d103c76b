"""prunekit's own readers of its exports: back to an in-memory pruned model with an adapter.

A per-layer ``hf`` export (``model_type`` ``prunekit_<family>``), a ``nemotron-nas`` directory and a
``deci`` GGUF written by prunekit are each rebuilt as the base family's stock transformers model
with prunekit's in-memory pruning (removed blocks as zero modules, per-layer widths as resized
projections), so every prunekit command (eval, bench, info, export) works on them. Stock-layout
``hf`` exports need no reader: ``load_model`` loads them as any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import PrunekitError
from ..models.adapter import ZeroAttention, ZeroMLP
from ..models.loading import LoadedModel, check_device, resolve_dtype
from ..models.registry import get_adapter

PER_LAYER_KEYS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_size")  # modeling_pruned's
CONFIG_DROP = ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "dtype",
               "torch_dtype", "block_configs", "prunekit_width", *PER_LAYER_KEYS)


def export_kind(path: str | Path) -> str | None:
    """'hf-per-layer', 'nemotron-nas' or 'gguf' when ``path`` is an export only prunekit's reader loads."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from .gguf import is_prunekit_gguf

        return "gguf" if is_prunekit_gguf(path) else None
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return None
    try:
        model_type = json.loads(cfg.read_text()).get("model_type", "")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if model_type == "nemotron-nas":
        return "nemotron-nas"
    if model_type.startswith("prunekit_"):
        return "hf-per-layer"
    return None


def build_pruned_model(
    family: str, base_config: dict, heads: list[int], kv_heads: list[int], inter: list[int], head_dim: int,
    state: dict[str, torch.Tensor],
) -> torch.nn.Module:
    """The family's stock model with per-layer geometry, holding ``state`` (float32, on the CPU)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling_pruned import apply_per_layer_geometry

    cfg = {k: v for k, v in base_config.items() if k not in CONFIG_DROP}
    cfg |= {"num_hidden_layers": len(heads), "head_dim": head_dim}
    # Layouts without these global fields (nemotron-nas): take them from the first layer that has the block.
    cfg.setdefault("num_key_value_heads", next((k for k in kv_heads if k), cfg.get("num_attention_heads")))
    cfg.setdefault("intermediate_size", next((n for n in inter if n), 1))
    config = AutoConfig.for_model(family, **cfg)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    apply_per_layer_geometry(model, heads, kv_heads, inter, head_dim, zero_attention=ZeroAttention, zero_mlp=ZeroMLP)
    tied = getattr(config, "tie_word_embeddings", False)
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise PrunekitError(
            f"the weights do not match the export's config (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            "Re-export the model; the directory was modified or truncated.",
        )
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def load_export(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu") -> LoadedModel:
    """Rebuild an export (see :func:`export_kind`) as a pruned in-memory model with its adapter."""
    path = Path(path)
    kind = export_kind(path)
    torch_dtype = resolve_dtype(dtype)
    dev = check_device(device, torch_dtype)
    tokenizer = None
    if kind == "gguf":
        from .gguf import read_gguf

        family, config, (heads, kv, inter, head_dim), state = read_gguf(path)
    elif kind in ("hf-per-layer", "nemotron-nas"):
        config = json.loads((path / "config.json").read_text())
        if kind == "nemotron-nas":
            from .nemotron_nas import nas_geometry

            family = "llama"
            heads, kv, inter, head_dim = nas_geometry(config)
        else:
            family = config["model_type"].removeprefix("prunekit_")
            heads, kv, inter = (config[k] for k in PER_LAYER_KEYS)
            head_dim = config["head_dim"]
        state = _read_safetensors(path)
        if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
            from transformers import AutoTokenizer
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about its model_type
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never prompt
            finally:
                hf_logging.set_verbosity(level)
    else:
        raise PrunekitError(f"'{path}' is not a prunekit export (per-layer hf, nemotron-nas or gguf).", "Give an export path.")
    model = build_pruned_model(family, config, heads, kv, inter, head_dim, state)
    model.to(device=dev, dtype=torch_dtype)
    return LoadedModel(model, tokenizer, get_adapter(model), str(path), {"source": f"export:{kind}"})


def model_logits(model: torch.nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    """float32 CPU logits of ``model`` on ``ids`` (default: 16 fixed token ids)."""
    if ids is None:
        ids = torch.arange(1, 17).remainder(model.config.vocab_size).unsqueeze(0)
    with torch.inference_mode():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def logits_gap(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor | None = None) -> float:
    """max |logits_a - logits_b| on ``ids`` (default: 16 fixed token ids), in float32."""
    return (model_logits(a, ids) - model_logits(b, ids)).abs().max().item()
