"""Coupled groups derived through the adapter, against hand-derived ones and against the model itself."""

from __future__ import annotations

import pytest
import torch

from prunekit.models.groups import (
    attention_family,
    block_families,
    expert_families,
    hidden_family,
    kv_readers,
    mlp_family,
    shared_family,
    trace_kv_readers,
)
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import family_model, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def _slices(part):
    """The set of (row or column) indices each structure owns in a part, as Python sets."""
    return [set(row.tolist()) for row in part.index]


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("heads,kv", [(4, 2), (4, 4), (6, 2)])
def test_attention_groups_match_hand_derived(model_type, heads, kv):
    model = tiny_model(model_type, num_attention_heads=heads, num_key_value_heads=kv, hidden_size=48 if heads == 6 else 64,
                       **({"head_dim": 8} if model_type == "qwen3" else {}))
    a = wrap_model(model).adapter
    hd = a.attention(1).head_dim
    fam = attention_family(a, 1)
    assert fam.n == kv
    n_rep = heads // kv
    by_role = {}
    for p in fam.parts:
        by_role.setdefault((p.role, p.attr), p)
    for g in range(kv):
        # Hand-derived: KV head g is read by query heads g*n_rep .. g*n_rep+n_rep-1 (repeat_kv).
        q_rows = {h * hd + d for h in range(g * n_rep, (g + 1) * n_rep) for d in range(hd)}
        kv_rows = {g * hd + d for d in range(hd)}
        assert _slices(by_role[("q", "weight")])[g] == q_rows
        assert _slices(by_role[("k", "weight")])[g] == kv_rows
        assert _slices(by_role[("v", "weight")])[g] == kv_rows
        assert _slices(by_role[("o", "weight")])[g] == q_rows
        assert by_role[("o", "weight")].dim == 1 and by_role[("q", "weight")].dim == 0
    has_bias = model_type == "qwen2"
    assert (("q", "bias") in by_role) == has_bias and (("k", "bias") in by_role) == has_bias
    assert fam.params_per_structure == sum(p.index.shape[1] * p.per_index for p in fam.parts)
    expected = 2 * n_rep * hd * model.config.hidden_size + 2 * hd * model.config.hidden_size + (n_rep * hd + 2 * hd if has_bias else 0)
    assert fam.params_per_structure == expected


@pytest.mark.parametrize("model_type", FAMILIES)
def test_traced_readers_agree_with_groups(model_type):
    """Perturbing one KV head's values changes exactly the query heads the groups assign to it."""
    model = tiny_model(model_type, num_attention_heads=6, num_key_value_heads=3, hidden_size=48,
                       **({"head_dim": 8} if model_type == "qwen3" else {}))
    a = wrap_model(model).adapter
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    h0, kwargs = a.capture_inputs(ids)
    for layer in range(a.num_layers):
        traced = trace_kv_readers(a, layer, kwargs[layer], torch.randn_like(h0))
        assert traced == [[0, 1], [2, 3], [4, 5]] == kv_readers(6, 3)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_mlp_and_hidden_groups(model_type):
    model = tiny_model(model_type)
    a = wrap_model(model).adapter
    fam = mlp_family(a, 2)
    H, inter = model.config.hidden_size, model.config.intermediate_size
    assert fam.n == inter and fam.params_per_structure == 3 * H
    roles = [(p.role, p.dim) for p in fam.parts]
    assert roles == [("gate", 0), ("up", 0), ("down", 1)]
    assert _slices(fam.parts[2])[5] == {5}
    hid = hidden_family(a)
    assert hid.n == H
    # Every parameter but the biases of q/k/v (qwen2) and qwen3's per-head q/k norms touches the hidden size once per
    # channel: removing all hidden channels would remove exactly that many parameters.
    exempt_names = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "q_norm.weight", "k_norm.weight")
    exempt = sum(p.numel() for n, p in model.named_parameters() if n.endswith(exempt_names))
    assert hid.params_per_structure * H == sum(p.numel() for p in model.parameters()) - exempt


def test_tied_head_counted_once():
    model = tiny_model("llama", tie_word_embeddings=True)
    model.tie_weights()
    a = wrap_model(model).adapter
    assert a.lm_head.weight is a.embed.weight
    roles = [p.role for p in hidden_family(a).parts]
    assert "lm_head" not in roles and roles.count("embed") == 1


