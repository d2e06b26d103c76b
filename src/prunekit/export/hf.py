"""Export a pruned model as a Hugging Face directory that ``AutoModelForCausalLM`` loads.

Two layouts, chosen by what the pruning needs:

- **stock**: when every kept layer has both blocks at one geometry (whole layers removed, uniform
  widths), the base family's own config with ``num_hidden_layers`` (and, if widths changed,
  ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size`` / ``head_dim``)
  rewritten. No custom code, no ``auto_map``; every tool that reads the family reads it.
- **per-layer**: otherwise, a config of ``model_type`` ``prunekit_<family>`` with per-layer lists
  (``layer_num_attention_heads``, ``layer_num_key_value_heads``, ``layer_intermediate_size``; 0 =
  block absent) and the family's facts (``prunekit_family_facts``: the adapter's own declaration of
  the layer's modules), and ``modeling_pruned.py`` with ``zero_blocks.py`` (``prunekit/models/``, copied
  by ``save_pretrained``), loaded with ``trust_remote_code=True``.

Either way the directory gets a model card (``README.md``, :mod:`prunekit.export.model_card`), and the
written directory is re-loaded and its logits compared with the in-memory model's before the export is
declared done (``verify``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM

from prunekit.core.errors import PrunekitError
from prunekit.core.io import atomic_dir, check_disk_space
from prunekit.export.layout import ModelLayout, model_layout, renumbered_state_dict
from prunekit.export.model_card import CARD, model_card
from prunekit.models.adapter import embedding_keys
from prunekit.models.loading import LoadedModel
from prunekit.models.modeling_pruned import FACTS_KEY, FAMILIES, PER_LAYER_KEYS, SHARED_KEY

CONFIG_DROP = ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "dtype",
               "torch_dtype", FACTS_KEY, SHARED_KEY, *PER_LAYER_KEYS)
VERIFY_TOL = 1e-4

try:  # transformers 5 validates configs through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError as _ConfigInvalid
except ImportError:  # pragma: no cover
    _ConfigInvalid = ValueError


def _base_kwargs(layout: ModelLayout) -> dict:
    cfg = {k: v for k, v in layout.config.items() if k not in CONFIG_DROP}
    cfg["num_hidden_layers"] = len(layout.layers)
    cfg["head_dim"] = layout.head_dim
    return cfg | layout.kept_config


def stock_config(model_type: str, layout: ModelLayout):
    """The family's own config for this layout, or None when the stock config cannot express it."""
    if not layout.layers or not layout.uniform:
        return None
    g = layout.layers[0]
    cfg = _base_kwargs(layout)
    if layout.width_pruned:
        cfg |= {"num_attention_heads": g.num_heads, "num_key_value_heads": g.num_kv_heads, "intermediate_size": g.intermediate_size}
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError, _ConfigInvalid):  # e.g. hidden_size not a multiple of the new head count
        return None


def per_layer_config(model_type: str, layout: ModelLayout, facts: dict):
    """The ``prunekit_<family>`` config with per-layer lists and the family's ``facts`` (see modeling_pruned.py)."""
    if model_type not in FAMILIES:
        raise PrunekitError(
            f"the hf export with per-layer geometry has no modeling class for model_type '{model_type}'.",
            f"Supported: {', '.join(sorted(FAMILIES))}.",
        )
    config_cls, _ = FAMILIES[model_type]
    if not layout.layers:
        raise PrunekitError("every block of the model is removed: there is nothing to export.", "Prune less.")
    cfg = _base_kwargs(layout) | layout.lists() | {FACTS_KEY: facts}
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        # Hidden channels were pruned: the config's own head counts only seed the layers (each is
        # then sized from the lists), so give it counts that the config's validation accepts.
        cfg["num_attention_heads"] = cfg["num_key_value_heads"] = 1
    return config_cls(**cfg)


def _empty_model(config, cls=None) -> torch.nn.Module:
    with init_empty_weights(include_buffers=False):
        return cls(config) if cls is not None else AutoModelForCausalLM.from_config(config)


