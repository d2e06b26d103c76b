"""Export a pruned model as a GGUF file for llama.cpp, in its per-layer ``deci`` architecture.

``deci`` (Llama-Nemotron-NAS in llama.cpp) reads per-layer arrays ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length``; a head count of 0 means the
layer has no attention (the residual passes, the layer has no ``attn_*`` tensors). The tensors
are Llama's GGUF names (``blk.N.attn_q`` ...), placed, split, folded and q/k-permuted by
:mod:`prunekit.export.llama_layout`.

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
:func:`prunekit.export.gguf_read.read_gguf`. Layers with both blocks removed are dropped.

A family whose adapter says Llama's layout cannot hold it (``llama_layout_refusal``: Gemma, OLMo 2,
the MoE families) is refused; Phi-3 and Granite are read back as the Llama model that computes the
same function (:func:`prunekit.export.llama_layout.llama_layout_model`). Tokenizer: copied from the
source GGUF when the model came from one (the embedded model), else built from a byte-level BPE
Hugging Face tokenizer. The base config rides along as ``prunekit.source_config`` so prunekit's
reader can rebuild the model.

Verification: the file is re-read (in its temporary name, so a refused export leaves nothing at
``--to``) and its logits are compared with those of the pruned model *with its weights rounded as the
file stores them* (:func:`rounded_model`: bf16/f16 rounding, q8_0 quantize + dequantize with the gguf
package's own ``quants``), within ``VERIFY_TOL``: any type passes exactly when the layout is right,
and a misplaced tensor or row fails. The gap of that rounded model to the pruned one is reported
apart (``rounding_logit_diff``): it is what the chosen type costs, not an error of the file.
prunekit's q8_0 tensors are byte for byte what llama.cpp's own quantizer writes (tested); running
the files in llama.cpp itself: :mod:`prunekit.export.llamacpp`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.core.io import check_disk_space
from prunekit.export.gguf_read import ARCH, SOURCE_KEY, ZERO_FFN_WIDTH, gguf_reader, read_gguf
from prunekit.export.layout import ModelLayout, model_layout
from prunekit.export.llama_layout import llama_config, llama_layout_model, llama_tensors
from prunekit.export.rebuild import build_pruned_model, logits_gap, model_logits
from prunekit.models.loading import EMBEDDED, LoadedModel, embedded_gguf

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# max |logits| between the re-read file and the pruned model with its weights rounded as the file stores
# them: the same float32 values run through the same operations, so only summation order can differ.
VERIFY_TOL = 1e-4


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


def placed_tensors(loaded: LoadedModel, layout: ModelLayout, zero_ffn_width: int = ZERO_FFN_WIDTH) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in torch layout) for every weight of the file: the model's own in Llama's
    layout (:func:`prunekit.export.llama_layout.llama_tensors`), then the zero stand-ins of the module docstring."""
    out = llama_tensors(loaded, layout)
    hidden = layout.config["hidden_size"]
    if layout.layers and not layout.layers[0].has_attention:
        out.append(("blk.0.attn_norm.weight", np.ones(hidden, np.float32)))
        out.append(("blk.0.attn_output.weight", np.zeros((hidden, hidden), np.float32)))
    for k, g in enumerate(layout.layers):
        if g.has_attention and not g.has_mlp:
            out.append((f"blk.{k}.ffn_norm.weight", np.ones(hidden, np.float32)))
            for short, shape in (("ffn_gate", (zero_ffn_width, hidden)), ("ffn_up", (zero_ffn_width, hidden)),
                                 ("ffn_down", (hidden, zero_ffn_width))):
                out.append((f"blk.{k}.{short}.weight", np.zeros(shape, np.float32)))
    return out


def _source_gguf(loaded: LoadedModel) -> Path | None:
    """The GGUF file the base model was loaded from (embedded model or a .gguf spec), if any."""
    specs = [loaded.spec, ((loaded.info.get("plan") or {}).get("model") or {}).get("spec")]
    for spec in specs:
        if spec in EMBEDDED:
            try:
                return embedded_gguf(spec)
            except PrunekitError:
                return None
        elif spec and str(spec).endswith(".gguf") and Path(spec).is_file():
            return Path(spec)
    return None


def _write_tokenizer(writer, loaded: LoadedModel, n_vocab: int) -> str:
    """Tokenizer metadata; returns where it came from."""
    src = _source_gguf(loaded)
    if src is not None:
        reader = gguf_reader(src)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        return f"copied from {src.name}"
    tok = loaded.tokenizer
    if tok is None:
        raise PrunekitError("the model has no tokenizer to write into the GGUF.",
                            "Export a prunekit output directory (it holds the tokenizer).")
    spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise PrunekitError("prunekit writes GGUF tokenizers for byte-level BPE tokenizers only.",
                            "Convert this model with llama.cpp's converter from `format` hf output.")
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise PrunekitError(f"the tokenizer has {len(vocab)} tokens but the embedding only {n_vocab} rows.",
                            "Use the model's own tokenizer.")
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
    q = gguf.GGMLQuantizationType
    if len(shape) == 1 or kind == "f32":
        return q.F32
    if kind == "f16":
        return q.F16
    qtype = q.BF16 if kind == "bf16" else q.Q8_0
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return q.F16
    return qtype


def _quantize(arr: np.ndarray, kind: str, name: str):
    """(stored data, its GGML type): the gguf package's own quantization to :func:`storage_type`."""
    q = gguf.GGMLQuantizationType
    qtype = storage_type(arr.shape, kind)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    limit = {q.F16: 65504.0, q.Q8_0: 65504.0 * 127}.get(qtype)  # f16's largest; q8_0 keeps max/127 as f16
    if limit and arr.size and np.isfinite(arr).all() and np.abs(arr).max() > limit:
        raise PrunekitError(f"{name} has values beyond the range of {kind} ({np.abs(arr).max():.4g}).", "Use `gguf_type` bf16 or f32.")
    return gguf.quants.quantize(arr, qtype), qtype


def _encode(arr: np.ndarray, kind: str, name: str = "a weight"):
    """(data, raw_dtype) for ``add_tensor``."""
    q = gguf.GGMLQuantizationType
    data, qtype = _quantize(arr, kind, name)
    return data, (None if qtype in (q.F32, q.F16) else qtype)


def rounded(arr: np.ndarray, kind: str, name: str = "a weight") -> np.ndarray:
    """``arr`` (float32) as the file stores it under ``kind``: quantized as :func:`_encode` does, then dequantized."""
    data, qtype = _quantize(arr, kind, name)
    return gguf.quants.dequantize(data, qtype).astype(np.float32, copy=False).reshape(arr.shape)


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
    family, config, geometry, state = read_gguf(path)
    back = model_logits(build_pruned_model(family, config, geometry, state))
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


def export_gguf(loaded: LoadedModel, to: str | Path, *, overwrite: bool = False, gguf_type: str = "f16", verify: bool = True) -> dict:
    """Write the pruned model as one ``deci`` GGUF file at ``to``."""
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
