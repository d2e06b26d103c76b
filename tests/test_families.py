"""The block contract on every supported family: one contract class, one subclass per family.

Each family is a tiny random checkpoint built from transformers' own config class
(:data:`prunekit.models.tiny.FAMILY_OVERRIDES`: sliding and global layers, soft-caps, multipliers,
sparse and dense MoE layers) with random norm weights and biases (:func:`family_model`). The
checks: blocks alternate attention and MLP layer by layer, each inside its own decoder layer; the
blocks, the embedding, the final norm and the LM head hold every parameter (a tied weight counted
once); the adapter's projections (fused ones as row ranges) and routed experts have the config's
heads, KV heads, head size and MLP or expert widths; skipping blocks restores the model exactly and
removing them drops their weights; greedy decoding with the KV cache after layer 0's attention is
removed equals it without the cache, also for a left-padded batch (dynamic and static cache), row by
row; the engine's block-stepped perplexity equals ``model.forward``'s;
skipping or removing a zeroed block, or removing zeroed heads and MLP channels, leaves the logits
unchanged; the cached search makes the naive search's choices; and an hf export, reloaded in a fresh
process, computes the in-memory pruned model's logits and its greedy tokens under the KV cache, also
on a left-padded batch (one subprocess for all families).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import random_windows
from oracles import naive_greedy
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.engine import Engine, reference_nll
from prunekit.export import export
from prunekit.export.hf import build_export_model, export_hf
from prunekit.export.load_export import load_export
from prunekit.methods.depth.units import make_units, unit_name
from prunekit.methods.options import DepthConfig
from prunekit.methods.registry import depth_methods
from prunekit.methods.width.llm_pruner import families_for
from prunekit.methods.width.masks import build_units
from prunekit.methods.width.options import WidthConfig
from prunekit.models import ATTN, MLP, Block, Proj, get_adapter, supported_model_types
from prunekit.models.groups import attention_family, block_families, hidden_family
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import FAMILY_OVERRIDES, TINY_TEXT, family_model, tiny_tokenizer
from prunekit.pipeline.prune import prune, prune_width
from prunekit.pipeline.recover import RecoverConfig, attach_lora, merge_lora
from prunekit.plan.apply import apply_plan
from prunekit.plan.slicing import apply_width
from test_search import CONFIGS, _assert_same, _search

IDS = torch.tensor([[5, 9, 17, 33, 65, 120, 7, 200, 44, 3]])
NEW_TOKENS = 6
# a left-padded batch of two prompts: IDS and IDS reversed, the first PAD tokens of the second masked out
PAD = 3
BATCH = torch.cat([IDS, IDS.flip(1)])
BATCH_MASK = torch.ones_like(BATCH)
BATCH_MASK[1, :PAD] = 0

# Loads each export directory given on the command line in this fresh interpreter (no prunekit
# import) and prints, as JSON, its logits on IDS, its greedy tokens with the KV cache, and the new
# greedy tokens of the left-padded BATCH with the KV cache.
RELOAD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
inputs = json.loads(sys.argv[1])
ids, batch, mask, n = (torch.tensor(inputs[k]) for k in ("ids", "batch", "mask", "new_tokens"))
greedy = dict(max_new_tokens=int(n), min_new_tokens=int(n), do_sample=False)
out = {}
for path in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(ids, **greedy)
        padded = model.generate(batch, attention_mask=mask, pad_token_id=0, **greedy)
    out[path] = {"logits": logits.tolist(), "tokens": tokens[0].tolist(), "padded": padded[:, -int(n):].tolist()}
print(json.dumps(out))
"""


# "blocks" removes the attention of layers 0 and 1: the first full-attention layer of every family (Gemma's is 1)
CASES = {"layers": [Block.of(0, ATTN), Block.of(0, MLP)], "blocks": [Block.of(0, ATTN), Block.of(1, ATTN), Block.of(2, MLP)],
         "width": [Block.of(3, MLP)]}
EXPECTED_LAYOUT = {"layers": "stock", "blocks": "per-layer", "width": "per-layer"}
# hybrid families: exported and reloaded with their own cases (HybridContract at the end of this file)
HYBRID = {"qwen3_5_text", "qwen3_next", "nemotron_h"}
# "width" also slices KV group 0 of layer 1 and every other MLP channel of layer 2 (8 channels of every expert
# in a sparse MoE layer 2)
WIDTH = {"strategy": "block", "hidden": None,
         "layers": [{"layer": 1, "kv_heads": [1]}, {"layer": 2, "mlp_channels": list(range(0, 96, 2))}]}


