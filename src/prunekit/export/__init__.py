"""Exports of pruned models that standard tools load: ``hf``, ``nemotron-nas``, ``gguf``.

Every exporter reads the pruned model's per-layer geometry through the adapter (``layout.py``),
so it works for any pruning (blocks, whole layers, widths) without knowing how it was made, and
re-reads what it wrote to check the logits before it returns.

- ``hf``: ``export/hf.py`` (stock config when expressible, else per-layer config + ``modeling_pruned.py``);
- ``nemotron-nas``: ``export/nemotron_nas.py`` (DeciLM block configs; vLLM serves it);
- ``gguf``: ``export/gguf_write.py`` (llama.cpp's per-layer ``deci`` architecture; read back by ``gguf_read.py``).
"""

from __future__ import annotations

from pathlib import Path

from prunekit.core.errors import check_choice
from prunekit.export.gguf_write import export_gguf
from prunekit.export.hf import export_hf
from prunekit.export.nemotron_nas import export_nemotron_nas
from prunekit.models.loading import LoadedModel

FORMATS = ("hf", "nemotron-nas", "gguf")


def export(model: LoadedModel, fmt: str, to: str | Path, *, overwrite: bool = False, gguf_type: str = "f16",
           verify: bool = True) -> dict:
    """Export a loaded (pruned) model to ``to`` (:func:`prunekit.pipeline.load.load_model` loads any spec).

    Returns a summary dict (``format``, ``path``, layers, parameters, ``max_logit_diff`` of the
    re-read export against the in-memory model when ``verify``).
    """
    check_choice("`format`", fmt, FORMATS)
    if fmt == "hf":
        return export_hf(model, to, overwrite=overwrite, verify=verify)
    if fmt == "nemotron-nas":
        return export_nemotron_nas(model, to, overwrite=overwrite, verify=verify)
    return export_gguf(model, to, overwrite=overwrite, gguf_type=gguf_type, verify=verify)


__all__ = ["FORMATS", "export"]
