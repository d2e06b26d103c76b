"""Each family's declared facts (``ModelAdapter.facts``: the one source that the adapter and the exported
``modeling_pruned.py`` both read) agree with the family's real transformers modules and with what the adapter
says: the block norms are every norm of the layer, the projections every Linear of a dense block, with the
shapes of the config; a per-layer hf export carries them in its config, and ``modeling_pruned.py`` names no
family's modules itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from export_helpers import pruned_tiny
from prunekit.export.hf import build_export_model
from prunekit.models import modeling_pruned
from prunekit.models.contract import ATTN, HYBRID_FACTS, LLAMA_FACTS, MLP, SOFTMAX, Block, family_facts
from prunekit.models.modeling_pruned import FACTS_KEY
from prunekit.models.registry import ADAPTERS, get_adapter
from prunekit.models.tiny import FAMILY_OVERRIDES, family_model

FAMILIES = sorted(ADAPTERS)


@pytest.fixture(scope="module")
def models():
    return {family: family_model(family) for family in FAMILIES}


def test_every_family_has_tiny_settings():
    assert set(FAMILIES) == set(FAMILY_OVERRIDES)


@pytest.mark.parametrize("family", FAMILIES)
def test_facts_are_plain_data_with_llamas_keys(family):
    """Llama's keys, and a hybrid family's keys besides (every layer type it meets named in ``mixers``)."""
    facts = ADAPTERS[family].facts
    assert json.loads(json.dumps(facts)) == facts
    assert set(LLAMA_FACTS) <= set(facts) <= set(LLAMA_FACTS) | set(HYBRID_FACTS)
    if set(facts) != set(LLAMA_FACTS):
        types = getattr(family_model(family).config, facts["layer_types_key"])
        assert set(types) <= set(facts["mixers"])


def _spec(facts: dict, adapter, layer: int, kind: str) -> tuple:
    """(input norm, sub-layer, output norm) of a block as the facts say: a hybrid layer's mixer by its type, its
    feed-forward slot by Llama's keys (or absent, ``(None, '', None)``, when each layer holds one block)."""
    mixers = facts.get("mixers")
    if mixers:
        m = mixers[adapter.layer_type(layer)]
        if m["slot"] == kind:
            return m["norms"][0], m["sublayer"], m["norms"][1]
        if facts.get("one_block_per_layer"):
            return None, "", None
    sub, norms = ("attention_sublayer", "attention_norms") if kind == ATTN else ("mlp_sublayer", "mlp_norms")
    return facts[norms][0], facts[sub], facts[norms][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_norms_are_every_norm_of_the_layer(models, family):
    """The norms the facts name are the layer's own and the adapter's; no other norm-like parameter sits on
    the layer (one the facts missed would stay in the residual path when its block is removed)."""
    model = models[family]
    adapter = get_adapter(model)
    facts, hidden = adapter.facts, model.config.hidden_size
    for i, layer in enumerate(adapter.layers):
        named, subs = set(), set()
        for kind in (ATTN, MLP):
            inp, sub, outp = _spec(facts, adapter, i, kind)
            spec = adapter.block_spec(Block.of(i, kind))
            assert (spec.input_norm, spec.sublayer, spec.output_norm) == (inp, sub, outp)
            if not sub:  # an absent slot
                assert adapter.is_absent(Block.of(i, kind)) and adapter.norms(Block.of(i, kind)) == (None, None)
                continue
            subs.add(sub)
            assert adapter.sublayer(Block.of(i, kind)) is getattr(layer, sub)
            for name, module in zip((inp, outp), adapter.norms(Block.of(i, kind))):
                assert (name is None) == (module is None)
                if name is not None:
                    assert module is getattr(layer, name) and tuple(module.weight.shape) == (hidden,)
                    named.add(name)
        subs = tuple(subs)
        own = {n.split(".")[0] for n, p in layer.named_parameters() if not n.startswith(subs)}
        assert own == named, (family, i, own, named)


@pytest.mark.parametrize("family", FAMILIES)
def test_projections_are_every_linear_of_a_dense_block(models, family):
    model = models[family]
    adapter = get_adapter(model)
    facts, cfg = adapter.facts, model.config
    for i, layer in enumerate(adapter.layers):
        if adapter.mixer_kind(i) == SOFTMAX:
            attn = adapter.sublayer(Block.of(i, ATTN))
            a = adapter.attention(i)
            names = facts["attention_projections"]
            if "kv" in names:
                _check_latent_attention(attn, a, names, cfg)
            else:
                assert {id(p.module) for p in (a.q, a.k, a.v, a.o)} == {id(getattr(attn, n)) for n in names.values()}
                assert {id(m) for m in attn.modules() if isinstance(m, nn.Linear)} == {id(getattr(attn, n)) for n in names.values()}
                assert (a.num_heads, a.num_kv_heads) == (cfg.num_attention_heads, cfg.num_key_value_heads)
                q_rows = a.num_heads * a.head_dim * (2 if facts.get("query_gate") else 1)  # [q_h | gate_h] per head
                assert (a.q.out_features, a.k.out_features, a.v.out_features) == (q_rows, *(2 * [a.num_kv_heads * a.head_dim]))
            for module, attr in a.head_params:  # one entry per query head (gpt-oss's sinks)
                assert module is attn and getattr(attn, attr).shape == (a.num_heads,)
            assert {which: id(norm) for norm, which in a.head_norms} == {w: id(getattr(attn, n)) for w, n in facts["head_norms"].items()}
            for norm, which in a.head_norms:  # norms over all heads' rows
                assert norm.weight.shape[0] == (a.num_heads if which == "q" else a.num_kv_heads) * a.head_dim
        if adapter.is_absent(Block.of(i, MLP)) or adapter.width_refusal:  # a family not pruned in width names no MLP rows
            continue
        mlp = adapter.sublayer(Block.of(i, MLP))
        ex = adapter.experts(i)
        if ex is not None:
            names = facts["routed_experts"]
            assert ex.module is getattr(mlp, names["module"]) and (ex.gate_up, ex.down) == (names["gate_up"], names["down"])
            assert getattr(ex.module, names["gate_up"]).dim() == 3 == getattr(ex.module, names["down"]).dim()
            continue
        m = adapter.mlp(i)
        names = facts["mlp_projections"]
        assert {id(p.module) for p in (m.gate, m.up, m.down)} == {id(getattr(mlp, n)) for n in names.values()}
        assert {id(x) for x in mlp.modules() if isinstance(x, nn.Linear)} == {id(getattr(mlp, n)) for n in names.values()}
        width = m.down.in_features
        assert (m.gate.out_features, m.up.out_features, m.down.out_features) == (width, width, cfg.hidden_size)


def _check_latent_attention(attn, a, names, cfg) -> None:
    """Latent attention (DeepSeek's MLA): q is the first present of its names, kv and o as named; the Linears the
    facts leave out are the shared latent projections, reading the residual stream into a latent of no head."""
    q = next(getattr(attn, n) for n in names["q"] if getattr(attn, n, None) is not None)
    assert (a.q.module, a.kv.module, a.o.module) == (q, getattr(attn, names["kv"]), getattr(attn, names["o"]))
    named = {id(q), id(a.kv.module), id(a.o.module)}
    latent = [m for m in attn.modules() if isinstance(m, nn.Linear) and id(m) not in named]
    assert {(m.in_features, m.out_features) for m in latent} <= {(cfg.hidden_size, cfg.q_lora_rank),
                                                                 (cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim)}
    assert a.num_heads == a.num_kv_heads == cfg.num_attention_heads
    assert (a.q.out_features, a.kv.out_features, a.o.in_features) == (
        a.num_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim), a.num_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
        a.num_heads * cfg.v_head_dim)