@pytest.mark.parametrize("heads,kv", [(4, 2), (6, 3), (4, 4)])
def test_gpt_oss_groups_carry_their_heads_sinks_and_biases(heads, kv):
    """KV group g of gpt-oss: its query heads' q rows and biases and their sinks, its k and v rows and biases, its
    query heads' o columns (o's bias, one per hidden channel, stays)."""
    model = family_model("gpt_oss", num_attention_heads=heads, num_key_value_heads=kv)
    a = wrap_model(model).adapter
    fam, hd, n_rep, H = attention_family(a, 1), 16, heads // kv, model.config.hidden_size
    by_role = {(p.role, p.attr): p for p in fam.parts}
    assert set(by_role) == {("q", "weight"), ("q", "bias"), ("k", "weight"), ("k", "bias"), ("v", "weight"), ("v", "bias"),
                            ("o", "weight"), ("sinks", "sinks")}
    for g in range(kv):
        q_rows = {h * hd + d for h in range(g * n_rep, (g + 1) * n_rep) for d in range(hd)}
        assert _slices(by_role[("q", "weight")])[g] == _slices(by_role[("q", "bias")])[g] == q_rows == _slices(by_role[("o", "weight")])[g]
        assert _slices(by_role[("k", "bias")])[g] == _slices(by_role[("v", "weight")])[g] == {g * hd + d for d in range(hd)}
        assert _slices(by_role[("sinks", "sinks")])[g] == set(range(g * n_rep, (g + 1) * n_rep))
    assert by_role[("o", "weight")].dim == 1
    assert fam.params_per_structure == 2 * n_rep * hd * H + 2 * hd * H + n_rep * hd + 2 * hd + n_rep


def test_gpt_oss_expert_channels_are_interleaved_columns():
    """Channel j of each routed expert: gate_up columns 2j (gate) and 2j + 1 (up) and the same entries of its bias,
    row j of down (down's bias, added once per routed token, stays)."""
    model = family_model("gpt_oss")
    a = wrap_model(model).adapter
    fams = expert_families(a, 2)
    H, width = model.config.hidden_size, model.config.intermediate_size
    assert [f.expert for f in fams] == list(range(model.config.num_local_experts)) and all(f.n == width for f in fams)
    parts = {(p.role, p.attr): p for p in fams[1].parts}
    assert set(parts) == {("gate", "gate_up_proj"), ("up", "gate_up_proj"), ("gate", "gate_up_proj_bias"),
                          ("up", "gate_up_proj_bias"), ("down", "down_proj")}
    assert all(p.expert == 1 for p in parts.values())
    assert _slices(parts[("gate", "gate_up_proj")])[5] == {10} == _slices(parts[("gate", "gate_up_proj_bias")])[5]
    assert _slices(parts[("up", "gate_up_proj")])[5] == {11} == _slices(parts[("up", "gate_up_proj_bias")])[5]
    assert _slices(parts[("down", "down_proj")])[5] == {5}
    assert (parts[("gate", "gate_up_proj")].dim, parts[("down", "down_proj")].dim) == (1, 0)
    assert fams[1].params_per_structure == 3 * H + 2


def test_deepseek_latent_heads_are_groups_of_one():
    """Each MLA head: its qk_nope + qk_rope rows of q_b_proj, its qk_nope + v rows of kv_b_proj, its v columns of
    o_proj; the traced readers (values of head g perturbed in kv_b_proj) agree."""
    model = family_model("deepseek_v3")
    c = model.config
    a = wrap_model(model).adapter
    qd, kvd, vd = c.qk_nope_head_dim + c.qk_rope_head_dim, c.qk_nope_head_dim + c.v_head_dim, c.v_head_dim
    fam = attention_family(a, 2)
    parts = {p.role: p for p in fam.parts}
    assert set(parts) == {"q", "kv", "o"} and fam.n == c.num_attention_heads
    for h in range(fam.n):
        assert _slices(parts["q"])[h] == set(range(h * qd, (h + 1) * qd))
        assert _slices(parts["kv"])[h] == set(range(h * kvd, (h + 1) * kvd))
        assert _slices(parts["o"])[h] == set(range(h * vd, (h + 1) * vd))
    assert fam.params_per_structure == qd * c.q_lora_rank + kvd * c.kv_lora_rank + vd * c.hidden_size
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    h0, kwargs = a.capture_inputs(ids)
    for layer in range(a.num_layers):
        assert trace_kv_readers(a, layer, kwargs[layer], torch.randn_like(h0)) == [[h] for h in range(c.num_attention_heads)]


def test_deepseek_shared_expert_channels():
    """A sparse layer's shared expert is one more family of channels (gate/up row j, down column j); dense layers
    have none."""
    model = family_model("deepseek_v3")
    c = model.config
    a = wrap_model(model).adapter
    assert shared_family(a, 0) is None and shared_family(a, 1) is None
    fam = shared_family(a, 2)
    m = a.layers[2].mlp.shared_experts
    assert fam.shared and fam.n == c.moe_intermediate_size * c.n_shared_experts and fam.key() == "mlp 2 shared expert"
    assert [(p.module, p.dim) for p in fam.parts] == [(m.gate_proj, 0), (m.up_proj, 0), (m.down_proj, 1)]
    assert fam.params_per_structure == 3 * c.hidden_size
    assert [f.key() for f in block_families(a, 2, 3)][-1] == "mlp 2 shared expert"
