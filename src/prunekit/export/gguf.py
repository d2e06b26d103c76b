"""Export a pruned model as a GGUF file for llama.cpp, in its per-layer ``deci`` architecture.

``deci`` (Llama-Nemotron-NAS in llama.cpp) reads per-layer arrays ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length``; a head count of 0 means the
layer has no attention (the residual passes, the layer has no ``attn_*`` tensors). The tensors
are Llama's GGUF names (``blk.N.attn_q`` ...). Like llama.cpp's own converter, q/k rows are
permuted per head from the Hugging Face rotate-half layout to the interleaved pairs that
llama.cpp's "normal" RoPE rotates.

Two gaps in llama.cpp's ``deci`` support, and how the export stays exact anyway:

- a layer with ``feed_forward_length`` 0 is skipped *whole* (its attention output is dropped too),
  which is right only when the layer has no attention either. A layer that keeps its attention
  but lost its MLP is written with a feed-forward of ``ZERO_FFN_WIDTH`` channels whose weights
  are all zero: it adds exactly 0 to the residual.
- the head size (``key_length``) and RoPE dimensions are read only when layer 0 has attention. When
  the first layer has none, it is written as deci's "linear attention" (``head_count`` > 0,
  ``head_count_kv`` 0: ``attn_output @ norm(h)``) with an all-zero ``attn_output``, which adds
  exactly 0.

Both stand-ins are reported (``zero_ffn_layers``, ``zero_attention_layers``) and removed again by
:func:`read_gguf`. Layers with both blocks removed are dropped.

Which parameter goes where is found through the adapter (embedding, norms, projections), and a
model with any parameter left unplaced (e.g. Qwen3's q/k norms, which ``deci`` has no slot for)
is refused, as is a family whose adapter says Llama's layout cannot hold it
(``llama_layout_refusal``: Gemma, OLMo 2, the MoE families). Fused projections (Phi-3) are written
as their parts; a family's multipliers (Granite) are folded into the weights
(``adapter.llama_folds``) and its config written as Llama's (``adapter.llama_config``), so the file
is read back as the Llama model that computes the same function (:func:`llama_layout_model`), and
verified against that model rounded. Tokenizer: copied from the source GGUF when the model came from one (the embedded
model), else built from a byte-level BPE Hugging Face tokenizer. The base config rides along as
``prunekit.source_config`` so prunekit's reader (:func:`read_gguf`) can rebuild the model.

Verification: the file is re-read (in its temporary name, so a refused export leaves nothing at
``--to``) and its logits are compared with those of the pruned model *with its weights rounded as the
file stores them* (:func:`rounded_model`: bf16/f16 rounding, q8_0 quantize + dequantize with the gguf
package's own ``quants``), within ``VERIFY_TOL``: any type passes exactly when the layout is right,
and a misplaced tensor or row fails. The gap of that rounded model to the pruned one is reported
apart (``rounding_logit_diff``): it is what the chosen type costs, not an error of the file.

Running the files in llama.cpp: :class:`LlamaCppModel` loads them with llama.cpp's extra buffer
types off (``--no-repack`` in llama.cpp's tools). On CPUs with AMX, llama.cpp moves Q4_0/Q4_1/Q8_0
and K-quant weights into its AMX buffer type; the llama-cpp-python 0.3.36 build compiled here by
GCC 12 faults in that path's first matrix product (GCC 12's ``_tile_loadconfig`` declares an 8-byte
operand, so the stores of the 64-byte tile configuration are dropped and ``ldtilecfg``/``tilezero``
trap), for any quantized file, llama.cpp's own quantizations and the source SmolLM2 Q4_1 included.
prunekit's q8_0 tensors are byte for byte what llama.cpp's own quantizer writes (tested).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.core.io import check_disk_space
from prunekit.core.paths import package_dir
from prunekit.export.layout import ModelLayout, model_layout
from prunekit.export.readers import build_pruned_model, logits_gap, model_logits
from prunekit.models.adapter import ATTN, MLP, Block, Proj
from prunekit.models.families.llama import LLAMA_GGUF_KEYS
from prunekit.models.loading import EMBEDDED, LoadedModel

ARCH = "deci"
ZERO_FFN_WIDTH = 32
SOURCE_KEY = "prunekit.source_config"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# max |logits| between the re-read file and the pruned model with its weights rounded as the file stores
# them: the same float32 values run through the same operations, so only summation order can differ.
VERIFY_TOL = 1e-4


def _gguf():
    return gguf


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half row order -> interleaved pairs, per head (rows = heads x head_dim)."""
    shape = w.shape
    return w.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`permute_rope_rows`."""
    shape = w.shape
    return w.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_freq_factors(config: dict, head_dim: int) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` (per-frequency divisors) for a scaled RoPE, None for the default one."""
    rope = config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        return None
    if rope_type not in ("llama3", "linear"):
        raise PrunekitError(f"RoPE type '{rope_type}' has no GGUF deci mapping in prunekit.", "Use `format` hf.")
    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    scaled, attention_scale = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
    base = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if abs(attention_scale - 1.0) > 1e-6:
        raise PrunekitError(f"RoPE type '{rope_type}' scales attention, which deci GGUF cannot express.", "Use `format` hf.")
    return (base / scaled.float()).numpy().astype(np.float32)