def _pruned_outputs(model_type: str, case: str, to) -> tuple:
    """Export the family's model pruned as ``case`` says; its layout, logits on IDS, greedy tokens with
    and without the KV cache, and the new greedy tokens of each prompt of BATCH alone, unpadded, without it."""
    loaded = wrap_model(family_model(model_type), tiny_tokenizer())
    for b in CASES[case]:
        loaded.adapter.remove_block(b)
    if case == "width":
        ex = loaded.adapter.experts(2)
        width = WIDTH if ex is None else {"strategy": "block", "hidden": None, "layers": [
            {"layer": 1, "kv_heads": [1]}, {"layer": 2, "expert_channels": [list(range(8, ex.width))] * ex.num_experts}]}
        shared = loaded.adapter.shared_mlp(2)
        if shared is not None:  # DeepSeek's shared expert: every other channel
            width["layers"][1]["shared_channels"] = list(range(0, shared.gate.out_features, 2))
        apply_width(loaded.adapter, width)
    layout = export_hf(loaded, to, verify=False)["layout"]
    with torch.no_grad():
        logits = loaded.model(input_ids=IDS).logits
        tokens = loaded.model.generate(IDS, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        full = greedy_without_cache(loaded.model, IDS, NEW_TOKENS)
        alone = [greedy_without_cache(loaded.model, BATCH[:1], NEW_TOKENS), greedy_without_cache(loaded.model, BATCH[1:, PAD:], NEW_TOKENS)]
    return layout, logits, full[0].tolist(), tokens[0].tolist(), [a[0, -NEW_TOKENS:].tolist() for a in alone]


def greedy_without_cache(model: torch.nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """``ids`` and ``n`` greedy tokens, each from a full forward without the KV cache; EOS barred as
    ``generate``'s ``min_new_tokens`` bars it."""
    full = ids
    for _ in range(n):
        last = model(input_ids=full, use_cache=False).logits[:, -1:]
        last[..., model.generation_config.eos_token_id] = -torch.inf
        full = torch.cat([full, last.argmax(-1)], 1)
    return full


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Every family exported three times (CASES), all reloaded in one fresh interpreter (no prunekit)."""
    root = tmp_path_factory.mktemp("families")
    want: dict[str, dict] = {}
    paths = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model_type in supported_model_types():
            if model_type in HYBRID:  # their own cases (HybridContract.reloaded)
                continue
            for case in CASES:
                path = root / model_type / case
                want.setdefault(model_type, {})[case] = _pruned_outputs(model_type, case, path)
                paths[str(path)] = f"{model_type}/{case}"
    finally:
        torch.set_num_threads(threads)
    inputs = {"ids": IDS.tolist(), "batch": BATCH.masked_fill(BATCH_MASK == 0, 0).tolist(), "mask": BATCH_MASK.tolist(),
              "new_tokens": NEW_TOKENS}
    proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(inputs), *paths],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"want": want, "got": {paths[p]: v for p, v in got.items()}}


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 20)
    return str(path)


def zero_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def assert_rows_tiled(sublayer: torch.nn.Module, projs: tuple[Proj, ...]) -> None:
    """``projs`` describe every Linear of ``sublayer``, and the row ranges on each Linear (one
    range for a whole projection, several for a fused one) cover its rows once, in order."""
    linears = [m for m in sublayer.modules() if isinstance(m, torch.nn.Linear)]
    assert {id(m) for m in linears} == {id(p.module) for p in projs}
    for m in linears:
        ranges = sorted((p.start, p.stop) for p in projs if p.module is m)
        assert [r[0] for r in ranges] == [0] + [r[1] for r in ranges[:-1]] and ranges[-1][1] == m.weight.shape[0]
    for p in projs:
        assert p.weight.shape[0] == p.out_features > 0  # a range past the Linear's rows would be cut short
        assert p.bias is None or p.bias.shape == (p.out_features,)


class FamilyContract:
    model_type = "llama"
    moe = False
    llama_layout: tuple[str, ...] = ()  # formats in Llama's per-layer layout that write this family
    merge_tol = 1e-4  # LoRA merged vs unmerged logits (a Gated DeltaNet's chunked scan rounds more: 1e-3)

    @pytest.fixture(autouse=True)
    def _one_thread(self, one_thread):
        """Tiny models run fastest on one thread (conftest.one_thread)."""

    @pytest.fixture
    def model(self):
        return family_model(self.model_type)

    @pytest.fixture
    def ids(self):
        return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))

    def test_registry_picks_this_family(self, model):
        assert get_adapter(model).model_type == self.model_type == model.config.model_type

    def test_blocks_alternate_attn_mlp_layer_by_layer(self, model):
        a = get_adapter(model)
        n = model.config.num_hidden_layers
        blocks = a.blocks()
        assert a.num_layers == n and a.num_blocks == len(blocks) == 2 * n
        assert [(b.index, b.layer, b.kind) for b in blocks] == [(2 * i + j, i, k) for i in range(n) for j, k in enumerate((ATTN, MLP))]
        assert a.blocks(ATTN) == blocks[0::2] and a.blocks(MLP) == blocks[1::2]
        for b in blocks:  # a block's norms and sub-layer are modules of its own decoder layer, none shared with the other block
            own = {id(m) for m in a.layers[b.layer].modules()}
            other = {id(m) for m in a.block_modules(Block(b.index ^ 1))}
            assert all(id(m) in own and id(m) not in other for m in a.block_modules(b))

    @pytest.mark.parametrize("tied", [False, True])
    def test_blocks_embedding_head_and_final_norm_add_up_to_total_params(self, tied):
        model = family_model(self.model_type, tie_word_embeddings=tied)
        a = get_adapter(model)
        assert (a.lm_head.weight is a.embed.weight) == tied
        rest = {id(p): p.numel() for m in (a.embed, a.final_norm, a.lm_head) for p in m.parameters()}  # a tied weight once
        assert sum(a.block_params(b) for b in a.blocks()) + sum(rest.values()) == a.total_params()

    def test_projections_follow_the_config(self, model):
        """Heads, KV heads and head size of every layer's attention; each dense MLP's width, or each sparse
        MoE block's experts and expert width; the described projections are every Linear of their sub-layer."""
        a, c = get_adapter(model), model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        q_width, kv_width = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
        sparse = []
        for layer in range(a.num_layers):
            att = a.attention(layer)
            assert (att.num_heads, att.num_kv_heads, att.head_dim) == (c.num_attention_heads, c.num_key_value_heads, head_dim)
            assert [p.out_features for p in (att.q, att.k, att.v, att.o)] == [q_width, kv_width, kv_width, c.hidden_size]
            assert [p.in_features for p in (att.q, att.k, att.v, att.o)] == [c.hidden_size] * 3 + [q_width]
            assert_rows_tiled(a.sublayer(Block.of(layer, ATTN)), (att.q, att.k, att.v, att.o))
            sub, ex = a.sublayer(Block.of(layer, MLP)), a.experts(layer)
            assert any(p.dim() == 3 for p in sub.parameters()) == (ex is not None)  # the experts' 3-D weights
            if ex is None:
                m = a.mlp(layer)
                assert [m.gate.out_features, m.up.out_features, m.down.in_features, a.mlp_width(layer)] == [c.intermediate_size] * 4
                assert [m.gate.in_features, m.up.in_features, m.down.out_features] == [c.hidden_size] * 3
                assert_rows_tiled(sub, (m.gate, m.up, m.down))
                continue
            sparse.append(layer)
            width = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
            assert (ex.num_experts, ex.width, a.mlp_width(layer)) == (c.num_experts, width, width)
            if ex.interleaved:  # gpt-oss: gate_up [E, H, 2I] (gate and up columns interleaved), its bias [E, 2I], down [E, I, H]
                assert getattr(ex.module, ex.gate_up).shape == (c.num_experts, c.hidden_size, 2 * width)
                assert getattr(ex.module, ex.gate_up_bias).shape == (c.num_experts, 2 * width)
                assert getattr(ex.module, ex.down).shape == (c.num_experts, width, c.hidden_size)
            else:
                assert getattr(ex.module, ex.gate_up).shape == (c.num_experts, 2 * width, c.hidden_size)
                assert getattr(ex.module, ex.down).shape == (c.num_experts, c.hidden_size, width)
            assert any(m is ex.module for m in sub.modules())
            with pytest.raises(PrunekitError, match="experts"):
                a.mlp(layer)
        assert bool(sparse) == self.moe

    def test_skipping_restores_the_model_exactly(self, model, ids):
        a = get_adapter(model)
        a.remove_block(Block.of(2, MLP))  # removed before: still removed after
        modules = list(model.named_modules())
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            with a.skipping([Block(0), Block(3), Block.of(2, MLP)]):
                assert a.removed_blocks() == [Block(0), Block(3), Block.of(2, MLP)]
                changed = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
            with pytest.raises(RuntimeError, match="inside"), a.skipping([Block(1)]):
                raise RuntimeError("inside")
            again = model(input_ids=ids).logits
        assert not torch.allclose(changed, ref)
        torch.testing.assert_close(after, ref, rtol=0, atol=0)
        torch.testing.assert_close(again, ref, rtol=0, atol=0)
        assert a.removed_blocks() == [Block.of(2, MLP)]
        now = list(model.named_modules())
        assert [n for n, _ in now] == [n for n, _ in modules] and all(m is m0 for (_, m), (_, m0) in zip(now, modules))

    def test_remove_block_drops_its_weights(self, model):
        a = get_adapter(model)
        gone = [Block.of(2, ATTN), Block.of(3, MLP)]
        before, size = a.total_params(), sum(a.block_params(b) for b in gone)
        weights = [p for b in gone for m in a.block_modules(b) for p in m.parameters()]
        assert size == sum(p.numel() for p in weights) > 0 and a.removed_blocks() == []
        for b in gone + gone[:1]:  # removing a removed block again changes nothing
            a.remove_block(b)
        assert a.total_params() == before - size
        assert all(a.is_removed(b) and a.block_params(b) == 0 for b in gone)
        kept = {id(p) for p in model.parameters()}
        assert not any(id(p) in kept for p in weights)
        assert a.removed_blocks() == gone

    def test_generate_with_first_attention_removed_equals_greedy_without_cache(self, model, ids):
        """The removed attention (no weights) runs under ``generate``'s KV cache; one unpadded sequence whose
        prompt (12 tokens) is longer than the sliding window (4) of Gemma's sliding layers."""
        get_adapter(model).remove_block(Block.of(0, ATTN))
        with torch.no_grad():
            cached = model.generate(ids[:1], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            full = greedy_without_cache(model, ids[:1], NEW_TOKENS)
        assert cached.shape[1] == ids.shape[1] + NEW_TOKENS
        assert torch.equal(cached, full)

    @pytest.mark.parametrize("cache", ["dynamic", "static"])
    @pytest.mark.parametrize("removed", [(0,), (0, 1)])
    def test_left_padded_batch_with_attention_removed_generates_each_row_alone(self, model, ids, removed, cache):
        """Two prompts (12 and 9 tokens), the shorter left-padded, through ``generate`` with the KV cache
        (dynamic or static) after the attention of layer 0 (the first full-attention layer in most families),
        or of layers 0 and 1 (Gemma's first full-attention layer is 1), is removed: each row's new tokens
        are its greedy tokens alone, unpadded, without the cache. The mask's size comes from the first
        full-attention layer's cache length, so a removed attention must keep that length right."""
        for layer in removed:
            get_adapter(model).remove_block(Block.of(layer, ATTN))
        pad = 3
        mask = torch.ones_like(ids)
        mask[1, :pad] = 0
        padded = ids.masked_fill(mask == 0, 0)
        with torch.no_grad():
            batch = model.generate(padded, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                   do_sample=False, pad_token_id=0, cache_implementation=cache)
            alone = [greedy_without_cache(model, ids[:1], NEW_TOKENS), greedy_without_cache(model, ids[1:, pad:], NEW_TOKENS)]
        for row, want in zip(batch, alone):
            assert row[-NEW_TOKENS:].tolist() == want[0, -NEW_TOKENS:].tolist()

    def test_engine_perplexity_equals_forward(self, model):
        adapter = get_adapter(model)
        w = random_windows(4, 12)
        engine = Engine(adapter, w, batch_size=2)
        with torch.inference_mode():
            ref = sum(reference_nll(model(input_ids=ids).logits, ids, None) for ids in w.ids.split(2))
        assert math.isclose(engine.total_score(frozenset()), ref, rel_tol=1e-5)

    def test_block_stepping_with_removed_blocks_equals_forward(self, model, ids):
        a = get_adapter(model)
        removed = [Block.of(0, ATTN), Block.of(2, MLP)]
        h, kwargs = a.capture_inputs(ids)
        with torch.inference_mode(), a.skipping(removed):
            ref = model(input_ids=ids).logits
            for b in a.blocks():
                if b not in removed:
                    h = a.run_block(b, h, kwargs[b.layer])
            ours = a.logits(h)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    @staticmethod
    def present(a, kind: str, start: int = 1) -> Block:
        """The block of ``kind`` at layer ``start`` (hybrid families: the first such block their layers hold)."""
        return Block.of(start, kind)

    @pytest.mark.parametrize("kind", [ATTN, MLP])
    def test_skipping_or_removing_a_zeroed_block_leaves_logits_unchanged(self, model, ids, kind):
        """A zeroed attention (mixer) or MLP block, skipped or removed, leaves the logits unchanged."""
        a = get_adapter(model)
        block = self.present(a, kind)
        zero_(a.sublayer(block))
        params = a.total_params()
        with torch.no_grad():
            before = model(input_ids=ids).logits
            with a.skipping([block]):
                skipped = model(input_ids=ids).logits
            a.remove_block(block)
            after = model(input_ids=ids).logits
        torch.testing.assert_close(skipped, before, rtol=0, atol=1e-6)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        assert a.total_params() < params and a.block_params(block) == 0  # its norms and sub-layer are gone

    def test_removing_zeroed_heads_and_channels_leaves_logits_unchanged(self, model, ids):
        a = get_adapter(model)
        if self.moe:
            with pytest.raises(PrunekitError, match="mixture-of-experts"):
                families_for(a, WidthConfig(strategy="channel"))
            return self._zeroed_experts(a, ids)
        att, mlp = a.attention(1), a.mlp(2)
        hd, rep = att.head_dim, att.num_heads // att.num_kv_heads
        with torch.no_grad():  # KV group 0 of layer 1 (its q, k, v rows and o columns); channels 3 and 7 of layer 2
            for proj, rows in ((att.q, rep * hd), (att.k, hd), (att.v, hd)):
                proj.weight[:rows] = 0
                if proj.bias is not None:
                    proj.bias[:rows] = 0
            att.o.weight[:, : rep * hd] = 0
            mlp.gate.weight[[3, 7]] = 0
            mlp.up.weight[[3, 7]] = 0
            mlp.down.weight[:, [3, 7]] = 0
            before = model(input_ids=ids).logits
        width = mlp.gate.out_features
        fams = {f.kind: f for f in block_families(a, 1, 3) if (f.kind, f.layer) in (("attn", 1), ("mlp", 2))}
        expected = a.total_params() - fams["attn"].params_per_structure - 2 * fams["mlp"].params_per_structure
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [
            {"layer": 1, "kv_heads": list(range(1, att.num_kv_heads))},
            {"layer": 2, "mlp_channels": [j for j in range(width) if j not in (3, 7)]},
        ]})
        with torch.no_grad():
            after = model(input_ids=ids).logits
        assert a.attention(1).num_heads == att.num_heads - rep and a.mlp_width(2) == width - 2
        assert a.total_params() == expected
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    def _zeroed_experts(self, a, ids):
        """Channels 0..7 of every routed expert of layer 2, zeroed, then sliced away: the logits stay."""
        ex = a.experts(2)
        gate_up, down = getattr(ex.module, ex.gate_up), getattr(ex.module, ex.down)
        with torch.no_grad():
            if ex.interleaved:  # gpt-oss: channels 0..7 are gate_up columns 0..15 (gate, up, gate, ...) and their biases
                gate_up[:, :, :16] = 0
                getattr(ex.module, ex.gate_up_bias)[:, :16] = 0
                down[:, :8] = 0
            else:
                gate_up[:, :8] = 0
                gate_up[:, ex.width: ex.width + 8] = 0
                down[:, :, :8] = 0
            before = a.model(input_ids=ids).logits
        fams = [f for f in block_families(a, 2, 3) if f.expert is not None]
        expected = a.total_params() - 8 * sum(f.params_per_structure for f in fams)
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [
            {"layer": 2, "expert_channels": [list(range(8, ex.width))] * ex.num_experts}]})
        with torch.no_grad():
            after = a.model(input_ids=ids).logits
        assert a.mlp_width(2) == ex.width - 8 and a.total_params() == expected
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    def test_hidden_channels_keep_the_embedding_scale(self, model, ids, tmp_path):
        a = get_adapter(model)
        if self.moe:
            return
        h0, _ = a.capture_inputs(ids)
        kept = list(range(0, model.config.hidden_size, 2))
        fam = hidden_family(a)  # its accounting (what the channel strategy budgets with) is what slicing removes
        expected = a.total_params() - (fam.n - len(kept)) * fam.params_per_structure
        apply_width(a, {"strategy": "channel", "layers": [], "hidden": kept})
        assert a.total_params() == expected
        h1, _ = a.capture_inputs(ids)
        torch.testing.assert_close(h1, h0[..., kept])  # the embedding's own scale (Gemma's sqrt(hidden)) is kept
        if a.hidden_resize_refusal:
            with pytest.raises(PrunekitError, match="hidden"):
                export_hf(wrap_model(model, tiny_tokenizer()), tmp_path / "hf")

    def test_cached_search_equals_naive(self, model):
        adapter = get_adapter(model)
        w = random_windows(4, 12)
        units = make_units(adapter, "mix")
        ref = naive_greedy(adapter, w, units, 2, None, batch_size=2)
        for cache, early_exit, budget in (CONFIGS[0], CONFIGS[-1]):
            got, _, _ = _search(adapter, w, units, 2, cache=cache, early_exit=early_exit, budget=budget)
            _assert_same(got, ref)
        assert [unit_name(u) for u, _ in ref]

    def test_llm_pruner_plans_and_applies(self, calib_file):
        """Taylor importance from calibration gradients, the uniform choice, the plan re-applied to the base model."""
        base = family_model(self.model_type, vocab_size=300)
        loaded = wrap_model(copy.deepcopy(base), tiny_tokenizer(300))
        res = prune_width(loaded, WidthConfig(ratio=0.2, samples=2), CalibConfig(source=calib_file, seq_len=16))
        assert res.plan["width"]["layers"] and res.loaded.adapter.total_params() == res.plan["params_after"]
        again = apply_plan(base, res.plan)
        assert again.total_params() == res.plan["params_after"]
        with torch.no_grad():
            torch.testing.assert_close(base(input_ids=IDS).logits, res.loaded.model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)
        if self.moe:  # every routed expert of a layer keeps the same count, a multiple of 8
            for entry in res.plan["width"]["layers"]:
                counts = {len(k) for k in entry.get("expert_channels", [[0] * 8])}
                assert len(counts) == 1 and counts.pop() % 8 == 0

    def test_lora_recovery_trains_and_merges(self, model, ids):
        a = get_adapter(model)
        a.remove_block(Block.of(1, MLP))
        params = a.total_params()
        peft_model = attach_lora(model, a, RecoverConfig(lora_r=2, lora_alpha=4, lora_dropout=0.0))
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        assert trainable
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        with torch.no_grad():
            for p in trainable:
                p -= 0.5 * p.grad
            tuned = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model)
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits, tuned, rtol=self.merge_tol, atol=self.merge_tol)
        assert get_adapter(merged).total_params() == params

    def test_llama_layout_exports_or_a_refusal_naming_hf(self, tmp_path):
        """gguf (deci) and nemotron-nas: written and verified (Phi-3 split, Granite folded), or refused naming hf."""
        model = family_model(self.model_type, vocab_size=300, intermediate_size=256, tie_word_embeddings=True)
        loaded = wrap_model(model, tiny_tokenizer(300))
        loaded.adapter.remove_block(Block.of(0, ATTN))
        loaded.adapter.remove_block(Block.of(2, MLP))
        written = set()
        for fmt, to in (("gguf", tmp_path / "m.gguf"), ("nemotron-nas", tmp_path / "nas")):
            try:
                result = export(loaded, fmt, to, **({"gguf_type": "f32"} if fmt == "gguf" else {}))
            except PrunekitError as e:
                assert "`format` hf" in str(e) and not to.exists()
                if loaded.adapter.llama_layout_refusal:
                    assert loaded.adapter.llama_layout_refusal in str(e)
                continue
            assert result["max_logit_diff"] <= 1e-4
            written.add(fmt)
        assert written == set(self.llama_layout)
        if "gguf" in written:  # read back as the Llama model it was written as: the pruned model's logits
            back = load_export(tmp_path / "m.gguf").model
            with torch.no_grad():
                torch.testing.assert_close(back(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=1e-4, atol=1e-4)

    @pytest.mark.subprocess
    def test_export_reloads_in_a_fresh_process(self, reloaded):
        """Whole layer 0 removed (stock layout: per-layer types renumbered), blocks removed, and heads and MLP
        channels sliced (per-layer layout: the fused projections and all-head norms resized). Reloaded, a
        left-padded batch of two prompts generates each prompt's greedy tokens alone (the "blocks" case has no
        attention in layers 0 and 1: the remote code's own zero attention must keep the cache's length right)."""
        for case, (layout, logits, tokens, cached, alone) in reloaded["want"][self.model_type].items():
            assert layout == EXPECTED_LAYOUT[case]
            assert cached == tokens  # in memory: greedy with the KV cache == greedy without it
            got = reloaded["got"][f"{self.model_type}/{case}"]
            torch.testing.assert_close(torch.tensor(got["logits"]), logits, rtol=1e-5, atol=1e-5)
            assert got["tokens"] == tokens
            assert got["padded"] == alone


class TestLlama(FamilyContract):
    model_type = "llama"
    llama_layout = ("gguf", "nemotron-nas")


class TestMistral(FamilyContract):
    model_type = "mistral"
    llama_layout = ("gguf",)


class TestQwen2(FamilyContract):
    model_type = "qwen2"
    llama_layout = ("gguf",)

    def test_q_k_v_have_biases(self, model):
        """Qwen2's q, k and v projections have biases, one per output row; o has none."""
        a = get_adapter(model)
        for layer in range(a.num_layers):
            att = a.attention(layer)
            assert all(p.bias is not None and p.bias.shape == (p.out_features,) for p in (att.q, att.k, att.v))
            assert att.o.bias is None


class TestQwen3(FamilyContract):
    model_type = "qwen3"


class TestGemma2(FamilyContract):
    model_type = "gemma2"


class TestGemma3Text(FamilyContract):
    model_type = "gemma3_text"


class TestPhi3(FamilyContract):
    model_type = "phi3"
    llama_layout = ("gguf", "nemotron-nas")


class TestOlmo2(FamilyContract):
    model_type = "olmo2"


class TestGranite(FamilyContract):
    model_type = "granite"
    llama_layout = ("gguf", "nemotron-nas")


class TestMixtral(FamilyContract):
    model_type = "mixtral"
    moe = True


class TestQwen2Moe(FamilyContract):
    model_type = "qwen2_moe"
    moe = True


class TestQwen3Moe(FamilyContract):
    model_type = "qwen3_moe"
    moe = True


def test_every_family_is_tested_and_registered():
    tested = {cls.model_type for cls in FamilyContract.__subclasses__()}
    assert tested == set(supported_model_types()) == set(FAMILY_OVERRIDES)


def test_unknown_model_type_is_refused_with_the_supported_list():
    model = family_model("llama")
    model.config.model_type = "phi"
    with pytest.raises(PrunekitError) as e:
        get_adapter(model)
    assert all(name in str(e.value) for name in supported_model_types())


# --- hybrid families (issue 30): the mixer slot holds attention, a Gated DeltaNet or a Mamba2 mixer -----------------

def _cached_step_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The last position's logits from a cached forward: the prompt but its last token, then that token alone
    with the cache and no position ids (so the model numbers it from the cache's length, read from slot 0)."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], use_cache=True)
        return model(input_ids=ids[:, -1:], cache=out.cache, use_cache=True).logits[:, -1]


class HybridContract:
    """What a hybrid family checks beyond (or instead of) the contract: every mixer kind in the mixer slot.

    ``first_attention``: the layer of the first full-attention mixer; ``linear_layer``: a layer whose mixer is
    linear; ``export_cases``: name -> (blocks removed, expected hf layout): the first mixer, the first
    full-attention mixer, and a whole layer."""

    first_attention = 1
    linear_layer = 0
    export_cases: dict = {}
    export_width: dict | None = None  # a width record exported as the "width" case (per-layer)

    @pytest.fixture(scope="class")
    @classmethod
    def reloaded(cls, request, tmp_path_factory):
        """The family exported once per case (and width-pruned when ``export_width``), all reloaded in one fresh
        interpreter (no prunekit): its logits, greedy tokens with the hybrid cache, and a left-padded batch."""
        root = tmp_path_factory.mktemp(cls.model_type)
        cases = {name: blocks for name, (blocks, _) in cls.export_cases.items()}
        if cls.export_width is not None:
            cases["width"] = []
        want, paths = {}, {}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for case, blocks in cases.items():
                loaded = wrap_model(family_model(cls.model_type), tiny_tokenizer())
                for b in blocks:
                    loaded.adapter.remove_block(Block(b))
                if case == "width":
                    apply_width(loaded.adapter, cls.export_width)
                path = root / case.replace(" ", "_")
                layout = export_hf(loaded, path, verify=False)["layout"]
                with torch.no_grad():
                    logits = loaded.model(input_ids=IDS).logits
                    tokens = loaded.model.generate(IDS, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
                    full = greedy_without_cache(loaded.model, IDS, NEW_TOKENS)
                    alone = [greedy_without_cache(loaded.model, BATCH[:1], NEW_TOKENS),
                             greedy_without_cache(loaded.model, BATCH[1:, PAD:], NEW_TOKENS)]
                want[case] = (layout, logits, full[0].tolist(), tokens[0].tolist(), [a[0, -NEW_TOKENS:].tolist() for a in alone])
                paths[str(path)] = case
        finally:
            torch.set_num_threads(threads)
        inputs = {"ids": IDS.tolist(), "batch": BATCH.masked_fill(BATCH_MASK == 0, 0).tolist(), "mask": BATCH_MASK.tolist(),
                  "new_tokens": NEW_TOKENS}
        proc = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(inputs), *paths], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"want": want, "got": {paths[p]: v for p, v in got.items()}}

    @pytest.mark.subprocess
    def test_export_reloads_in_a_fresh_process(self, reloaded):
        """The first mixer, the first full-attention mixer, or a whole layer removed (and widths sliced): reloaded by
        transformers alone, the export computes the in-memory model's logits and its greedy tokens under the hybrid
        cache, and a left-padded batch generates each prompt's greedy tokens alone."""
        layouts = {name: layout for name, (_, layout) in self.export_cases.items()} | {"width": "per-layer"}
        assert set(reloaded["want"]) == set(self.export_cases) | ({"width"} if self.export_width is not None else set())
        for case, (layout, logits, tokens, cached, alone) in reloaded["want"].items():
            assert layout == layouts[case], case
            assert cached == tokens, case  # in memory: greedy with the hybrid cache == greedy without it
            got = reloaded["got"][case]
            torch.testing.assert_close(torch.tensor(got["logits"]), logits, rtol=1e-5, atol=1e-5)
            assert got["tokens"] == tokens, case
            assert got["padded"] == alone, case

    def test_export_reads_back_through_prunekit(self, tmp_path):
        """A per-layer export (the last layer's mixer removed and widths sliced, or else the first mixer removed) read
        back by prunekit's own reader: the same logits and parameters."""
        loaded = wrap_model(family_model(self.model_type), tiny_tokenizer())
        last = Block.of(loaded.adapter.num_layers - 1, ATTN)
        loaded.adapter.remove_block(last if self.export_width is not None else Block(0))
        if self.export_width is not None:
            apply_width(loaded.adapter, self.export_width)
        assert export_hf(loaded, tmp_path / "hf")["layout"] == "per-layer"
        back = load_export(tmp_path / "hf")
        with torch.no_grad():
            torch.testing.assert_close(back.model(input_ids=IDS).logits, loaded.model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)
        assert back.adapter.total_params() == loaded.adapter.total_params()

    def test_blocks_alternate_attn_mlp_layer_by_layer(self, model):
        """Mixer blocks ``2i`` (each kind its own sub-layer, by the layer's type), feed-forward blocks ``2i + 1``."""
        a = get_adapter(model)
        blocks = a.blocks()
        assert a.num_blocks == len(blocks) == 2 * a.num_layers == 2 * model.config.num_hidden_layers
        kinds = [a.mixer_kind(i) for i in range(a.num_layers)]
        assert kinds[self.first_attention] == "attention" and kinds[self.linear_layer] == "linear"
        for b in blocks:
            if a.is_absent(b):
                assert a.is_removed(b) and a.block_params(b) == 0
                continue
            own = {id(m) for m in a.layers[b.layer].modules()}
            assert all(id(m) in own for m in a.block_modules(b))

    @staticmethod
    def present(a, kind: str, start: int = 1) -> Block:
        """The first block of ``kind`` at layer ``start`` or later that the layer holds (a one-block layer's other slot is absent)."""
        return next(Block.of(i, kind) for i in range(start, a.num_layers) if not a.is_absent(Block.of(i, kind)))

    def test_skipping_restores_the_model_exactly(self, model, ids):
        a = get_adapter(model)
        mlp, later = self.present(a, MLP, 2), self.present(a, MLP, 1)
        a.remove_block(mlp)
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            with a.skipping([Block(0), later, mlp]):
                assert a.removed_blocks() == sorted({Block(0), later, mlp})
                changed = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
        assert not torch.allclose(changed, ref)
        torch.testing.assert_close(after, ref, rtol=0, atol=0)
        assert a.removed_blocks() == [mlp]

    def test_removing_zeroed_heads_and_channels_leaves_logits_unchanged(self, model, ids):
        a = get_adapter(model)
        if a.width_refusal:  # refused in one line, naming why
            with pytest.raises(PrunekitError, match=a.width_refusal.split(":")[0][:40]):
                families_for(a, WidthConfig())
            with pytest.raises(PrunekitError, match="depth plan"):
                apply_width(a, {"strategy": "block", "hidden": None, "layers": []})
            return
        if self.moe:  # routed experts' channels (the linear mixers' groups: test_zeroed_linear_mixer_groups_are_removed_exactly)
            return self._zeroed_experts(a, ids)
        FamilyContract.test_removing_zeroed_heads_and_channels_leaves_logits_unchanged(self, model, ids)

    def test_llm_pruner_plans_and_applies(self, calib_file):
        if get_adapter(family_model(self.model_type)).width_refusal:
            return  # test_removing_zeroed_heads_and_channels_leaves_logits_unchanged checks the refusal
        FamilyContract.test_llm_pruner_plans_and_applies(self, calib_file)

    def test_projections_follow_the_config(self, model):
        """Attention layers: the gated q rows (``[q_h | gate_h]`` per head); linear layers: their head counts."""
        a, c = get_adapter(model), model.config
        for layer in range(a.num_layers):
            if a.mixer_kind(layer) == "attention":
                att = a.attention(layer)
                assert (att.num_heads, att.num_kv_heads, att.head_dim) == (c.num_attention_heads, c.num_key_value_heads, c.head_dim)
                assert att.q.out_features == att.q_rows_per_head * att.num_heads * att.head_dim
                assert att.o.in_features == att.num_heads * att.head_dim
            elif a.mixer_kind(layer) == "linear":
                assert a.head_counts(layer) == self.linear_counts(c)

    def linear_counts(self, config) -> tuple[int, int]:
        return config.linear_num_value_heads, config.linear_num_key_heads

    @pytest.mark.parametrize("which", ["first", "attention"])
    def test_cached_step_after_a_removed_mixer_equals_the_full_forward(self, model, ids, which):
        """The first mixer (a linear one: its cache slot 0 numbers positions) or the first full-attention mixer
        (its slot sizes the mask) removed: one decode step with the cache equals the full forward (to 1e-3: the decode
        step runs the recurrent form of a linear mixer, the full forward its chunked form; a position numbered from 0
        again moves the logits by about 1)."""
        block = Block.of(0 if which == "first" else self.first_attention, ATTN)
        get_adapter(model).remove_block(block)
        with torch.no_grad():
            full = model(input_ids=ids).logits[:, -1]
        torch.testing.assert_close(_cached_step_logits(model, ids), full, rtol=1e-3, atol=1e-3)

    @pytest.mark.parametrize("cache", ["dynamic"])
    @pytest.mark.parametrize("removed", [(0,), (0, 1)])
    def test_left_padded_batch_with_attention_removed_generates_each_row_alone(self, model, ids, removed, cache):
        """The contract's check with the first mixer, and with the first two mixers, removed (the dynamic hybrid
        cache: one slot per layer type)."""
        FamilyContract.test_left_padded_batch_with_attention_removed_generates_each_row_alone(self, model, ids, removed, cache)

    def test_zeroed_linear_mixer_groups_are_removed_exactly(self, model, ids):
        """Key-head group 0 of a linear mixer with its output columns zeroed, sliced away: the logits stay, and the
        parameters fall by the family's count."""
        a = get_adapter(model)
        if a.width_refusal:
            return  # test_removing_zeroed_heads_and_channels_leaves_logits_unchanged checks the refusal
        layer = self.linear_layer
        fam = next(f for f in block_families(a, layer, layer + 1) if f.kind == ATTN)
        out = next(p for p in fam.parts if p.role == "out")
        heads, kv = a.head_counts(layer)
        with torch.no_grad():
            out.param[:, out.index[0]] = 0
            before = model(input_ids=ids).logits
        expected = a.total_params() - fam.params_per_structure
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [{"layer": layer, "kv_heads": list(range(1, kv))}]})
        with torch.no_grad():
            after = model(input_ids=ids).logits
        assert a.head_counts(layer) == (heads - heads // kv, kv - 1) and a.total_params() == expected
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_cached_step_logits(model, ids), after[:, -1], rtol=1e-3, atol=1e-3)

    def test_hidden_channels_keep_the_embedding_scale(self, model, ids, tmp_path):
        """The hidden-channel strategy is refused in one line (the linear mixers' projections are not sliced)."""
        a = get_adapter(model)
        with pytest.raises(PrunekitError, match="hidden" if not a.width_refusal else "no exact slice"):
            families_for(a, WidthConfig(strategy="channel"))

    def test_depth_methods_plan_on_the_hybrid(self, calib_file):
        """Every depth method of the registry plans on the family and its plan applies to the base model."""
        for method in depth_methods():
            base = family_model(self.model_type, vocab_size=300)
            loaded = wrap_model(copy.deepcopy(base), tiny_tokenizer(300))
            res = prune(loaded, DepthConfig(method=method, remove=2), CalibConfig(source=calib_file, seq_len=16, windows=2))
            assert len(res.plan["removed"]) >= 1, method
            assert apply_plan(base, res.plan).total_params() == res.plan["params_after"], method