def _shapes_match(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    tied = getattr(model.config, "tie_word_embeddings", False)
    head_key, _ = embedding_keys(model)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not (tied and k == head_key)}
    theirs = {k: tuple(v.shape) for k, v in state.items() if not (tied and k == head_key)}
    return own == theirs


def build_export_model(loaded: LoadedModel) -> tuple[torch.nn.Module, str]:
    """The export model (stock or per-layer class) holding the pruned model's tensors, and its layout name."""
    layout = model_layout(loaded.adapter)
    model_type = loaded.model.config.model_type
    refusal = loaded.adapter.hidden_resize_refusal
    if refusal and layout.config["hidden_size"] != loaded.model.config.hidden_size:
        raise PrunekitError(f"the hf export cannot hold this model's pruned hidden channels: {refusal}.",
                            "Prune with the block strategy (heads and MLP channels) to export it, or keep the pruned output.")
    state = renumbered_state_dict(loaded.adapter, layout)
    kind = "stock"
    config = stock_config(model_type, layout) if loaded.adapter.stock_width or not layout.width_pruned else None
    target = _empty_model(config) if config is not None else None
    if target is None or not _shapes_match(target, state):
        kind = "per-layer"
        config = per_layer_config(model_type, layout, loaded.adapter.facts)
        target = _empty_model(config, FAMILIES[model_type][1])
    missing, unexpected = target.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == embedding_keys(target)[0] and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:  # pragma: no cover - a layout bug, not user input
        raise RuntimeError(f"export layout mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if getattr(config, "tie_word_embeddings", False):
        target.tie_weights()
    target.generation_config = copy.deepcopy(loaded.model.generation_config)
    return target.eval(), kind


def _register(model: torch.nn.Module) -> None:
    """Make ``save_pretrained`` copy modeling_pruned.py (and zero_blocks.py, which it imports relatively) and write
    ``auto_map`` (AutoConfig + AutoModelForCausalLM)."""
    type(model.config).register_for_auto_class()
    type(model).register_for_auto_class("AutoModelForCausalLM")


def verify_hf_dir(path: Path, reference: torch.nn.Module, trust_remote_code: bool, tol: float = VERIFY_TOL) -> float:
    """Reload ``path`` with transformers and return the max |logit difference| against ``reference``."""
    loaded = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=reference.dtype)
    loaded.eval()
    vocab = reference.config.vocab_size
    ids = torch.arange(1, 17, device=reference.device).remainder(vocab).unsqueeze(0)
    with torch.inference_mode():
        want = reference(input_ids=ids).logits.float()
        got = loaded.to(reference.device)(input_ids=ids).logits.float()
    diff = (want - got).abs().max().item()
    if not diff <= tol:
        raise PrunekitError(
            f"the hf export in '{path}' reloads with logits {diff:.3g} away from the pruned model (tolerance {tol}).",
            "Report this as a prunekit bug, with the plan.json.",
        )
    return diff


def export_hf(loaded: LoadedModel, to: str | Path, *, overwrite: bool = False, verify: bool = True) -> dict:
    """Write ``to`` (config, safetensors, tokenizer, generation config, README.md model card; modeling_pruned.py
    and zero_blocks.py for the per-layer layout)."""
    to = Path(to)
    model, kind = build_export_model(loaded)
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) + (64 << 20)
    check_disk_space(to.parent if not to.exists() else to, needed)
    if kind == "per-layer":
        _register(model)
    parameters = sum(p.numel() for p in model.parameters())
    card = model_card(loaded, model_layout(loaded.adapter), kind=kind, parameters=parameters, name=to.name)
    with atomic_dir(to, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        (tmp / CARD).write_text(card, encoding="utf-8")
    diff = verify_hf_dir(to, loaded.model, trust_remote_code=(kind == "per-layer")) if verify else None
    return {
        "format": "hf", "path": str(to), "layout": kind, "model_type": model.config.model_type,
        "layers": model.config.num_hidden_layers, "parameters": parameters,
        "trust_remote_code": kind == "per-layer", "max_logit_diff": diff,
    }
