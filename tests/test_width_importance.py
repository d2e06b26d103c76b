"""Importance scores: the gradients accumulated, the per-weight formulas and the group aggregation."""

from __future__ import annotations

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.methods.width.importance import (
    aggregate,
    check_gradient_dtype,
    collect_gradients,
    element_scores,
    family_scores,
    needed_parameters,
)
from prunekit.methods.width.options import WidthConfig, parse_layers
from prunekit.models.groups import attention_family, mlp_family
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


IDS = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))


def test_gradients_are_the_calibration_loss_gradient_and_fisher_bounds_it():
    model = tiny_model("qwen2")
    a = wrap_model(model).adapter
    fams = [attention_family(a, 1), mlp_family(a, 2)]
    names = needed_parameters(fams)
    stats = collect_gradients(model, IDS, names, fisher=True)
    # Reference: one backward of the mean of the per-window mean losses.
    model.zero_grad()
    loss = sum(model(input_ids=IDS[i:i + 1], labels=IDS[i:i + 1]).loss for i in range(4)) / 4
    loss.backward()
    params = dict(model.named_parameters())
    for n in names:
        torch.testing.assert_close(stats.grad[n], params[n].grad, rtol=1e-4, atol=1e-7)
        # Mean of squares >= square of the mean (the four windows' gradients differ, so strictly somewhere).
        assert (stats.fisher[n] >= stats.grad[n] ** 2 - 1e-9).all()
        assert (stats.fisher[n] > stats.grad[n] ** 2 + 1e-12).any()
    assert stats.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_element_formulas():
    w = torch.tensor([2.0, -1.0, 0.5])
    g = torch.tensor([0.5, 3.0, -2.0])
    f = torch.tensor([1.0, 4.0, 2.0])
    assert element_scores("l1", w, None, None).tolist() == [2.0, 1.0, 0.5]
    assert element_scores("l2", w, None, None).tolist() == [4.0, 1.0, 0.25]
    assert element_scores("param_first", w, g, None).tolist() == [1.0, 3.0, 1.0]
    assert element_scores("element1", w, g, None).tolist() == [1.0, 3.0, 1.0]
    assert element_scores("vector", w, g, None).tolist() == [1.0, -3.0, -1.0]
    assert element_scores("param_second", w, g, f).tolist() == [2.0, 2.0, 0.25]
    # |w g - w^2 F / 2|
    assert element_scores("element2", w, g, f).tolist() == [1.0, 5.0, 1.25]
    assert element_scores("param_mix", w, g, f).tolist() == [1.0, 5.0, 1.25]


def test_aggregation():
    s = torch.tensor([[1.0, 4.0], [2.0, 0.5], [3.0, 1.0]], dtype=torch.float64)
    assert aggregate(s, "sum", "l1").tolist() == [6.0, 5.5]
    assert aggregate(s, "mean", "l1").tolist() == [2.0, pytest.approx(5.5 / 3)]
    assert aggregate(s, "max", "l1").tolist() == [3.0, 4.0]
    assert aggregate(s, "last", "l1").tolist() == [3.0, 1.0]
    prod = aggregate(s, "prod", "l1")
    assert torch.exp(prod).tolist() == [pytest.approx(6.0), pytest.approx(2.0)]
    signed = torch.tensor([[1.0, -4.0], [-2.0, 1.0]], dtype=torch.float64)
    assert aggregate(signed, "sum", "vector").tolist() == [1.0, 3.0]


def test_vector_score_is_the_groups_first_order_loss_change():
    """vector = |sum over the KV group's weights of w * dL/dw|, computed here straight from the tensors."""
    model = tiny_model("llama")
    a = wrap_model(model).adapter
    fam = attention_family(a, 1)
    stats = collect_gradients(model, IDS, needed_parameters([fam]), fisher=False)
    got = family_scores(fam, "vector", "sum", stats)
    att = a.attention(1)
    hd, n_rep = att.head_dim, att.num_heads // att.num_kv_heads
    names = {id(p): n for n, p in model.named_parameters()}
    wg = {lin: lin.weight.detach() * stats.grad[names[id(lin.weight)]] for lin in (att.q, att.k, att.v, att.o)}
    for g in range(att.num_kv_heads):
        q = slice(g * n_rep * hd, (g + 1) * n_rep * hd)
        kv = slice(g * hd, (g + 1) * hd)
        want = abs(float(wg[att.q][q].sum() + wg[att.k][kv].sum() + wg[att.v][kv].sum() + wg[att.o][:, q].sum()))
        assert float(got[g]) == pytest.approx(want, rel=1e-5)


def test_l1_mlp_scores_by_hand():
    model = tiny_model("llama")
    a = wrap_model(model).adapter
    m = a.mlp(0)
    got = family_scores(mlp_family(a, 0), "l1", "max", None)
    want = torch.stack([m.gate.weight.abs().sum(1), m.up.weight.abs().sum(1), m.down.weight.abs().sum(0)]).max(0).values
    torch.testing.assert_close(got.float(), want.detach())


def test_random_is_seeded():
    model = tiny_model("llama")
    fam = mlp_family(wrap_model(model).adapter, 0)
    r1 = family_scores(fam, "random", "sum", None, generator=torch.Generator().manual_seed(3))
    r2 = family_scores(fam, "random", "sum", None, generator=torch.Generator().manual_seed(3))
    r3 = family_scores(fam, "random", "sum", None, generator=torch.Generator().manual_seed(4))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)


def test_config_errors_name_the_flag():
    for kw, flag in (({"importance": "taylor"}, "`importance`"), ({"aggregate": "median"}, "`aggregate`"),
                     ({"strategy": "layer"}, "`strategy`"), ({"ratio": 1.2}, "`ratio`"), ({"ratio": None}, "`ratio`"),
                     ({"samples": 0}, "`samples`"), ({"layers": "a:b"}, "`layers`"),
                     ({"strategy": "channel", "global_": True}, "`global`"), ({"global_": True, "aggregate": "prod"}, "`aggregate`"),
                     ({"importance": "vector", "aggregate": "max"}, "`aggregate`")):
        with pytest.raises(PrunekitError, match=flag):
            WidthConfig(**kw)
    with pytest.raises(PrunekitError, match="Did you mean 'element2'"):
        WidthConfig(importance="element22")


def test_parse_layers():
    assert parse_layers(None, 30) == (4, 28)  # the authors' 4..29 of 32, scaled
    assert parse_layers(None, 32) == (4, 30)
    assert parse_layers(None, 4) == (1, 3)
    assert parse_layers("3:28", 30) == (3, 28)
    assert parse_layers("2:-2", 30) == (2, 28)
    assert parse_layers(":", 4) == (0, 4)
    for bad in ("0:31", "5:5", "29:3"):
        with pytest.raises(PrunekitError, match="out of range"):
            parse_layers(bad, 30)


def test_dtype_without_gradients_is_refused():
    with pytest.raises(PrunekitError, match="no gradient support"):
        check_gradient_dtype(torch.int64, torch.device("cpu"))


def test_non_finite_half_precision_loss_is_refused():
    model = tiny_model("llama").half()
    with torch.no_grad():
        model.lm_head.weight.mul_(3e4)  # float16 logits overflow to inf
    a = wrap_model(model).adapter
    with pytest.raises(PrunekitError, match="float16.*Use `dtype` float32"):
        collect_gradients(model, IDS, needed_parameters([mlp_family(a, 1)]), fisher=False)