def placed_tensors(loaded: LoadedModel, layout: ModelLayout, zero_ffn_width: int = ZERO_FFN_WIDTH,
                   stand_ins: bool = True) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in torch layout) for every weight, q/k permuted; refuses unplaced params.

    Fused projections are written as their separate parts, and the family's :class:`LlamaFolds`
    are multiplied in (Granite's multipliers). ``stand_ins``: add the zero stand-ins of the module
    docstring (False: only the model's own weights)."""
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
    if not stand_ins:
        return out
    if layout.layers and not layout.layers[0].has_attention:
        out.append(("blk.0.attn_norm.weight", np.ones(hidden, np.float32)))
        out.append(("blk.0.attn_output.weight", np.zeros((hidden, hidden), np.float32)))
    for k, g in enumerate(layout.layers):
        if g.has_attention and not g.has_mlp:
            out.append((f"blk.{k}.ffn_norm.weight", np.ones(hidden, np.float32)))
            for short, shape in (("ffn_gate", (zero_ffn_width, hidden)), ("ffn_up", (zero_ffn_width, hidden)), ("ffn_down", (hidden, zero_ffn_width))):
                out.append((f"blk.{k}.{short}.weight", np.zeros(shape, np.float32)))
    return out


def _source_gguf(loaded: LoadedModel) -> Path | None:
    """The GGUF file the base model was loaded from (embedded model or a .gguf spec), if any."""
    specs = [loaded.spec, ((loaded.info.get("plan") or {}).get("model") or {}).get("spec")]
    for spec in specs:
        if spec in EMBEDDED:
            pkg, filename = EMBEDDED[spec]
            where = package_dir(pkg)
            if where is not None and (where / filename).is_file():
                return where / filename
        elif spec and str(spec).endswith(".gguf") and Path(spec).is_file():
            return Path(spec)
    return None


def _write_tokenizer(writer, loaded: LoadedModel, n_vocab: int) -> str:
    """Tokenizer metadata; returns where it came from."""
    gguf = _gguf()
    src = _source_gguf(loaded)
    if src is not None:
        reader = gguf.GGUFReader(src)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        return f"copied from {src.name}"
    tok = loaded.tokenizer
    if tok is None:
        raise PrunekitError("the model has no tokenizer to write into the GGUF.", "Export a prunekit output directory (it holds the tokenizer).")
    spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise PrunekitError("prunekit writes GGUF tokenizers for byte-level BPE tokenizers only.", "Convert this model with llama.cpp's converter from `format` hf output.")
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise PrunekitError(f"the tokenizer has {len(vocab)} tokens but the embedding only {n_vocab} rows.", "Use the model's own tokenizer.")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    special = {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    added = {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()}
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if text in special else gguf.TokenType.USER_DEFINED if text in added else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = spec.get("pre_tokenizer") or {}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for setter, value in ((writer.add_bos_token_id, tok.bos_token_id), (writer.add_eos_token_id, tok.eos_token_id),
                          (writer.add_pad_token_id, tok.pad_token_id)):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    return "built from the Hugging Face tokenizer"


def storage_type(shape: tuple[int, ...], kind: str):
    """The GGML type a tensor of ``shape`` is stored as under ``--gguf-type kind``.

    1-D tensors (norms, biases, RoPE factors) stay float32, as in llama.cpp's converter; q8_0 rows whose
    length is not a multiple of its 32-value block (widths left by LLM-Pruner) are stored as f16.
    """
    q = _gguf().GGMLQuantizationType
    if len(shape) == 1 or kind == "f32":
        return q.F32
    if kind == "f16":
        return q.F16
    qtype = q.BF16 if kind == "bf16" else q.Q8_0
    if shape[-1] % _gguf().GGML_QUANT_SIZES[qtype][0]:
        return q.F16
    return qtype


def _quantize(arr: np.ndarray, kind: str, name: str):
    """(stored data, its GGML type): the gguf package's own quantization to :func:`storage_type`."""
    gguf = _gguf()
    q = gguf.GGMLQuantizationType
    qtype = storage_type(arr.shape, kind)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    limit = {q.F16: 65504.0, q.Q8_0: 65504.0 * 127}.get(qtype)  # f16's largest; q8_0 keeps max/127 as f16
    if limit and arr.size and np.isfinite(arr).all() and np.abs(arr).max() > limit:
        raise PrunekitError(f"{name} has values beyond the range of {kind} ({np.abs(arr).max():.4g}).", "Use `gguf_type` bf16 or f32.")
    return gguf.quants.quantize(arr, qtype), qtype


def _encode(arr: np.ndarray, kind: str, name: str = "a weight"):
    """(data, raw_dtype) for ``add_tensor``."""
    q = _gguf().GGMLQuantizationType
    data, qtype = _quantize(arr, kind, name)
    return data, (None if qtype in (q.F32, q.F16) else qtype)


def rounded(arr: np.ndarray, kind: str, name: str = "a weight") -> np.ndarray:
    """``arr`` (float32) as the file stores it under ``kind``: quantized as :func:`_encode` does, then dequantized."""
    data, qtype = _quantize(arr, kind, name)
    return _gguf().quants.dequantize(data, qtype).astype(np.float32, copy=False).reshape(arr.shape)


def rounded_model(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """A float32 CPU copy of ``model`` with every weight rounded as a ``kind`` GGUF stores it (:func:`rounded`).

    Rounding is per element (f16, bf16) or per 32 values along a row (q8_0), so it commutes with the
    q/k row permutation: this is the model a correct file holds, whatever the layout.
    """
    ref = copy.deepcopy(model).to("cpu", torch.float32)
    with torch.no_grad():
        for name, p in ref.named_parameters():  # tied weights once
            p.copy_(torch.from_numpy(rounded(p.detach().numpy(), kind, name)))
    return ref.eval()


def verify_gguf(loaded: LoadedModel, path: str | Path, gguf_type: str) -> tuple[float, float]:
    """(gap of the file at ``path`` to the rounded pruned model, gap of that rounded model to the pruned one).

    Raises when the first exceeds ``VERIFY_TOL``: then the file's layout, not its type, is wrong.
    """
    family, config, (heads, kv, inter, head_dim), state = read_gguf(path)
    back = model_logits(build_pruned_model(family, config, heads, kv, inter, head_dim, state))
    del state  # one extra model in memory at a time: the re-read one, then the rounded copy
    _, _, written = llama_layout_model(loaded, model_layout(loaded.adapter))
    if written is not None:  # split / folded weights: the rounded model is the Llama-layout one
        fold_gap = logits_gap(loaded.model, written)
        if not fold_gap <= VERIFY_TOL:
            raise PrunekitError(f"the Llama-layout copy of this '{loaded.adapter.model_type}' model is {fold_gap:.3g} away from it.",
                                "Report this as a prunekit bug, with the plan.json.")
    ref = model_logits(rounded_model(written if written is not None else loaded.model, gguf_type))
    diff = (back - ref).abs().max().item()
    rounding = (model_logits(loaded.model) - ref).abs().max().item()
    if not diff <= VERIFY_TOL:
        raise PrunekitError(
            f"the {gguf_type} GGUF reads back with logits {diff:.3g} away from the pruned model with its weights rounded "
            f"to {gguf_type} (tolerance {VERIFY_TOL:g}; the rounding alone moves them {rounding:.3g}): its layout is wrong.",
            "Report this as a prunekit bug, with the plan.json.",
        )
    return diff, rounding


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def export_gguf(loaded: LoadedModel, to: str | Path, overwrite: bool = False, gguf_type: str = "f16", verify: bool = True) -> dict:
    """Write the pruned model as one ``deci`` GGUF file at ``to``."""
    gguf = _gguf()
    check_choice("`gguf_type`", gguf_type, GGUF_TYPES)
    to = Path(to)
    if to.suffix != ".gguf":
        raise PrunekitError(f"`to` '{to}' should name a .gguf file.", f"For example `to` {to.with_suffix('.gguf').name}.")
    if to.exists() and not overwrite:
        raise PrunekitError(f"'{to}' already exists.", "Pass `overwrite` to replace it, or choose another `to`.")
    if loaded.adapter.llama_layout_refusal:
        raise PrunekitError(
            f"the GGUF deci layout cannot express this '{loaded.adapter.model_type}' model: {loaded.adapter.llama_layout_refusal}.",
            "Use `format` hf.",
        )
    layout = model_layout(loaded.adapter)
    cfg = layout.config
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if window and window < int(cfg.get("max_position_embeddings") or 0):
        raise PrunekitError(
            f"the model attends through a sliding window of {window} tokens, which the deci GGUF layout cannot express.",
            "Use `format` hf.",
        )
    if not layout.layers:
        raise PrunekitError("every block of the model is removed: there is nothing to export.", "Prune less.")
    cfg = llama_config(loaded, layout)  # a family written in Llama's layout is read back as Llama
    tensors = placed_tensors(loaded, layout)
    factors = _rope_freq_factors(cfg, layout.head_dim)
    check_disk_space(to.parent, sum(a.nbytes for _, a in tensors) + (64 << 20))
    n_vocab = cfg["vocab_size"]
    zero_ffn = [k for k, g in enumerate(layout.layers) if g.has_attention and not g.has_mlp]
    zero_attn = [] if layout.layers[0].has_attention else [0]
    linear_heads = max([g.num_heads for g in layout.layers] + [1])
    head_count = [g.num_heads for g in layout.layers]
    if zero_attn:
        head_count[0] = linear_heads
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        writer.add_name(f"prunekit {Path(str(loaded.spec)).name}")
        writer.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[gguf_type])))
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(cfg["hidden_size"])
        writer.add_block_count(len(layout.layers))
        writer.add_feed_forward_length([g.intermediate_size or (ZERO_FFN_WIDTH if g.has_attention else 0) for g in layout.layers])
        writer.add_head_count(head_count)
        writer.add_head_count_kv([g.num_kv_heads for g in layout.layers])
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(layout.head_dim)
        writer.add_value_length(layout.head_dim)
        writer.add_rope_dimension_count(layout.head_dim)
        writer.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
        writer.add_string(SOURCE_KEY, json.dumps(cfg, sort_keys=True, default=str))
        tokenizer_from = _write_tokenizer(writer, loaded, n_vocab)
        if factors is not None:
            writer.add_tensor("rope_freqs.weight", factors)
        for name, arr in tensors:
            data, raw = _encode(arr, gguf_type, name)
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        writer.close()
    del tensors
    diff = rounding = None
    try:
        if verify:  # before the file takes its name: a refused export leaves nothing at --to
            diff, rounding = verify_gguf(loaded, tmp, gguf_type)
        tmp.replace(to)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "format": "gguf", "path": str(to), "arch": ARCH, "gguf_type": gguf_type, "layers": len(layout.layers),
        "bytes": to.stat().st_size, "tokenizer": tokenizer_from, "zero_ffn_layers": zero_ffn, "zero_attention_layers": zero_attn,
        "max_logit_diff": diff, "rounding_logit_diff": rounding,
    }


