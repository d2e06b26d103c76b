"""Physical width pruning: slice the kept structures out of the weights, so the model is smaller.

:func:`apply_width` is what :func:`prunekit.plan.apply.apply_plan` calls for a plan whose ``width``
field is set. The ``width`` record (kept indices, so the plan re-applies to the base model)::

    {
      "strategy": "block" | "channel",
      "layers": [                                  # only the layers that change
        {"layer": 7, "kv_heads": [0, 2], "heads": [0, 1, 2, 6, 7, 8], "mlp_channels": [...],
         "num_heads": 6, "num_kv_heads": 2, "intermediate_size": 1152}, ...],
      "hidden": null | [kept hidden channels],     # --strategy channel
      (a sparse MoE layer: "expert_channels": [[kept channels of expert e] for each e], one count for all;
       "shared_channels": kept channels of its shared expert, where the family prunes it)
      "hidden_size": 576,                          # after pruning
      ...                                          # how the choice was made (importance, fractions)
    }

Slicing works on real weights and on a model built under ``accelerate.init_empty_weights`` (meta
tensors: ``index_select`` only computes shapes), which is how :func:`prunekit.plan.apply.load_pruned`
rebuilds a pruned model before loading its kept weights. After slicing, the attention modules
still satisfy transformers' attention code: whole KV groups are removed, so each module's
``num_key_value_groups`` (query heads per KV head) and ``head_dim`` stay true, and the q/k/v
reshapes infer the head count (``view(..., -1, head_dim)``). The per-layer sizes are recorded on
``model.config.prunekit_width`` (the base geometry fields of the config are left as they are:
a plan is checked against them).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.errors import PrunekitError
from prunekit.models.adapter import ModelAdapter
from prunekit.models.contract import MLP, Block
from prunekit.models.groups import (
    Family,
    attention_family,
    expert_families,
    hidden_family,
    kv_readers,
    mlp_family,
    parameter_names,
    shared_family,
)


def _check_kept(kept: object, n: int, what: str) -> list[int]:
    if not isinstance(kept, list) or not kept or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise PrunekitError(f"the plan's width record keeps no valid {what} (corrupted or hand-edited?).",
                            "Use a plan.json written by prunekit.")
    if sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= n:
        raise PrunekitError(
            f"the plan's width record lists {what} that are not sorted, unique indices below {n}.",
            "Use the plan with the model it was made for.",
        )
    return kept


def _slice_param(module: nn.Module, attr: str, dim: int, idx: torch.Tensor) -> None:
    p = getattr(module, attr)
    new = p.data.index_select(dim, idx.to(p.device) if p.device.type != "meta" else idx)
    if p.device.type != "meta":
        new = new.clone()
    setattr(module, attr, nn.Parameter(new, requires_grad=p.requires_grad))


def _fix_module(module: nn.Module) -> None:
    """Keep a module's size attributes true to its sliced weight (a module without one, such as gpt-oss's attention
    sliced in its sinks or a linear mixer sliced in its own Parameters: its adapter syncs it)."""
    w = getattr(module, "weight", None)
    if w is None:
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = w.shape
    elif hasattr(module, "normalized_shape"):
        module.normalized_shape = tuple(w.shape)


def slice_family(family: Family, kept: list[int]) -> None:
    """Keep structures ``kept`` (sorted indices) of ``family`` in every part, drop the rest.

    Parts that share a parameter (the q, k and v rows of a fused ``qkv_proj``) are cut together:
    the parameter keeps every index no structure owns, and the indices of the kept structures, in
    their order, so a fused layout stays ``[Q' | K' | V']`` / ``[gate' | up']``.
    """
    sel = torch.tensor(kept, dtype=torch.long)
    params: dict[tuple[int, str], list] = {}
    for part in family.parts:
        entry = params.setdefault((id(part.module), part.attr), [part.module, part.attr, part.dim, [], []])
        entry[3].append(part.index.reshape(-1))
        entry[4].append(part.index[sel].reshape(-1))
    touched: dict[int, nn.Module] = {}
    for module, attr, dim, owned, keep in params.values():
        size = getattr(module, attr).shape[dim]
        mask = torch.ones(size, dtype=torch.bool)
        mask[torch.cat(owned)] = False
        mask[torch.cat(keep)] = True
        _slice_param(module, attr, dim, mask.nonzero().flatten())
        touched[id(module)] = module
    for module in touched.values():
        _fix_module(module)


def _slice_experts(adapter: ModelAdapter, layer: int, kept: object, names: dict[int, str]) -> None:
    """Keep channels ``kept[e]`` of each routed expert ``e`` of ``layer`` (the same number for every expert:
    they share one 3-D tensor per projection)."""
    fams = expert_families(adapter, layer, names)
    if not fams:
        raise PrunekitError(f"the plan slices the experts of layer {layer}, which has no sparse MoE block.",
                            "Use a plan.json written by prunekit.")
    if not isinstance(kept, list) or len(kept) != len(fams):
        raise PrunekitError(f"the plan's expert channels of layer {layer} do not list its {len(fams)} experts.",
                            "Use a plan.json written by prunekit.")
    kept = [_check_kept(k, fam.n, f"channels of expert {e} of layer {layer}") for e, (k, fam) in enumerate(zip(kept, fams))]
    if len({len(k) for k in kept}) != 1 or len(kept[0]) % fams[0].align and len(kept[0]) != fams[0].n:
        raise PrunekitError(
            f"the plan keeps unequal channel counts, or counts not a multiple of {fams[0].align}, in the experts of layer {layer}.",
            "Use a plan.json written by prunekit.")
    slabs: dict[tuple[int, str], list] = {}
    for fam, keep in zip(fams, kept):
        sel = torch.tensor(keep, dtype=torch.long)
        for part in fam.parts:
            entry = slabs.setdefault((id(part.module), part.attr), [part.module, part.attr, part.dim, {}])
            owned, chosen = entry[3].setdefault(part.expert, ([], []))
            owned.append(part.index.reshape(-1))
            chosen.append(part.index[sel].reshape(-1))
    for module, attr, dim, per_expert in slabs.values():
        p = getattr(module, attr)
        new = []
        for e in range(p.shape[0]):
            owned, chosen = per_expert[e]
            mask = torch.ones(p.shape[1 + dim], dtype=torch.bool)
            mask[torch.cat(owned)] = False
            mask[torch.cat(chosen)] = True
            idx = mask.nonzero().flatten()
            new.append(p.data[e].index_select(dim, idx if p.device.type == "meta" else idx.to(p.device)))
        data = torch.stack(new)
        setattr(module, attr, nn.Parameter(data if p.device.type == "meta" else data.clone(), requires_grad=p.requires_grad))
    adapter.sync_experts(layer)


def _slice_layer(adapter: ModelAdapter, entry: dict, names: dict[int, str]) -> None:
    layer = entry.get("layer")
    if not isinstance(layer, int) or not (0 <= layer < adapter.num_layers):
        raise PrunekitError(f"the plan's width record names layer {layer!r}, but the model has {adapter.num_layers}.",
                            "Use the plan with its own model.")
    if entry.get("kv_heads") is not None:
        fam = attention_family(adapter, layer, names)
        if fam is None:
            raise PrunekitError(f"the plan slices the heads of layer {layer}, whose attention is removed.",
                                "Use a plan.json written by prunekit.")
        kept = _check_kept(entry["kv_heads"], fam.n, f"KV heads of layer {layer}")
        readers = kv_readers(*adapter.head_counts(layer))
        heads = sorted(h for g in kept for h in readers[g])
        if entry.get("heads") is not None and entry["heads"] != heads:
            raise PrunekitError(
                f"the plan's query heads of layer {layer} split a KV group ({entry['heads']} vs the groups' {heads}).",
                "Use a plan.json written by prunekit.",
            )
        slice_family(fam, kept)
        adapter.sync_attention(layer)
    if entry.get("expert_channels") is not None:
        _slice_experts(adapter, layer, entry["expert_channels"], names)
    if entry.get("shared_channels") is not None:
        fam = shared_family(adapter, layer, names)
        if fam is None:
            raise PrunekitError(f"the plan slices the shared expert of layer {layer}, which has none that is pruned.",
                                "Use a plan.json written by prunekit.")
        slice_family(fam, _check_kept(entry["shared_channels"], fam.n, f"shared expert channels of layer {layer}"))
    if entry.get("mlp_channels") is not None:
        fam = mlp_family(adapter, layer, names)
        if fam is None:
            raise PrunekitError(f"the plan slices the MLP of layer {layer}, which is removed.", "Use a plan.json written by prunekit.")
        slice_family(fam, _check_kept(entry["mlp_channels"], fam.n, f"MLP channels of layer {layer}"))


def apply_width(adapter: ModelAdapter, width: dict) -> None:
    """Slice ``adapter.model`` in place as the plan's ``width`` record says (see the module docstring)."""
    if not isinstance(width, dict) or not isinstance(width.get("layers", []), list):
        raise PrunekitError("the plan's width record is not an object with a 'layers' list.", "Use a plan.json written by prunekit.")
    model = adapter.model
    if adapter.width_refusal:
        raise PrunekitError(f"the plan slices widths, and {adapter.width_refusal} (model_type '{adapter.model_type}').",
                            "Use a depth plan for this family.")
    if getattr(model.config, "prunekit_width", None):
        raise PrunekitError("this model is already width-pruned; a width plan applies to the base model.",
                            "Apply the plan to the model it was made from.")
    tied = adapter.lm_head.weight is adapter.embed.weight
    names = parameter_names(model)
    for entry in width.get("layers", []):
        if not isinstance(entry, dict):
            raise PrunekitError("the plan's width record has a layer entry that is not an object.", "Use a plan.json written by prunekit.")
        _slice_layer(adapter, entry, names)
    if width.get("hidden") is not None:
        fam = hidden_family(adapter, names)
        slice_family(fam, _check_kept(width["hidden"], fam.n, "hidden channels"))
        if tied:
            adapter.lm_head.weight = adapter.embed.weight
            _fix_module(adapter.lm_head)
    model.config.prunekit_width = layer_sizes(adapter)


def layer_sizes(adapter: ModelAdapter) -> dict:
    """Per-layer geometry as the model holds it now (``None`` for a removed block)."""
    heads, kv, inter = [], [], []
    for layer in range(adapter.num_layers):
        fam = attention_family(adapter, layer)
        if fam is None:
            heads.append(None)
            kv.append(None)
        else:
            n_heads, n_kv = adapter.head_counts(layer)
            heads.append(n_heads)
            kv.append(n_kv)
        inter.append(None if adapter.is_removed(Block.of(layer, MLP)) else adapter.mlp_width(layer))
    out = {
        "hidden_size": int(adapter.embed.weight.shape[1]), "num_attention_heads": heads,
        "num_key_value_heads": kv, "intermediate_size": inter,
    }
    shared = [adapter.shared_mlp(layer) for layer in range(adapter.num_layers)]
    if any(m is not None for m in shared):  # the shared experts' widths (None: a dense or removed MLP)
        out["shared_intermediate_size"] = [m.gate.out_features if m is not None else None for m in shared]
    return out