class TestQwen3_5Text(HybridContract, FamilyContract):
    """Layers: Gated DeltaNet, attention, Gated DeltaNet, attention."""

    model_type = "qwen3_5_text"
    export_cases = {"first mixer": ([0], "per-layer"), "first attention": ([2], "per-layer"), "layer": ([0, 1], "stock")}
    # key-head group 1 of layer 0's Gated DeltaNet, KV group 1 of layer 1's gated attention, MLP channels of layer 2
    export_width = {"strategy": "block", "hidden": None, "layers": [
        {"layer": 0, "kv_heads": [0]}, {"layer": 1, "kv_heads": [0]}, {"layer": 2, "mlp_channels": list(range(0, 96, 3))}]}


class TestNemotronH(HybridContract, FamilyContract):
    """One block per layer: Mamba2, MoE, attention, MLP, Mamba2, MoE."""

    model_type = "nemotron_h"
    first_attention = 2
    # the first mixer removed: the kept layers would start with the MoE layer, whose cache slot has no length, so the
    # export writes layer 0 as a zero Mamba2; the only attention layer removed: written as a zero attention (the mask
    # is sized from it); the first MoE layer removed: a stock config with layers_block_type renumbered
    export_cases = {"first mixer": ([0], "per-layer"), "first attention": ([4], "per-layer"), "layer": ([3], "stock")}

    def linear_counts(self, config) -> tuple[int, int]:
        return config.mamba_num_heads, config.n_groups

    @pytest.mark.parametrize("tied", [False])  # NemotronH declares no tied weights: tie_word_embeddings ties nothing
    def test_blocks_embedding_head_and_final_norm_add_up_to_total_params(self, tied):
        FamilyContract.test_blocks_embedding_head_and_final_norm_add_up_to_total_params(self, tied)


