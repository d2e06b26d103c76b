"""Reading prunekit's own exports back: which format a path holds (:func:`export_kind`) and the
pruned in-memory model it rebuilds to (:func:`load_export`), so every command works on exports too.

A per-layer ``hf`` export (``model_type`` ``prunekit_<family>``), a ``nemotron-nas`` directory and a
``deci`` GGUF written by prunekit are each rebuilt as the base family's stock transformers model
(:func:`prunekit.export.rebuild.build_pruned_model`). Stock-layout ``hf`` exports need no reader:
they load as any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, PretrainedConfig
from transformers.utils import logging as hf_logging

from prunekit.core.errors import PrunekitError
from prunekit.export.gguf_read import is_prunekit_gguf, read_gguf
from prunekit.export.nemotron_nas import nas_geometry
from prunekit.export.rebuild import Geometry, build_pruned_model, read_safetensors
from prunekit.models.loading import LoadedModel, check_device, resolve_dtype
from prunekit.models.modeling_pruned import PER_LAYER_KEYS, SHARED_KEY
from prunekit.models.registry import get_adapter


def export_kind(path: str | Path) -> str | None:
    """'hf-per-layer', 'nemotron-nas' or 'gguf' when ``path`` is an export only prunekit's reader loads."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
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


def load_export(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu") -> LoadedModel:
    """Rebuild an export (see :func:`export_kind`) as a pruned in-memory model with its adapter."""
    path = Path(path)
    kind = export_kind(path)
    torch_dtype = resolve_dtype(dtype)
    dev = check_device(device, torch_dtype)
    tokenizer = None
    if kind == "gguf":
        family, config, geometry, state = read_gguf(path)
    elif kind in ("hf-per-layer", "nemotron-nas"):
        config = PretrainedConfig._decode_special_floats(json.loads((path / "config.json").read_text()))  # e.g. Infinity
        if kind == "nemotron-nas":
            family = "llama"
            geometry = nas_geometry(config)
        else:
            family = config["model_type"].removeprefix("prunekit_")
            geometry = Geometry(*(config[k] for k in PER_LAYER_KEYS), config["head_dim"], config.get(SHARED_KEY))
        state = read_safetensors(path)
        if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about its model_type
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never prompt
            finally:
                hf_logging.set_verbosity(level)
    else:
        raise PrunekitError(f"'{path}' is not a prunekit export (per-layer hf, nemotron-nas or gguf).", "Give an export path.")
    model = build_pruned_model(family, config, geometry, state)
    model.to(device=dev, dtype=torch_dtype)
    return LoadedModel(model, tokenizer, get_adapter(model), str(path), {"source": f"export:{kind}"})
