"""``export --format nemotron-nas``: the DeciLM / Llama-Nemotron-NAS config fields, checked against the
layout's documented semantics, the config class it ships, prunekit's reader, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from export_helpers import IDS, pruned_tiny
from prunekit.core.errors import PrunekitError
from prunekit.export import export
from prunekit.export.nemotron_nas import ffn_mult_to_intermediate_size, intermediate_size_to_ffn_mult
from prunekit.models.contract import ATTN, MLP, Block
from prunekit.pipeline.load import load_model


def _documented_intermediate(ffn_mult: float, hidden: int) -> int:
    """DeciLM's rule, written out independently: int(2 * ffn_mult * hidden / 3), rounded up to a multiple of 256."""
    n = int(2 * ffn_mult * hidden / 3)
    return -(-n // 256) * 256


def test_ffn_mult_rule_round_trips_every_multiple_of_256():
    for hidden in (64, 576, 960, 2048, 4096):
        for size in range(256, 16 * 1024 + 1, 256):
            mult = intermediate_size_to_ffn_mult(size, hidden)
            assert mult is not None and _documented_intermediate(mult, hidden) == size
            assert ffn_mult_to_intermediate_size(mult, hidden) == size
    assert ffn_mult_to_intermediate_size(4.0, 576) == 1536  # SmolLM2-135M's MLP
    assert intermediate_size_to_ffn_mult(96, 64) is None and intermediate_size_to_ffn_mult(1000, 576) is None


@pytest.fixture
def nas_model():
    """Tiny llama (hidden 64, 4 heads / 2 KV, MLP 256 = a width ffn_mult can give) with blocks and a layer removed."""
    loaded = pruned_tiny("llama", "blocks", intermediate_size=256, num_hidden_layers=5)
    loaded.adapter.remove_block(Block.of(3, ATTN))
    loaded.adapter.remove_block(Block.of(3, MLP))  # layer 3 removed whole
    return loaded


def test_config_fields_follow_the_format(nas_model, tmp_path):
    info = export(nas_model, "nemotron-nas", tmp_path / "nas")
    cfg = json.loads((tmp_path / "nas" / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas" and cfg["architectures"] == ["DeciLMForCausalLM"]
    assert cfg["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    assert (tmp_path / "nas" / "configuration_decilm.py").is_file()
    blocks = cfg["block_configs"]
    assert cfg["num_hidden_layers"] == len(blocks) == 4  # 5 layers, one removed whole
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    assert hidden // heads == 16  # head_dim implied by the format
    kept = [0, 1, 2, 4]  # source layers of the kept ones
    a = nas_model.adapter
    for k, (block, src) in enumerate(zip(blocks, kept)):
        attn, ffn = block["attention"], block["ffn"]
        assert attn["no_op"] == a.is_removed(Block.of(src, ATTN))
        if attn["no_op"]:
            assert attn["n_heads_in_group"] is None
        else:  # query heads per KV head
            geo = a.attention(src)
            assert attn["n_heads_in_group"] == geo.num_heads // geo.num_kv_heads and geo.num_heads == heads
        assert ffn["no_op"] == a.is_removed(Block.of(src, MLP))
        if not ffn["no_op"]:
            assert _documented_intermediate(ffn["ffn_mult"], hidden) == a.mlp(src).gate.out_features
        assert not attn["replace_with_linear"] and not ffn["replace_with_linear"]
    assert blocks[0]["attention"]["no_op"] and blocks[2]["ffn"]["no_op"]
    assert info["max_logit_diff"] <= 1e-5


def test_shipped_config_class_parses_with_attribute_access(nas_model, tmp_path):
    from transformers import AutoConfig

    export(nas_model, "nemotron-nas", tmp_path / "nas")
    cfg = AutoConfig.from_pretrained(tmp_path / "nas", trust_remote_code=True)
    assert cfg.model_type == "nemotron-nas"
    b = cfg.block_configs[1]
    assert b.attention.no_op is False and b.attention.n_heads_in_group == 2 and b.ffn.ffn_mult == 6.0
    assert not hasattr(b.ffn, "hidden_act")  # serving code probes optional fields with hasattr
    cfg.save_pretrained(tmp_path / "again")  # stays plain JSON
    assert json.loads((tmp_path / "again" / "config.json").read_text())["block_configs"][1]["ffn"]["ffn_mult"] == 6.0


def test_prunekit_reader_gives_the_same_logits(nas_model, tmp_path):
    export(nas_model, "nemotron-nas", tmp_path / "nas")
    back = load_model(str(tmp_path / "nas"), device="cpu")
    assert back.info["source"] == "export:nemotron-nas"
    with torch.no_grad():
        assert (back.model(input_ids=IDS).logits - nas_model.model(input_ids=IDS).logits).abs().max() <= 1e-5
    assert back.adapter.total_params() == nas_model.adapter.total_params()
    assert back.tokenizer is not None


@pytest.mark.parametrize("case, match", [
    ("qwen2", "Llama-family layout and this model is 'qwen2'"),
    ("heads", "keeps 2 of 4 query heads"),
    ("width", "MLP width 96, and ffn_mult only gives multiples of 256"),
])
def test_refuses_what_it_cannot_express(case, match, tmp_path):
    if case == "qwen2":
        loaded = pruned_tiny("qwen2", "blocks", intermediate_size=256)
    elif case == "heads":
        loaded = pruned_tiny("llama", "width", intermediate_size=256)
    else:
        loaded = pruned_tiny("llama", "blocks")  # intermediate 96
    with pytest.raises(PrunekitError, match=match) as err:
        export(loaded, "nemotron-nas", tmp_path / "nas")
    assert "`format` hf" in str(err.value)
    assert not (tmp_path / "nas").exists()