class TestQwen3Next(HybridContract, FamilyContract):
    """Layers: Gated DeltaNet + MoE, attention + dense MLP, Gated DeltaNet + MoE, attention + MoE."""

    model_type = "qwen3_next"
    moe = True
    merge_tol = 1e-3
    export_cases = {"first mixer": ([0], "per-layer"), "first attention": ([2], "per-layer"), "layer": ([0, 1], "stock")}
    # key-head group 1 of layer 0's Gated DeltaNet (fused per key head), KV group 1 and MLP channels of layer 1,
    # channels 16.. of every routed expert of layer 2
    export_width = {"strategy": "block", "hidden": None, "layers": [
        {"layer": 0, "kv_heads": [0]}, {"layer": 1, "kv_heads": [0], "mlp_channels": list(range(0, 96, 3))},
        {"layer": 2, "expert_channels": [list(range(16))] * 4}]}


@pytest.mark.parametrize("model_type", sorted(HYBRID))
def test_policy_gradient_refuses_a_hybrid_in_one_line(model_type):
    """policy-gradient masks o_proj's query-head inputs: a linear mixer (or a family refused in width) is refused."""
    a = get_adapter(family_model(model_type))
    with pytest.raises(PrunekitError, match="llm-pruner|depth method"):
        build_units(a, 0, a.num_layers, mixed=False)


