"""Reading a GGUF file that prunekit wrote (``deci``, with its source config) back into a model's parts.

:func:`is_prunekit_gguf` tells such a file from any other GGUF; :func:`read_gguf` returns the base config,
the per-layer geometry and the Hugging Face-named state dict, with the q/k rows un-permuted and the zero
stand-ins of the writer (:mod:`prunekit.export.gguf_write`) removed. A file that the gguf package cannot
parse (truncated, corrupted) is one :class:`PrunekitError` (:func:`prunekit.models.loading.gguf_reader`).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from prunekit.core.errors import PrunekitError
from prunekit.export.llama_layout import llama_state
from prunekit.export.rebuild import Geometry
from prunekit.models.loading import UNREADABLE, gguf_reader

ARCH = "deci"
SOURCE_KEY = "prunekit.source_config"
# width of the all-zero feed-forward written for a layer that keeps its attention and lost its MLP
# (llama.cpp's deci skips a layer of feed_forward_length 0 whole)
ZERO_FFN_WIDTH = 32


def is_prunekit_gguf(path: str | Path) -> bool:
    """True for a ``deci`` GGUF that carries prunekit's source config (False for any other file, readable or not)."""
    try:
        reader = gguf.GGUFReader(str(path))
    except UNREADABLE:
        return False
    return SOURCE_KEY in reader.fields and reader.fields["general.architecture"].contents() == ARCH


def read_gguf(path: str | Path) -> tuple[str, dict, Geometry, dict[str, torch.Tensor]]:
    """(family, base config, per-layer geometry, HF-named state dict) of a prunekit deci GGUF.

    Undoes the q/k permutation and drops the zero stand-ins (all-zero feed-forwards for removed MLPs,
    the zero "linear attention" of a layer 0 without attention).
    """
    reader = gguf_reader(path)
    fields = reader.fields
    if SOURCE_KEY not in fields:
        raise PrunekitError(f"'{path}' was not written by prunekit (no {SOURCE_KEY}).",
                            "Load it with llama.cpp, or give a prunekit export.")
    config = json.loads(fields[SOURCE_KEY].contents())
    heads = [int(x) for x in fields[f"{ARCH}.attention.head_count"].contents()]
    kv = [int(x) for x in fields[f"{ARCH}.attention.head_count_kv"].contents()]
    ffn = [int(x) for x in fields[f"{ARCH}.feed_forward_length"].contents()]
    head_dim = int(fields[f"{ARCH}.attention.key_length"].contents())
    arrays: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        data = np.array(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        arrays[t.name] = data.astype(np.float32).reshape([int(x) for x in reversed(t.shape.tolist())])
    for k in range(len(heads)):
        wo = arrays.get(f"blk.{k}.attn_output.weight")
        if heads[k] > 0 and kv[k] == 0 and wo is not None and not np.any(wo):  # zero "linear attention"
            heads[k] = 0
            for short in ("attn_norm", "attn_output"):
                arrays.pop(f"blk.{k}.{short}.weight")
    inter = []
    for k, width in enumerate(ffn):
        down = arrays.get(f"blk.{k}.ffn_down.weight")
        zero = width == ZERO_FFN_WIDTH and down is not None and not np.any(down) and not np.any(arrays[f"blk.{k}.ffn_up.weight"])
        if zero:
            for short in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
                arrays.pop(f"blk.{k}.{short}.weight")
        inter.append(0 if zero else width)
    return config["model_type"], config, Geometry(heads, kv, inter, head_dim), llama_state(arrays, heads, kv)
