"""Export to the ``nemotron-nas`` layout (DeciLM / Llama-Nemotron-NAS), which vLLM serves natively.

The layout (see ``configuration_decilm.py`` for the field semantics) describes each decoder layer
by a block config: attention ``no_op`` or ``n_heads_in_group`` (query heads per KV head, with the
query head count fixed to ``num_attention_heads`` and ``head_dim = hidden_size //
num_attention_heads``), ffn ``no_op`` or ``ffn_mult`` (intermediate size
``find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)``). Weight names are Llama's.

So it expresses: blocks removed anywhere, whole layers removed, per-layer KV-head counts, and MLP
widths that are multiples of 256. It cannot express pruned query heads, other widths, biases, or
families other than Llama; those are refused with the reason (use ``--format hf`` or ``gguf``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from safetensors.torch import save_file

from prunekit.core.errors import PrunekitError
from prunekit.core.io import atomic_dir, check_disk_space
from prunekit.export.layout import ModelLayout, model_layout, renumbered_state_dict
from prunekit.export.llama_layout import llama_layout_model
from prunekit.export.rebuild import Geometry, build_pruned_model, logits_gap, read_safetensors
from prunekit.models.adapter import embedding_keys
from prunekit.models.loading import LoadedModel

FFN_MULTIPLE = 256
MODEL_TYPE = "nemotron-nas"
DROP = ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
        "num_key_value_heads", "intermediate_size", "head_dim", "num_hidden_layers", "layer_types")


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The DeciLM rule: ``int(2 * ffn_mult * hidden / 3)`` rounded up to a multiple of 256."""
    n = int(2 * ffn_mult * hidden_size / 3)
    return n if n % FFN_MULTIPLE == 0 else n + FFN_MULTIPLE - n % FFN_MULTIPLE


def intermediate_size_to_ffn_mult(size: int, hidden_size: int) -> float | None:
    """An ``ffn_mult`` that the rule maps back to ``size`` exactly, or None when none does."""
    mult = 3 * size / (2 * hidden_size)
    return mult if ffn_mult_to_intermediate_size(mult, hidden_size) == size else None


def _refuse(why: str) -> PrunekitError:
    return PrunekitError(f"the nemotron-nas layout cannot express this model: {why}.", "Use `format` hf (or gguf) instead.")


def block_configs(model_type: str, layout: ModelLayout) -> list[dict]:
    """One DeciLM block config per kept layer; raise a PrunekitError naming what cannot be expressed."""
    cfg = layout.config
    if model_type != "llama":
        raise _refuse(f"it is a Llama-family layout and this model is '{model_type}'")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise _refuse("the model has attention or MLP biases")
    if not layout.layers:
        raise _refuse("every block is removed")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if layout.head_dim * heads != hidden:
        raise _refuse(f"head_dim {layout.head_dim} x {heads} heads != hidden size {hidden}")
    out = []
    for k, g in enumerate(layout.layers):
        attn = {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None}
        if g.has_attention:
            if g.num_heads != heads:
                raise _refuse(f"layer {g.source} keeps {g.num_heads} of {heads} query heads "
                              "(the layout fixes the query heads of every layer)")
            attn = {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads // g.num_kv_heads}
        ffn = {"no_op": True, "replace_with_linear": False, "ffn_mult": None}
        if g.has_mlp:
            mult = intermediate_size_to_ffn_mult(g.intermediate_size, hidden)
            if mult is None:
                raise _refuse(
                    f"layer {g.source} has MLP width {g.intermediate_size}, and ffn_mult only gives multiples of {FFN_MULTIPLE}"
                )
            ffn = {"no_op": False, "replace_with_linear": False, "ffn_mult": mult}
        out.append({"attention": attn, "ffn": ffn})
    return out


def nas_config(loaded: LoadedModel, layout: ModelLayout, model_type: str, base: dict) -> dict:
    """config.json of the export: the base Llama config (``base``: the model's config as Llama-layout
    ``model_type`` reads it), ``block_configs``, the DeciLM names."""
    blocks = block_configs(model_type, replace(layout, config=base))
    cfg = {k: v for k, v in base.items() if k not in DROP}
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_theta") is not None:  # readers older than transformers 5 look for these
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = dict(rope)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    return cfg | {
        "architectures": ["DeciLMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"},
        "model_type": MODEL_TYPE,
        "num_hidden_layers": len(blocks),
        "block_configs": blocks,
        "torch_dtype": dtype,
    }


def nas_geometry(config: dict) -> Geometry:
    """Per-layer (query heads, KV heads, intermediate sizes) and head_dim from a nemotron-nas config.

    Follows the layout's documented semantics (module docstring), 0 meaning the block is absent.
    """
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    q, kv, inter = [], [], []
    for i, block in enumerate(config["block_configs"]):
        attn, ffn = block["attention"], block["ffn"]
        if attn.get("replace_with_linear") or ffn.get("replace_with_linear"):
            raise PrunekitError(f"block {i} of this nemotron-nas config uses replace_with_linear.",
                                "prunekit reads only no_op and full blocks.")
        if attn.get("no_op"):
            q.append(0), kv.append(0)
        else:
            q.append(heads), kv.append(heads // attn["n_heads_in_group"])
        inter.append(0 if ffn.get("no_op") else ffn_mult_to_intermediate_size(ffn["ffn_mult"], hidden))
    return Geometry(q, kv, inter, hidden // heads)


def export_nemotron_nas(loaded: LoadedModel, to: str | Path, *, overwrite: bool = False, verify: bool = True) -> dict:
    """Write ``to``: config.json (+ configuration_decilm.py), model.safetensors, tokenizer, generation config."""
    to = Path(to)
    if loaded.adapter.llama_layout_refusal:
        raise _refuse(f"{loaded.adapter.llama_layout_refusal} ('{loaded.adapter.model_type}')")
    layout = model_layout(loaded.adapter)
    model_type, base, written = llama_layout_model(loaded, layout)  # Phi-3 split, Granite folded; else the model
    config = nas_config(loaded, layout, model_type, base)
    if written is None:
        state = renumbered_state_dict(loaded.adapter, layout)
        if config.get("tie_word_embeddings"):
            state.pop(embedding_keys(loaded.model)[0], None)
    else:
        state = dict(written.state_dict())
        if config.get("tie_word_embeddings"):
            state.pop(embedding_keys(written)[0], None)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    check_disk_space(to.parent if not to.exists() else to, sum(v.numel() * v.element_size() for v in state.values()) + (64 << 20))
    with atomic_dir(to, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copy(Path(__file__).with_name("configuration_decilm.py"), tmp / "configuration_decilm.py")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        loaded.model.generation_config.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
    diff = None
    if verify:
        config = json.loads((to / "config.json").read_text())
        back = build_pruned_model("llama", config, nas_geometry(config), read_safetensors(to))
        diff = logits_gap(loaded.model, back)
        if not diff <= 1e-4:
            raise PrunekitError(f"the nemotron-nas export in '{to}' reloads with logits {diff:.3g} away from the pruned model.",
                                "Report this as a prunekit bug, with the plan.json.")
    return {
        "format": MODEL_TYPE, "path": str(to), "layers": len(layout.layers),
        "parameters": sum(v.numel() for v in state.values()), "max_logit_diff": diff,
        "serve": f"vllm serve {to} --trust-remote-code",
    }
