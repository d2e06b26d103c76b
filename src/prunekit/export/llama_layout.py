"""A pruned model written in Llama's per-layer layout, the one the GGUF ``deci`` and nemotron-nas exports share.

Which parameter goes where is found through the adapter (embedding, norms, projections), never by
name: :func:`llama_tensors` gives every weight its llama.cpp tensor name (``blk.N.attn_q`` ...), with
fused projections (Phi-3) written as their parts, a family's multipliers (Granite) folded into the
weights (``adapter.llama_folds``) and the q/k rows permuted per head from Hugging Face's rotate-half
order to the interleaved pairs that llama.cpp's "normal" RoPE rotates (as llama.cpp's own converter
does). A parameter that no slot takes (Qwen3's q/k norms) is refused rather than dropped.

:func:`llama_state` turns such arrays back into a Llama state dict, and :func:`llama_layout_model`
builds the Llama model that computes the same function as the pruned model: the reference that the
GGUF and nemotron-nas files are checked against.
"""

from __future__ import annotations

import numpy as np
import torch

from prunekit.core.errors import PrunekitError
from prunekit.export.layout import ModelLayout
from prunekit.export.rebuild import Geometry, build_pruned_model
from prunekit.models.contract import ATTN, MLP, Block, Proj
from prunekit.models.families.llama import LLAMA_GGUF_KEYS
from prunekit.models.loading import LoadedModel


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half row order -> interleaved pairs, per head (rows = heads x head_dim)."""
    shape = w.shape
    return w.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`permute_rope_rows`."""
    shape = w.shape
    return w.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama_tensors(loaded: LoadedModel, layout: ModelLayout) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp tensor name, float32 array in torch layout) for every weight, q/k permuted; refuses unplaced params.

    Fused projections are written as their separate parts, and the family's :class:`LlamaFolds`
    are multiplied in (Granite's multipliers)."""
    adapter = loaded.adapter
    folds = adapter.llama_folds()
    placed: list[tuple[str, torch.Tensor, float]] = []
    seen: set[int] = set()

    def put(name: str, param: torch.Tensor | Proj | None, attr: str = "weight", scale: float = 1.0) -> None:
        if isinstance(param, Proj):  # a projection, maybe rows of a fused Linear: mark the whole parameter seen
            base = getattr(param.module, attr)
            param = getattr(param, attr)
            if base is not None:
                seen.add(id(base))
        if param is not None:
            placed.append((name, param, scale))
            seen.add(id(param))

    tied = getattr(adapter.config, "tie_word_embeddings", False) or adapter.lm_head.weight is adapter.embed.weight
    put("token_embd.weight", adapter.embed.weight, scale=folds.embed)
    put("output_norm.weight", adapter.final_norm.weight)
    if not tied or folds.embed != folds.logits:  # a folded tied head is its own tensor
        put("output.weight", adapter.lm_head.weight, scale=folds.logits)
    else:
        seen.add(id(adapter.lm_head.weight))
    hidden = layout.config["hidden_size"]
    for k, g in enumerate(layout.layers):
        i = g.source
        if g.has_attention:
            put(f"blk.{k}.attn_norm.weight", adapter.norms(Block.of(i, ATTN))[0].weight)
            a = adapter.attention(i)
            if a.q.bias is not None and a.q.out_features != hidden:
                raise PrunekitError(
                    f"layer {i} keeps {a.num_heads} query heads with a query bias, which llama.cpp's deci loader sizes as the hidden size.",
                    "Use `format` hf for this model.",
                )
            for short, lin, scale in (("attn_q", a.q, folds.query), ("attn_k", a.k, 1.0), ("attn_v", a.v, 1.0),
                                      ("attn_output", a.o, folds.residual)):
                put(f"blk.{k}.{short}.weight", lin, scale=scale)
                put(f"blk.{k}.{short}.bias", lin, "bias", scale)
        if g.has_mlp:
            put(f"blk.{k}.ffn_norm.weight", adapter.norms(Block.of(i, MLP))[0].weight)
            m = adapter.mlp(i)
            for short, lin, scale in (("ffn_gate", m.gate, 1.0), ("ffn_up", m.up, 1.0), ("ffn_down", m.down, folds.residual)):
                put(f"blk.{k}.{short}.weight", lin, scale=scale)
                put(f"blk.{k}.{short}.bias", lin, "bias", scale)
    left = [n for n, p in adapter.model.named_parameters() if id(p) not in seen]
    if left:
        raise PrunekitError(
            f"the GGUF deci layout has no place for these parameters: {', '.join(left[:4])}{' ...' if len(left) > 4 else ''}.",
            "Use `format` hf for this model family.",
        )
    heads = {g.source: g for g in layout.layers}
    source_index = {k: g.source for k, g in enumerate(layout.layers)}
    out = []
    for name, p, scale in placed:
        w = p.detach().to("cpu", torch.float32).numpy()
        if scale != 1.0:
            w = w * np.float32(scale)
        parts = name.split(".")
        if parts[0] == "blk" and parts[2] in ("attn_q", "attn_k"):
            g = heads[source_index[int(parts[1])]]
            w = permute_rope_rows(w, g.num_heads if parts[2] == "attn_q" else g.num_kv_heads)
        out.append((name, np.ascontiguousarray(w)))
    return out


def llama_state(arrays: dict[str, np.ndarray], heads: list[int], kv: list[int]) -> dict[str, torch.Tensor]:
    """GGUF-named arrays (q/k rows permuted) as a Llama-layout state dict (q/k rows as Hugging Face has them)."""
    names = LLAMA_GGUF_KEYS
    state: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():
        parts = name.split(".")
        if parts[0] == "rope_freqs":
            continue
        if parts[0] == "blk":
            k, short, kind = int(parts[1]), parts[2], parts[3]
            if short in ("attn_q", "attn_k"):
                arr = unpermute_rope_rows(arr, heads[k] if short == "attn_q" else kv[k])
            key = f"model.layers.{k}.{names[short]}.{kind}"
        else:
            key = f"{names[parts[0]]}.{parts[1]}"
        state[key] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def llama_config(loaded: LoadedModel, layout: ModelLayout) -> dict:
    """The config of the model as written in Llama's layout (``layout.config`` itself for Llama-layout
    families); a tied head whose folds differ from the embedding's is written untied."""
    adapter = loaded.adapter
    config = adapter.llama_config(layout.config)
    folds = adapter.llama_folds()
    if config.get("tie_word_embeddings") and folds.embed != folds.logits:
        config = config | {"tie_word_embeddings": False}
    return config


def llama_layout_model(loaded: LoadedModel, layout: ModelLayout) -> tuple[str, dict, torch.nn.Module | None]:
    """(model_type, config, model) of the pruned model as written in Llama's layout: for a family that is
    Llama's layout already, its own model_type and config and None (the pruned model itself is it);
    otherwise the Llama model holding the split and folded weights (:func:`llama_tensors`)."""
    adapter = loaded.adapter
    config = llama_config(loaded, layout)
    if config is layout.config and adapter.llama_folds().identity:
        return config["model_type"], config, None
    arrays = dict(llama_tensors(loaded, layout))
    heads = [g.num_heads for g in layout.layers]
    kv = [g.num_kv_heads for g in layout.layers]
    inter = [g.intermediate_size for g in layout.layers]
    model = build_pruned_model(config["model_type"], config, Geometry(heads, kv, inter, layout.head_dim), llama_state(arrays, heads, kv))
    return config["model_type"], config, model