class TestGptOss(FamilyContract):
    """Attention sinks (one per query head) and biases on q/k/v/o, sliding and full layers alternating, a
    sparse MoE block in every layer whose experts interleave gate and up columns (with biases)."""

    model_type = "gpt_oss"
    moe = True

    def test_sinks_go_with_their_query_heads(self, model, ids):
        """Removing KV group 0 of layer 1 removes its query heads' sinks (and q, k, v rows with their biases, o
        columns): the kept heads keep their own sinks, and zeroed heads removed leave the logits."""
        a = get_adapter(model)
        att = a.attention(1)
        attn = a.sublayer(Block.of(1, ATTN))
        rep, hd = att.num_heads // att.num_kv_heads, att.head_dim
        sinks = attn.sinks.detach().clone()
        with torch.no_grad():
            att.o.weight[:, : rep * hd] = 0  # group 0's heads write nothing, whatever their sinks and values
            before = model(input_ids=ids).logits
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [{"layer": 1, "kv_heads": list(range(1, att.num_kv_heads))}]})
        assert torch.equal(attn.sinks.detach(), sinks[rep:]) and attn.q_proj.bias.shape == (att.num_heads * hd - rep * hd,)
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)

    def test_removed_mlp_returns_a_pair(self, model, ids):
        """gpt-oss's decoder layer unpacks ``hidden, _ = self.mlp(...)``: the removed MLP's stand-in returns a pair
        (a bare tensor would be unpacked along the batch)."""
        a = get_adapter(model)
        a.remove_block(Block.of(1, MLP))
        with torch.no_grad():
            out = model(input_ids=ids).logits
            h, kwargs = a.capture_inputs(ids)
            for b in a.blocks():
                if not a.is_removed(b):
                    h = a.run_block(b, h, kwargs[b.layer])
        assert out.shape == (*ids.shape, model.config.vocab_size)
        torch.testing.assert_close(a.logits(h), out, rtol=1e-5, atol=1e-5)