def test_family_facts_refuses_an_unknown_key():
    with pytest.raises(KeyError, match="unknown family facts"):
        family_facts(qkv="qkv_proj")


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_mixer_groups_own_every_parameter_but_the_shared_norm(models, family):
    """A linear mixer's width family (one structure per key-head group) owns every entry of every parameter of
    the mixer once, except the gated norm's weight, which every head shares (per head dimension)."""
    adapter = get_adapter(models[family])
    layers = [i for i in range(adapter.num_layers) if adapter.mixer_kind(i) == "linear"]
    if not adapter.facts.get("mixers") or adapter.width_refusal:
        assert not layers or all(adapter.linear_family(i, {}) is None for i in layers)
        return
    for i in layers:
        fam = adapter.linear_family(i, {})
        mixer = adapter.sublayer(Block.of(i, ATTN))
        owned: dict[tuple[int, str], list] = {}
        for part in fam.parts:
            owned.setdefault((id(part.module), part.attr), [part.param, part.dim, []])[2].append(part.index.reshape(-1))
        names = {(id(m), n): (m, n) for m in mixer.modules() for n, _ in m.named_parameters(recurse=False)}
        shared = {(id(m), n) for (m, n) in names.values() if "norm" in type(m).__name__.lower()}
        assert set(owned) == set(names) - shared
        for param, dim, idx in owned.values():
            assert torch.cat(idx).sort().values.tolist() == list(range(param.shape[dim]))
        assert fam.n == adapter.head_counts(i)[1]


@pytest.mark.parametrize("family", ["phi3", "olmo2", "gemma2", "qwen3_moe", "qwen3_5_text", "gpt_oss", "deepseek_v3"])
def test_a_per_layer_export_carries_the_adapters_facts(family):
    loaded = pruned_tiny(family, "blocks", **FAMILY_OVERRIDES[family])
    model, kind = build_export_model(loaded)
    assert kind == "per-layer"
    assert getattr(model.config, FACTS_KEY) == loaded.adapter.facts
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        assert (model(input_ids=ids).logits - loaded.model(input_ids=ids).logits).abs().max() <= 1e-5


def test_modeling_pruned_names_no_familys_modules():
    """The exported code takes the names from the facts: no string of it names a family's module (the
    transformers classes it subclasses are imported by name, which is what it is)."""
    source = Path(modeling_pruned.__file__).read_text()
    strings = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    module_names = {v for f in ADAPTERS.values() for v in _names(f.facts)}  # a hybrid's kinds and config keys left out
    assert module_names, "the facts name modules"
    assert not strings & module_names, strings & module_names


NOT_MODULES = ("layer_types_key", "slot", "stub", "heads_config")  # hybrid facts: kinds and config fields, not module names


def _names(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in NOT_MODULES:
                yield from _names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _names(v)
