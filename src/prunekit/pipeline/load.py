"""From any model spec to a :class:`~prunekit.models.loading.LoadedModel`.

A spec is what a user types: the embedded ``smollm2-135m``, a checkpoint directory, a ``.gguf``
file, a hub id (all base models: :func:`prunekit.models.loading.load_base_model`), a prunekit output
directory (``plan.json`` inside: :func:`prunekit.plan.apply.load_pruned`) or an export that only
prunekit's readers load (:func:`prunekit.export.load_export.load_export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.export.load_export import export_kind, load_export
from prunekit.models.loading import LoadedModel, check_device, default_device, load_base_model, resolve_dtype
from prunekit.plan.apply import load_pruned


def load_model(spec: str, dtype: str | torch.dtype = "float32", device: str | None = None, stored: bool = False,
               device_map: str | dict | None = None) -> LoadedModel:
    """Load ``spec`` (see the module docstring) onto ``device`` (default: cuda if available).

    ``stored``: a base model kept in its checkpoint's dtype, memory-mapped, for sequential onloading
    (:func:`prunekit.models.loading.load_base_model`); ``device_map``: a base model split over devices
    by accelerate (``auto`` or ``{module: device}``). Pruned outputs and exports are refused with either.
    """
    path = Path(os.path.expanduser(str(spec)))
    pruned = (path.is_dir() and (path / "plan.json").exists()) or export_kind(path)
    for flag, given in (("max_memory", stored), ("device_map", device_map is not None)):
        if given and pruned:
            raise PrunekitError(f"`{flag}` applies to base checkpoints; '{spec}' is a pruned output or an export.",
                                f"Run it without `{flag}`, or give the base checkpoint.")
    if path.is_dir() and (path / "plan.json").exists():
        torch_dtype = resolve_dtype(dtype)
        return load_pruned(path, dtype=torch_dtype, device=str(check_device(device or default_device(), torch_dtype)))
    if export_kind(path):  # a per-layer hf, nemotron-nas or gguf export written by prunekit
        torch_dtype = resolve_dtype(dtype)
        return load_export(path, dtype=torch_dtype, device=str(check_device(device or default_device(), torch_dtype)))
    return load_base_model(spec, dtype=dtype, device=device, stored=stored, device_map=device_map)


def as_loaded(model: str | LoadedModel, dtype: str = "float32", device: str | None = None, stored: bool = False,
              device_map: str | dict | None = None) -> LoadedModel:
    """``model`` itself when it is already loaded (a ``device_map`` is refused then: the model runs where
    its weights are), else :func:`load_model` of the spec."""
    if isinstance(model, LoadedModel):
        if device_map is not None:
            raise PrunekitError("`device_map` places a checkpoint as it is loaded; this model is already in memory.",
                                "Give the checkpoint's path, or drop `device_map` (the engine runs each block where its weights are).")
        return model
    return load_model(model, dtype=dtype, device=device, stored=stored, device_map=device_map)