class TestDeepseekV3(FamilyContract):
    """Multi-head latent attention (per-head rows in q_b_proj and kv_b_proj, o columns of the value width), two
    dense layers then sparse MoE blocks with group-limited routing and a shared expert."""

    model_type = "deepseek_v3"
    moe = True

    def test_projections_follow_the_config(self, model):
        """Each head owns ``qk_nope + qk_rope`` rows of q_b_proj, ``qk_nope + v`` rows of kv_b_proj and ``v`` columns
        of o_proj; layers below ``first_k_dense_replace`` are dense, the others sparse with the config's experts."""
        a, c = get_adapter(model), model.config
        for layer in range(a.num_layers):
            att, attn = a.attention(layer), a.sublayer(Block.of(layer, ATTN))
            assert (att.k, att.v) == (None, None) and att.q.module is attn.q_b_proj and att.kv.module is attn.kv_b_proj
            assert (att.num_heads, att.num_kv_heads) == (c.num_attention_heads, c.num_attention_heads)
            assert (att.head_dim, att.kv_head_dim, att.o_width) == (c.qk_nope_head_dim + c.qk_rope_head_dim,
                                                                   c.qk_nope_head_dim + c.v_head_dim, c.v_head_dim)
            assert (att.q.out_features, att.kv.out_features, att.o.in_features) == (
                c.num_attention_heads * att.head_dim, c.num_attention_heads * att.kv_head_dim, c.num_attention_heads * c.v_head_dim)
            assert att.value_rows(1)[1] == slice(att.kv_head_dim + c.qk_nope_head_dim, 2 * att.kv_head_dim)
            ex = a.experts(layer)
            assert (ex is None) == (layer < c.first_k_dense_replace)
            if ex is None:
                assert a.mlp_width(layer) == c.intermediate_size
            else:
                assert (ex.num_experts, ex.width) == (c.n_routed_experts, c.moe_intermediate_size)
                assert getattr(ex.module, ex.gate_up).shape == (c.n_routed_experts, 2 * ex.width, c.hidden_size)

    def test_zeroed_latent_heads_removed_leave_logits_unchanged(self, model, ids):
        """Head 1 of layer 2 writes nothing (its o columns zeroed): removing it (its q_b_proj rows, kv_b_proj rows
        and o columns) leaves the logits, and the shared latent projections stay whole."""
        a = get_adapter(model)
        att, c = a.attention(2), model.config
        with torch.no_grad():
            att.o.weight[:, c.v_head_dim: 2 * c.v_head_dim] = 0
            before = model(input_ids=ids).logits
        fam = attention_family(a, 2)
        expected = a.total_params() - fam.params_per_structure
        assert fam.params_per_structure == (att.head_dim * c.q_lora_rank + att.kv_head_dim * c.kv_lora_rank
                                            + c.v_head_dim * c.hidden_size)
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [{"layer": 2, "kv_heads": [0, 2, 3]}]})
        with torch.no_grad():
            after = model(input_ids=ids).logits
        assert a.attention(2).num_heads == 3 and a.total_params() == expected
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    def test_kept_dense_layers_stay_dense(self, model):
        """An export keeping layers 1..3 (layer 1 dense, 2 and 3 sparse) writes first_k_dense_replace 1."""
        a = get_adapter(model)
        assert a.kept_layers_config([1, 2, 3])["first_k_dense_replace"] == 1
        assert a.kept_layers_config([2, 3])["first_k_dense_replace"] == 0
        assert a.kept_layers_config([0, 1, 3])["first_k_dense_replace"] == 2

    def test_query_without_a_latent_prunes_and_exports(self):
        """``q_lora_rank`` None: one q_proj instead of q_a_proj / q_b_proj; its per-head rows are sliced with the head,
        and the per-layer export (built in memory from the facts) computes the pruned model's logits."""
        loaded = wrap_model(family_model(self.model_type, q_lora_rank=None), tiny_tokenizer())
        a = loaded.adapter
        attn = a.sublayer(Block.of(1, ATTN))
        assert attn.q_b_proj is None and a.attention(1).q.module is attn.q_proj
        apply_width(a, {"strategy": "block", "hidden": None, "layers": [{"layer": 1, "kv_heads": [1, 3]}]})
        a.remove_block(Block.of(2, ATTN))
        assert attn.q_proj.out_features == 2 * a.attention(1).head_dim
        model, kind = build_export_model(loaded)
        assert kind == "per-layer"
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=IDS).logits, loaded.model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)

    def test_llm_pruner_prunes_heads_experts_and_shared_experts(self, calib_file):
        """A block-strategy plan removes latent heads, routed experts' channels and shared experts' channels, and the
        per-layer sizes say so; the sliced modules agree with their weights."""
        base = family_model(self.model_type, vocab_size=300)
        loaded = wrap_model(copy.deepcopy(base), tiny_tokenizer(300))
        res = prune_width(loaded, WidthConfig(ratio=0.3, samples=2, layers="0:4"), CalibConfig(source=calib_file, seq_len=16))
        layers = {e["layer"]: e for e in res.plan["width"]["layers"]}
        c = base.config
        assert all(len(layers[i]["kv_heads"]) < c.num_attention_heads for i in range(4))
        for i in (2, 3):
            assert 0 < layers[i]["shared_intermediate_size"] < c.moe_intermediate_size * c.n_shared_experts
            assert len(layers[i]["shared_channels"]) == layers[i]["shared_intermediate_size"]
        shared = res.loaded.model.config.prunekit_width["shared_intermediate_size"]
        assert shared[:2] == [None, None] and shared[2:] == [layers[2]["shared_intermediate_size"], layers[3]["shared_intermediate_size"]]
        a = res.loaded.adapter
        assert a.sublayer(Block.of(2, ATTN)).num_heads == len(layers[2]["kv_heads"]) == a.attention(2).num_heads
        assert res.loaded.adapter.total_params() == res.plan["params_after"] == apply_plan(base, res.plan).total_params()