def is_prunekit_gguf(path: str | Path) -> bool:
    """True for a ``deci`` GGUF that carries prunekit's source config."""
    try:
        reader = _gguf().GGUFReader(str(path))
    except (OSError, ValueError):
        return False
    return SOURCE_KEY in reader.fields and reader.fields["general.architecture"].contents() == ARCH


def read_gguf(path: str | Path) -> tuple[str, dict, tuple[list[int], list[int], list[int], int], dict[str, torch.Tensor]]:
    """(family, base config, (heads, kv heads, widths, head_dim), HF-named state dict) of a prunekit deci GGUF.

    Undoes the q/k permutation and drops the all-zero feed-forwards that stand in for removed MLPs.
    """
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    if SOURCE_KEY not in fields:
        raise PrunekitError(f"'{path}' was not written by prunekit (no {SOURCE_KEY}).", "Load it with llama.cpp, or give a prunekit export.")
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
    return config["model_type"], config, (heads, kv, inter, head_dim), llama_state(arrays, heads, kv)


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
    otherwise the Llama model holding the split and folded weights (:func:`placed_tensors`)."""
    adapter = loaded.adapter
    config = llama_config(loaded, layout)
    if config is layout.config and adapter.llama_folds().identity:
        return config["model_type"], config, None
    arrays = dict(placed_tensors(loaded, layout, stand_ins=False))
    heads = [g.num_heads for g in layout.layers]
    kv = [g.num_kv_heads for g in layout.layers]
    inter = [g.intermediate_size for g in layout.layers]
    model = build_pruned_model(config["model_type"], config, heads, kv, inter, layout.head_dim, llama_state(arrays, heads, kv))
    return config["model_type"], config, model


class LlamaCppModel:
    """A GGUF loaded by llama.cpp through llama-cpp-python (imported here: an optional dependency), for checks.

    Loaded with llama.cpp's extra buffer types off (its tools' ``--no-repack``), which keeps quantized
    weights out of the AMX path that faults on this project's machine (module docstring), and with its
    tensor data checked. ``logits(ids)`` runs one batch in a fresh context. Use it as a context manager.
    """

    def __init__(self, path: str | Path, n_threads: int = 1):
        import llama_cpp

        quiet = logging.getLogger("llama-cpp-python")  # llama-cpp-python's log callback prints what passes this level
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        self._lib, self.path, self.n_threads = llama_cpp, Path(path), n_threads
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False
        params.check_tensors = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise PrunekitError(f"llama.cpp could not load '{path}'.", f"Run llama-cli -m {path} to see its log.")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))

    def logits(self, ids: list[int]) -> np.ndarray:
        """llama.cpp's logits ``[len(ids), vocab]`` at every position of ``ids``."""
        lib = self._lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max(256, len(ids))
        cparams.n_batch = cparams.n_ubatch = len(ids)
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        ctx = lib.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise PrunekitError(f"llama.cpp could not make a context for '{self.path}'.", "Run llama-cli on it to see its log.")
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = int(token), i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(ids)
            status = lib.llama_decode(ctx, batch)
            if status != 0:
                raise PrunekitError(f"llama.cpp's decode of '{self.path}' returned {status}.", "Run llama-cli on it to see its log.")
            return np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,)).copy()
                             for i in range(len(ids))])
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)

    def close(self) -> None:
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def llama_cpp_logits(path: str | Path, ids: list[int], n_threads: int = 1) -> np.ndarray:
    """llama.cpp's logits ``[len(ids), vocab]`` at every position of ``ids`` for the GGUF at ``path`` (:class:`LlamaCppModel`)."""
    with LlamaCppModel(path, n_threads) as model:
        return model.logits(ids)
