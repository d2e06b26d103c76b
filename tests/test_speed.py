"""``bench``: interleaved dense/pruned timings with medians, the ideal speedup from MACs (checked against an
independent count from the modules), peak memory in a fresh process, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.evaluation.speed import BenchConfig, bench, macs_per_token
from prunekit.models.contract import ATTN, MLP, Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import save_tiny_checkpoint, tiny_model, tiny_tokenizer
from prunekit.pipeline.memory_probe import peak_memory


def _pair():
    dense = wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer())
    pruned = wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer())
    for b in (Block.of(1, ATTN), Block.of(1, MLP), Block.of(3, MLP)):
        pruned.adapter.remove_block(b)
    return dense, pruned


def _independent_macs(model: torch.nn.Module, keys: float) -> float:
    """Every Linear weight once (decoder + LM head), plus 2 x query width x keys per attention present."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attn = sum(2 * layer.self_attn.q_proj.out_features * keys for layer in model.model.layers
               if hasattr(layer.self_attn, "q_proj"))
    return linear + attn


def test_ideal_speedup_is_the_mac_ratio():
    dense, pruned = _pair()
    for t in (16, 128):
        keys = (t + 1) / 2
        assert macs_per_token(dense, t) == pytest.approx(_independent_macs(dense.model, keys))
        assert macs_per_token(pruned, t) == pytest.approx(_independent_macs(pruned.model, keys))
    res = bench(pruned, dense, BenchConfig(seq_lens=(16, 32), prompt_len=8, new_tokens=4, repeats=2))
    for row in res["prefill"]:
        assert row["ideal"] == pytest.approx(_independent_macs(dense.model, (row["seq_len"] + 1) / 2)
                                             / _independent_macs(pruned.model, (row["seq_len"] + 1) / 2))
        assert row["speedup"] == pytest.approx(row["pruned_tokens_per_s"] / row["dense_tokens_per_s"])
        assert row["of_ideal"] == pytest.approx(row["speedup"] / row["ideal"])
        assert row["dense_tokens_per_s"] > 0 and row["pruned_tokens_per_s"] > 0
    d = res["decode"]
    ctx = 8 + 4 / 2  # decode attends to the whole context: prompt + half the new tokens on average
    assert d["ideal"] == pytest.approx(_independent_macs(dense.model, ctx) / _independent_macs(pruned.model, ctx))
    assert res["models"]["pruned"]["parameters"] < res["models"]["dense"]["parameters"]


def test_runs_are_interleaved_and_medians(monkeypatch):
    import prunekit.evaluation.speed as speed

    dense, pruned = _pair()
    order, fake = [], iter(range(1, 1000))

    def fake_case(loaded, case, cfg):
        order.append(("dense" if loaded is dense else "pruned", case))
        return float(next(fake))

    monkeypatch.setattr(speed, "run_case", fake_case)
    med = speed.measure({"dense": dense, "pruned": pruned}, BenchConfig(seq_lens=(8,), repeats=3))
    timed = order[4:]  # after one warm-up of each case of each model
    assert [m for m, _ in timed] == ["dense", "pruned"] * 6
    # each (model, case) got 3 timings; its median is the middle one
    for name in ("dense", "pruned"):
        for case in (("prefill", 8), ("decode", 64)):
            got = [i + 5 for i, (m, c) in enumerate(timed) if (m, c) == (name, case)]
            assert med[name][case] == float(sorted(got)[1])


@pytest.mark.subprocess
def test_peak_memory_in_a_fresh_process(tmp_path):
    cfg = BenchConfig(seq_lens=(16,), prompt_len=8, new_tokens=2)
    small = peak_memory(str(save_tiny_checkpoint(tmp_path / "tiny")), cfg)
    assert small["peak_rss_bytes"] >= small["rss_after_load_bytes"] > 0
    # ~60 MB more float32 weights must show (the peak is the child's own, not inherited from this process)
    big = peak_memory(str(save_tiny_checkpoint(tmp_path / "big", vocab_size=20000, hidden_size=384, num_attention_heads=8,
                                               num_key_value_heads=4, num_hidden_layers=2)), cfg)
    assert big["peak_rss_bytes"] - small["peak_rss_bytes"] > 30e6


def test_config_validation():
    with pytest.raises(PrunekitError, match="`repeats` 0"):
        BenchConfig(repeats=0)
    with pytest.raises(PrunekitError, match="`seq_lens`"):
        BenchConfig(seq_lens=(0,))
    dense, pruned = _pair()
    with pytest.raises(PrunekitError, match="exceeds the model's 256 positions"):
        bench(pruned, dense, BenchConfig(seq_lens=(512,)))


def test_cli_bench_against_a_dense_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli.main import app

    dense = save_tiny_checkpoint(tmp_path / "dense")
    runner = CliRunner()
    res = runner.invoke(app, ["bench", str(dense), "--against", str(dense), "--seq-lens", "16,32", "--prompt-len", "8",
                              "--new-tokens", "4", "--repeats", "1", "--no-memory", "--device", "cpu",
                              "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "b.json").read_text())
    assert [r["seq_len"] for r in out["prefill"]] == [16, 32]
    assert out["prefill"][0]["ideal"] == pytest.approx(1.0)  # the same model on both sides
    assert "of ideal" in res.output
    bad = runner.invoke(app, ["bench", str(dense), "--seq-lens", "1x"])
    assert bad.exit_code != 0
