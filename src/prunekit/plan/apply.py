"""Apply a plan to a model, save the pruned model, load it back.

``apply_plan`` is the only function that mutates a model. A pruned output directory holds
``plan.json``, ``config.json`` (the base model's config), ``model.safetensors`` (only the weights
that are kept), the tokenizer and, for a patched depth plan, the patch's matrices (``patch.safetensors``,
:mod:`prunekit.plan.patch`); :func:`load_pruned` rebuilds the base architecture without allocating its
weights, applies the plan's structure and loads the kept weights (the patch already folded into them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunekit.core.errors import PrunekitError
from prunekit.core.io import atomic_dir, check_disk_space, weights_hash, write_json_atomic
from prunekit.models.adapter import ModelAdapter, embedding_keys
from prunekit.models.contract import Block
from prunekit.models.loading import LoadedModel, check_device, resolve_dtype
from prunekit.models.registry import get_adapter
from prunekit.plan.patch import encode_patch, fold_patch, read_patch
from prunekit.plan.schema import read_plan, removed_blocks, validate_plan
from prunekit.plan.slicing import apply_width

GEOMETRY = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size")


def check_plan_matches(model: torch.nn.Module, plan: dict, check_weights: bool = True, dtype: torch.dtype | None = None) -> None:
    """Refuse a plan made for another model: geometry first, then the weights hash (of the weights as
    converted to ``dtype`` when given: a model held in its checkpoint's dtype under a memory cap; else
    to the plan's ``weights_dtype``, so a plan searched in bfloat16 applies to the float32 model it was
    cast from)."""
    if dtype is None and plan["model"].get("weights_dtype"):
        dtype = resolve_dtype(plan["model"]["weights_dtype"])
    config = model.config.to_dict()
    for key in GEOMETRY:
        want, have = plan["model"]["config"].get(key), config.get(key)
        if want != have:
            raise PrunekitError(
                f"the plan was made for another model: {key} is {want} in the plan, {have} in this model.",
                "Apply the plan to the model it was made from (plan.model.spec).",
            )
    if check_weights and plan["model"].get("weights_sha256"):
        if weights_hash(model, dtype) != plan["model"]["weights_sha256"]:
            raise PrunekitError(
                "the plan was made for another model: the weights hash differs (same geometry, other weights).",
                "Apply the plan to the model it was made from (plan.model.spec).",
            )


def apply_plan(model: torch.nn.Module, plan: dict, check: bool = True, dtype: torch.dtype | None = None, *,
               patch: dict[str, torch.Tensor] | None = None) -> ModelAdapter:
    """Prune ``model`` in place as ``plan`` says (blocks removed, widths sliced, a linear patch folded); return its adapter.

    ``dtype``: the weights hash is checked as of the weights converted to it (see :func:`check_plan_matches`).
    ``patch``: the matrices of the plan's linear patch (:func:`prunekit.plan.patch.read_patch`), required when the
    plan carries one."""
    validate_plan(plan)
    if check:
        check_plan_matches(model, plan, dtype=dtype)
    adapter = get_adapter(model)
    for b in removed_blocks(plan):
        if b >= adapter.num_blocks:
            raise PrunekitError(f"the plan removes block {b}, but the model has {adapter.num_blocks}.", "Use the plan with its own model.")
        adapter.remove_block(Block(b))
    if plan.get("width"):
        apply_width(adapter, plan["width"])
    if plan.get("patch"):
        if patch is None:
            raise PrunekitError(f"the plan carries a linear patch ({plan['patch']['file']}) whose matrices were not given.",
                                "Pass its matrices, read_patch(the plan's path, plan), as patch; or load the output directory prune wrote.")
        fold_patch(adapter, plan["patch"], patch)
    return adapter


def save_pruned(loaded: LoadedModel, plan: dict, out: str | Path, *, overwrite: bool = False,
                extra_files: dict | None = None, copy_files: list[Path] | None = None,
                patch: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the pruned model (kept weights only), its plan, config and tokenizer to ``out`` atomically.

    ``extra_files``: name -> JSON data written beside; ``copy_files``: files copied in (the journal);
    ``patch``: the matrices of the plan's linear patch (default: those ``loaded`` was read with), written beside
    the plan under the name and sha256 it records.
    """
    patch_bytes = None
    if plan.get("patch"):
        patch = patch if patch is not None else loaded.info.get("patch")
        if patch is None:
            raise PrunekitError("the plan carries a linear patch whose matrices were not given.", "Pass `patch` to save_pruned.")
        patch_bytes, digest = encode_patch(patch)
        if digest != plan["patch"]["sha256"]:
            raise PrunekitError("the linear patch given is not the one the plan records (sha256 differs).",
                                "Save the plan with the matrices it was fitted with.")
    model = loaded.model
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) + (64 << 20)
    check_disk_space(Path(out).parent if not Path(out).exists() else Path(out), needed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / "plan.json", plan)
        if patch_bytes is not None:
            (tmp / plan["patch"]["file"]).write_bytes(patch_bytes)
        (tmp / "config.json").write_text(json.dumps(plan["model"]["config"], indent=2, sort_keys=True) + "\n")
        save_model(model, str(tmp / "model.safetensors"))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            write_json_atomic(tmp / name, data)
        for path in copy_files or []:
            shutil.copy2(path, tmp / Path(path).name)
    return Path(out)


def load_pruned(out: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu") -> LoadedModel:
    """Rebuild a pruned model written by :func:`save_pruned`."""
    out = Path(out)
    plan = read_plan(out / "plan.json")
    torch_dtype = resolve_dtype(dtype)
    dev = check_device(device, torch_dtype)
    cfg = dict(plan["model"]["config"])
    config = AutoConfig.for_model(**cfg)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    patch = read_patch(out, plan)
    apply_plan(model, plan, check=False, patch=patch)  # the structure (on meta weights); the weights come next
    try:
        state = load_file(str(out / "model.safetensors"))
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise PrunekitError(
            f"could not read the weights in '{out / 'model.safetensors'}' ({e}): missing, corrupted or truncated.",
            "Re-run the pruning (or restore the file).",
        ) from None
    head_key, embed_key = embedding_keys(model)
    if getattr(config, "tie_word_embeddings", False) and head_key not in state:
        state[head_key] = state[embed_key]
    elif getattr(config, "tie_word_embeddings", False) and embed_key not in state and head_key in state:
        # safetensors' save_model keeps one name of a tied pair (the first in sorted order: the head's)
        state[embed_key] = state[head_key]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise PrunekitError(
            f"the weights in '{out}' do not match its plan (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            "Re-run the pruning; the directory was modified by hand.",
        )
    if getattr(config, "tie_word_embeddings", False):
        adapter = get_adapter(model)
        adapter.lm_head.weight = adapter.embed.weight
    model.to(device=dev, dtype=torch_dtype).eval()
    tokenizer = None
    if (out / "tokenizer_config.json").exists() or (out / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(out)
    info = {"source": "pruned", "plan": plan} | ({"patch": patch} if patch is not None else {})
    return LoadedModel(model, tokenizer, get_adapter(model), str(out), info)
