"""``export --format gguf``: llama.cpp's per-layer ``deci`` layout, checked with the gguf reader (metadata,
tensor shapes, tokenizer) and read back by prunekit's reader with the same logits. When
``llama-cpp-python`` is installed (benchmarks/gguf_llamacpp.py installs it), a real llama.cpp runtime
also runs the files and must agree with PyTorch's next tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export_helpers import IDS, VOCAB, pruned_tiny
from prunekit.core.errors import PrunekitError
from prunekit.export import export
from prunekit.export.gguf import ZERO_FFN_WIDTH, permute_rope_rows, unpermute_rope_rows
from prunekit.pipeline.load import load_model

gguf = pytest.importorskip("gguf")


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return r, {k: f.contents() for k, f in r.fields.items()}


def test_rope_row_permutation_is_the_interleave_and_inverts():
    hd, heads = 8, 3
    w = np.arange(heads * hd * 2, dtype=np.float32).reshape(heads * hd, 2)
    p = permute_rope_rows(w, heads)
    for h in range(heads):  # row i of the first half and row i of the second half become neighbours
        for i in range(hd // 2):
            assert (p[h * hd + 2 * i] == w[h * hd + i]).all() and (p[h * hd + 2 * i + 1] == w[h * hd + hd // 2 + i]).all()
    assert (unpermute_rope_rows(p, heads) == w).all()


@pytest.mark.parametrize("kind", ["blocks", "width", "layers"])
def test_metadata_shapes_and_read_back(kind, tmp_path):
    loaded = pruned_tiny("llama", kind)
    path = tmp_path / "m.gguf"
    info = export(loaded, "gguf", path, gguf_type="f32")
    r, f = _fields(path)
    assert f["general.architecture"] == "deci"
    heads, kv, ffn = f["deci.attention.head_count"], f["deci.attention.head_count_kv"], f["deci.feed_forward_length"]
    n = f["deci.block_count"]
    assert len(heads) == len(kv) == len(ffn) == n
    assert f["deci.attention.key_length"] == f["deci.rope.dimension_count"] == 16
    assert len(f["tokenizer.ggml.tokens"]) == VOCAB and f["tokenizer.ggml.model"] == "gpt2"
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}  # ggml order: [in, out]
    assert shapes["token_embd.weight"] == [64, VOCAB]
    for k in range(n):
        if kv[k]:
            assert shapes[f"blk.{k}.attn_q.weight"] == [64, heads[k] * 16]
            assert shapes[f"blk.{k}.attn_k.weight"] == [64, kv[k] * 16]
        else:  # no attention: nothing, or the all-zero "linear attention" stand-in of layer 0
            assert f"blk.{k}.attn_q.weight" not in shapes
        assert shapes[f"blk.{k}.ffn_up.weight"] == [64, ffn[k]]
    if kind == "blocks":  # attention of layer 0 and MLP of layer 2 removed
        assert info["zero_attention_layers"] == [0] and heads[0] > 0 and kv[0] == 0
        assert info["zero_ffn_layers"] == [2] and ffn[2] == ZERO_FFN_WIDTH
    if kind == "width":
        assert list(heads) == [4, 2, 4, 4] and list(kv) == [2, 1, 2, 2] and list(ffn) == [96, 96, 48, ZERO_FFN_WIDTH]
    if kind == "layers":
        assert n == 2
    back = load_model(str(path), device="cpu")
    with torch.no_grad():
        assert (back.model(input_ids=IDS).logits - loaded.model(input_ids=IDS).logits).abs().max() <= 1e-5
    assert back.adapter.total_params() == loaded.adapter.total_params()


def test_f16_and_q8_0_files_are_smaller_and_close(tmp_path):
    loaded = pruned_tiny("llama", "blocks")
    sizes = {t: export(loaded, "gguf", tmp_path / f"{t}.gguf", gguf_type=t)["bytes"] for t in ("f32", "f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_refusals(tmp_path):
    with pytest.raises(PrunekitError, match="no place for these parameters: .*q_norm"):
        export(pruned_tiny("qwen3", "blocks"), "gguf", tmp_path / "q3.gguf")
    with pytest.raises(PrunekitError, match="should name a .gguf file"):
        export(pruned_tiny("llama", "blocks"), "gguf", tmp_path / "m.bin")
    with pytest.raises(PrunekitError, match="`gguf_type` 'q4' is not known"):
        export(pruned_tiny("llama", "blocks"), "gguf", tmp_path / "m.gguf", gguf_type="q4")


@pytest.mark.parametrize("family, kind", [("llama", "blocks"), ("llama", "width"), ("mistral", "layers"), ("qwen2", "blocks")])
def test_llama_cpp_runs_it_with_the_same_next_tokens(family, kind, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (benchmarks/gguf_llamacpp.py installs it)")
    loaded = pruned_tiny(family, kind)
    path = tmp_path / "m.gguf"
    export(loaded, "gguf", path, gguf_type="f32")
    ids = IDS[0].tolist()
    with torch.no_grad():
        ref = loaded.model(input_ids=IDS).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
