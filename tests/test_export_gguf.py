"""``export --format gguf``: llama.cpp's per-layer ``deci`` layout, checked with the gguf reader (metadata,
tensor shapes, tokenizer) and read back by prunekit's reader with the logits of the pruned model whose
weights are rounded to the file's type; a corrupted layout is refused and leaves no file. A real
llama.cpp runs the files in test_gguf_llamacpp.py."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from export_helpers import IDS, VOCAB, pruned_tiny
from prunekit.cli.main import main as cli_main
from prunekit.core.errors import PrunekitError
from prunekit.core.paths import package_dir
from prunekit.export import export
from prunekit.export import gguf_write as gguf_export
from prunekit.export.gguf_read import ZERO_FFN_WIDTH
from prunekit.export.gguf_write import GGUF_TYPES, VERIFY_TOL, rounded_model
from prunekit.export.llama_layout import permute_rope_rows, unpermute_rope_rows
from prunekit.export.rebuild import logits_gap
from prunekit.models.loading import EMBEDDED
from prunekit.pipeline.load import load_model


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


def test_f16_bf16_and_q8_0_files_are_smaller_and_close(tmp_path):
    loaded = pruned_tiny("llama", "width")  # layer 2's 48-wide MLP rows stay f16 in the q8_0 file
    infos = {t: export(loaded, "gguf", tmp_path / f"{t}.gguf", gguf_type=t) for t in GGUF_TYPES}
    assert infos["q8_0"]["bytes"] < infos["bf16"]["bytes"] == infos["f16"]["bytes"] < infos["f32"]["bytes"]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q8_0.gguf")).tensors}
    assert types["blk.2.ffn_down.weight"] == "F16" and types["blk.2.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    with torch.no_grad():
        scale = loaded.model(input_ids=IDS).logits.abs().max().item()
    gaps = {}
    for t in GGUF_TYPES:
        back = load_model(str(tmp_path / f"{t}.gguf"), device="cpu")
        gaps[t] = logits_gap(loaded.model, back.model, IDS)
        assert infos[t]["max_logit_diff"] <= VERIFY_TOL  # the file holds exactly the rounded weights...
        # ... so the export's report of what the rounding costs is the file's real distance
        assert logits_gap(loaded.model, back.model) == pytest.approx(infos[t]["rounding_logit_diff"], abs=VERIFY_TOL)
    # close: each type's own rounding only
    assert gaps["f32"] <= 1e-5 < gaps["f16"] < gaps["bf16"] < gaps["q8_0"] <= 0.1 * scale


@pytest.mark.parametrize("kind", ["blocks", "layers", "width", "uniform-width"])
@pytest.mark.parametrize("gguf_type", GGUF_TYPES)
def test_every_type_reads_back_as_the_rounded_model(kind, gguf_type, tmp_path):
    loaded = pruned_tiny("llama", kind)
    info = export(loaded, "gguf", tmp_path / "m.gguf", gguf_type=gguf_type)
    assert info["max_logit_diff"] <= VERIFY_TOL
    back = load_model(str(tmp_path / "m.gguf"), device="cpu")
    ref = rounded_model(loaded.model, gguf_type)
    with torch.no_grad():
        assert (back.model(input_ids=IDS).logits - ref(input_ids=IDS).logits).abs().max() <= VERIFY_TOL


def _swap_gate_up(tensors):  # two tensors of one shape exchanged
    named = dict(tensors)
    named["blk.1.ffn_gate.weight"], named["blk.1.ffn_up.weight"] = named["blk.1.ffn_up.weight"], named["blk.1.ffn_gate.weight"]
    return list(named.items())


def _permute_k_rows(tensors):  # two rows of one KV head exchanged (a wrong RoPE row order)
    out = []
    for name, arr in tensors:
        if name == "blk.1.attn_k.weight":
            arr = arr.copy()
            arr[[0, 1]] = arr[[1, 0]]
        out.append((name, arr))
    return out


@pytest.mark.parametrize("corrupt", [_swap_gate_up, _permute_k_rows])
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_a_wrong_layout_is_refused_and_leaves_no_file(corrupt, gguf_type, tmp_path, monkeypatch):
    loaded = pruned_tiny("llama", "layers")
    placed = gguf_export.placed_tensors
    monkeypatch.setattr(gguf_export, "placed_tensors", lambda *a, **k: corrupt(placed(*a, **k)))
    path = tmp_path / "out" / "m.gguf"
    with pytest.raises(PrunekitError, match=f"the {gguf_type} GGUF reads back with logits .* its layout is wrong"):
        export(loaded, "gguf", path, gguf_type=gguf_type)
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its temporary
    # over an earlier export, a refused one leaves that file as it was
    monkeypatch.setattr(gguf_export, "placed_tensors", placed)
    export(loaded, "gguf", path, gguf_type=gguf_type)
    before = path.read_bytes()
    monkeypatch.setattr(gguf_export, "placed_tensors", lambda *a, **k: corrupt(placed(*a, **k)))
    with pytest.raises(PrunekitError, match="its layout is wrong"):
        export(loaded, "gguf", path, overwrite=True, gguf_type=gguf_type)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export(pruned_tiny("llama", "blocks"), "gguf", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_f16_refuses_weights_beyond_its_range(tmp_path):
    loaded = pruned_tiny("llama", "layers")
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.up_proj.weight[0, 0] = 1e5
    with pytest.raises(PrunekitError, match="blk.0.ffn_up.weight has values beyond the range of f16.*bf16 or f32"):
        export(loaded, "gguf", tmp_path / "m.gguf", gguf_type="f16")
    assert list(tmp_path.iterdir()) == []
    assert export(loaded, "gguf", tmp_path / "m.gguf", gguf_type="bf16")["max_logit_diff"] <= VERIFY_TOL


def test_refusals(tmp_path):
    with pytest.raises(PrunekitError, match="no place for these parameters: .*q_norm"):
        export(pruned_tiny("qwen3", "blocks"), "gguf", tmp_path / "q3.gguf")
    with pytest.raises(PrunekitError, match="should name a .gguf file"):
        export(pruned_tiny("llama", "blocks"), "gguf", tmp_path / "m.bin")
    with pytest.raises(PrunekitError, match="`gguf_type` 'q4' is not known"):
        export(pruned_tiny("llama", "blocks"), "gguf", tmp_path / "m.gguf", gguf_type="q4")


def _embedded_gguf() -> Path:
    return package_dir(EMBEDDED["smollm2-135m"][0]) / EMBEDDED["smollm2-135m"][1]


@pytest.mark.parametrize("cut", ["header", "half"])
def test_a_truncated_gguf_model_is_one_error_naming_it(cut, tmp_path):
    """A real GGUF cut short (in its metadata, or half of it) given as the model: one PrunekitError, not a
    struct.error / ValueError traceback from a GGUF reader."""
    data = _embedded_gguf().read_bytes()
    path = tmp_path / "x.gguf"
    path.write_bytes(data[:1000] if cut == "header" else data[: len(data) // 2])
    with pytest.raises(PrunekitError, match=r"could not read the GGUF file '.*x\.gguf' .*corrupted or truncated"):
        load_model(str(path), device="cpu")


def test_a_truncated_prunekit_gguf_is_one_error(tmp_path):
    path = tmp_path / "m.gguf"
    export(pruned_tiny("llama", "blocks"), "gguf", path, gguf_type="f32")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunekitError, match="corrupted or truncated"):
        load_model(str(path), device="cpu")


def test_cli_prune_of_a_truncated_gguf_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Cut in its metadata, the file made a reader raise IndexError (a traceback, exit 1) before the fix."""
    path = tmp_path / "x.gguf"
    path.write_bytes(_embedded_gguf().read_bytes()[:1000])
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["prunekit", "prune", str(path), "--remove", "1", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    printed = capsys.readouterr()
    text = (printed.out + printed.err).strip()
    assert "could not read the GGUF file" in text and "x.gguf" in text and "corrupted or truncated" in text
    assert len(text.splitlines()) == 1, text
    assert not out.exists()