@pytest.mark.parametrize("model_type", ["gpt_oss", "deepseek_v3"])
def test_prunekit_reads_a_per_layer_export_back(model_type, tmp_path, one_thread):
    """The per-layer export of heads, experts' channels (and DeepSeek's shared expert's) sliced is rebuilt by
    ``load_export`` (the family's stock model, resized by the facts) with the pruned model's logits."""
    layout, logits, *_ = _pruned_outputs(model_type, "width", tmp_path / "hf")
    assert layout == "per-layer"
    back = load_export(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(back.model(input_ids=IDS).logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gpt_oss", "deepseek_v3"])
def test_every_depth_method_runs_and_its_plan_applies(model_type, calib_file, one_thread):
    """Each depth method of the registry plans on the family (greedy, one-shot, Taylor's backward, budget-greedy),
    and its plan re-applied to the base model gives the pruned model's logits."""
    base = family_model(model_type, vocab_size=300)
    for method in depth_methods():
        loaded = wrap_model(copy.deepcopy(base), tiny_tokenizer(300))
        res = prune(loaded, DepthConfig(method=method, ratio=0.15), CalibConfig(source=calib_file, seq_len=16, windows=4))
        assert res.plan["removed"] and res.plan["params_after"] < res.plan["params_before"], method
        again = copy.deepcopy(base)
        apply_plan(again, res.plan)
        with torch.no_grad():
            torch.testing.assert_close(again(input_ids=IDS).logits, res.loaded.model(input_ids=IDS).logits, rtol=0, atol=0)
