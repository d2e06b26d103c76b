"""Coupled groups derived through the adapter, against hand-derived ones and against the model itself."""

from __future__ import annotations

import pytest
import torch

from prunekit.models.groups import attention_family, hidden_family, kv_readers, mlp_family, trace_kv_readers
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import tiny_model

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
