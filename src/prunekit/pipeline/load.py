"""From any model spec to a :class:`~prunekit.models.loading.LoadedModel`.

A spec is what a user types: the embedded ``smollm2-135m``, a checkpoint directory, a ``.gguf``
file, a hub id (all base models: :func:`prunekit.models.loading.load_base_model`), a prunekit output
directory (``plan.json`` inside: :func:`prunekit.plan.apply.load_pruned`) or an export that only
prunekit's readers load (:func:`prunekit.export.readers.load_export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.export.reading import export_kind, load_export
from prunekit.models.loading import LoadedModel, check_device, default_device, load_base_model, resolve_dtype
from prunekit.plan.apply import load_pruned


def load_model(spec: str, dtype: str | torch.dtype = "float32", device: str | None = None, stored: bool = False) -> LoadedModel:
    """Load ``spec`` (see the module docstring) onto ``device`` (default: cuda if available).

    ``stored``: a base model kept in its checkpoint's dtype, memory-mapped, for sequential onloading
    (:func:`prunekit.models.loading.load_base_model`); pruned outputs and exports are refused then.
    """
    path = Path(os.path.expanduser(str(spec)))
    if stored and ((path.is_dir() and (path / "plan.json").exists()) or export_kind(path)):
        raise PrunekitError(f"`max_memory` applies to base checkpoints; '{spec}' is a pruned output or an export.",
                            "Prune it without `max_memory`, or give the base checkpoint.")
    if path.is_dir() and (path / "plan.json").exists():
        torch_dtype = resolve_dtype(dtype)
        return load_pruned(path, dtype=torch_dtype, device=str(check_device(device or default_device(), torch_dtype)))
    if export_kind(path):  # a per-layer hf, nemotron-nas or gguf export written by prunekit
        torch_dtype = resolve_dtype(dtype)
        return load_export(path, dtype=torch_dtype, device=str(check_device(device or default_device(), torch_dtype)))
    return load_base_model(spec, dtype=dtype, device=device, stored=stored)


def as_loaded(model: str | LoadedModel, dtype: str = "float32", device: str | None = None, stored: bool = False) -> LoadedModel:
    """``model`` itself when it is already loaded, else :func:`load_model` of the spec."""
    return model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device, stored=stored)
