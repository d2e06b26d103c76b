"""``ratio_of`` (``--ratio-of total|decoder``, issue 28): what ``ratio`` is a fraction of, for every method and compare.

``total`` (the default) counts every parameter; ``decoder`` only the decoder layers' (no embedding, final norm or
LM head). Every plan records both removed fractions; the default's choices are those of an explicit ``total``.
"""

from __future__ import annotations

import json

import pytest

from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.methods.options import DepthConfig
from prunekit.methods.width.options import WidthConfig
from prunekit.methods.width.pg_options import PolicyConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint, tiny_model, tiny_tokenizer
from prunekit.pipeline.compare import compare
from prunekit.pipeline.prune import prune
from prunekit.plan.schema import read_plan, validate_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ratio_of") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 40, encoding="utf-8")
    return str(path)


def _loaded(layers=6):
    return wrap_model(tiny_model("llama", num_hidden_layers=layers), tiny_tokenizer())


def _cal(path, seq_len=16):
    return CalibConfig(source=path, seq_len=seq_len, windows=4)


def _fractions_match_model(plan: dict, base, pruned) -> None:
    """The plan's two fractions are the pruned model's counts against the base model's."""
    a, p = base.adapter, pruned.adapter
    assert plan["params_before"] == a.total_params() and plan["decoder_params_before"] == a.decoder_params()
    assert plan["ratio_removed"] == pytest.approx(1 - p.total_params() / a.total_params(), abs=1e-12)
    assert plan["decoder_ratio_removed"] == pytest.approx(1 - p.decoder_params() / a.decoder_params(), abs=1e-12)


def test_decoder_params_leave_out_embedding_and_head():
    a = _loaded().adapter
    outside = sum(p.numel() for p in a.embed.parameters()) + sum(p.numel() for p in a.final_norm.parameters())
    if a.lm_head.weight is not a.embed.weight:
        outside += a.lm_head.weight.numel()
    assert a.decoder_params() == a.total_params() - outside
    assert a.decoder_params() == sum(a.block_params(b) for b in a.blocks())


@pytest.mark.parametrize("method", ["blockpruner", "budget-greedy", "shortgpt"])
def test_depth_decoder_ratio_removes_at_least_its_fraction_of_the_decoder(calib_file, method):
    base = _loaded()
    ratio = 0.3
    res = prune(base, DepthConfig(method=method, ratio=ratio, ratio_of="decoder"), _cal(calib_file))
    plan = res.plan
    assert plan["options"]["ratio_of"] == "decoder"
    assert plan["decoder_ratio_removed"] >= ratio > plan["ratio_removed"]
    _fractions_match_model(plan, base, res.loaded)
    if method != "budget-greedy":  # a nested order: the plan is the shortest prefix that reaches the decoder budget
        last = plan["removed"][-1]["params_removed"] - (plan["removed"][-2]["params_removed"] if len(plan["removed"]) > 1 else 0)
        assert (plan["removed"][-1]["params_removed"] - last) / plan["decoder_params_before"] < ratio


def test_depth_total_is_the_default_and_unchanged(calib_file):
    base = _loaded()
    default = prune(base, DepthConfig(method="blockpruner", ratio=0.3), _cal(calib_file)).plan
    total = prune(base, DepthConfig(method="blockpruner", ratio=0.3, ratio_of="total"), _cal(calib_file)).plan
    decoder = prune(base, DepthConfig(method="blockpruner", ratio=0.3, ratio_of="decoder"), _cal(calib_file)).plan
    assert json.dumps(default) == json.dumps(total) and default["options"]["ratio_of"] == "total"
    assert default["ratio_removed"] >= 0.3
    before_last = default["removed"][-2]["ratio_removed"] if len(default["removed"]) > 1 else 0.0
    assert before_last < 0.3  # the shortest prefix reaching 0.3 of ALL parameters
    assert default["decoder_ratio_removed"] == pytest.approx(default["removed"][-1]["params_removed"] / default["decoder_params_before"])
    # the same greedy path, cut earlier: 0.3 of the decoder is fewer parameters than 0.3 of the total
    assert [s["unit"] for s in decoder["removed"]] == [s["unit"] for s in default["removed"]][: len(decoder["removed"])]
    assert len(decoder["removed"]) < len(default["removed"])


def test_depth_unreachable_decoder_ratio_names_the_decoder(calib_file):
    with pytest.raises(PrunekitError, match="of the decoder layers' parameters"):
        prune(_loaded(), DepthConfig(method="blockpruner", ratio=0.99, ratio_of="decoder"), _cal(calib_file))


@pytest.mark.parametrize("strategy", ["block", "channel"])
def test_llm_pruner_decoder_ratio(calib_file, strategy):
    base = _loaded()
    ratio = 0.25 if strategy == "block" else 0.1
    opts = {"strategy": strategy, "samples": 3, "at_least": True} | ({"importance": "l2"} if strategy == "channel" else {})
    dec = prune(base, WidthConfig(ratio=ratio, ratio_of="decoder", **opts), _cal(calib_file)).plan
    tot = prune(base, WidthConfig(ratio=ratio, **opts), _cal(calib_file))
    assert dec["options"]["ratio_of"] == "decoder" and "decoder layers' parameters" in dec["options"]["ratio_is"]
    assert dec["decoder_ratio_removed"] >= ratio and tot.plan["ratio_removed"] >= ratio
    assert tot.plan["options"]["ratio_of"] == "total" and tot.plan["options"]["ratio_is"].startswith("fraction of the total parameters")
    _fractions_match_model(tot.plan, base, tot.loaded)
    again = prune(base, WidthConfig(ratio=ratio, ratio_of="decoder", **opts), _cal(calib_file))
    _fractions_match_model(again.plan, base, again.loaded)
    if strategy == "channel":  # a hidden channel narrows the embedding and the LM head too: its decoder share counts
        assert dec["params_before"] - dec["params_after"] > dec["decoder_ratio_removed"] * dec["decoder_params_before"]


def test_policy_gradient_decoder_ratio(calib_file):
    base = _loaded()
    cfg = PolicyConfig(ratio=0.2, ratio_of="decoder", steps=2, units="mixed")
    res = prune(base, cfg, CalibConfig(source=calib_file, seq_len=16, windows=4, batch_size=2))
    plan = res.plan
    assert plan["options"]["ratio_of"] == "decoder" and plan["options"]["ratio_is"] == "fraction of the decoder layers' parameters"
    _fractions_match_model(plan, base, res.loaded)
    assert plan["decoder_ratio_removed"] == pytest.approx(0.2, abs=0.05)  # one budget, to within about one unit
    assert plan["ratio_removed"] < 0.2


def test_bad_ratio_of_is_refused_by_every_config():
    for make in (lambda: DepthConfig(ratio=0.2, ratio_of="decoders"), lambda: WidthConfig(ratio=0.2, ratio_of="params"),
                 lambda: PolicyConfig(ratio=0.2, ratio_of="")):
        with pytest.raises(PrunekitError, match="`ratio_of` .* is not known.*total, decoder"):
            make()


def test_plan_validator_reads_old_plans_and_checks_the_new_fields(calib_file):
    plan = prune(_loaded(4), DepthConfig(method="blockpruner", remove=1), _cal(calib_file)).plan
    old = {k: v for k, v in plan.items() if k not in ("decoder_params_before", "decoder_ratio_removed")}
    assert validate_plan(old) is old  # written before issue 28
    with pytest.raises(PrunekitError, match="'decoder_ratio_removed' should be float"):
        validate_plan(plan | {"decoder_ratio_removed": "0.5"})


def test_compare_passes_ratio_of_through(tmp_path, calib_file):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny", "llama", num_hidden_layers=4)
    cal = CalibConfig(source=calib_file, seq_len=24, windows=4, batch_size=2)
    out = tmp_path / "cmp"
    kw = {"out": out, "eval_windows": 2, "eval_seq_len": 24}
    rows = compare(str(ckpt), "blockpruner,llm-pruner/l2", "0.2,0.3", cal, [calib_file], ratio_of="decoder", **kw)
    assert [r.get("unreachable") for r in rows[1:]] == [None] * 4, rows
    for r in rows[1:]:
        plan = read_plan(out / r["plan"])
        assert plan["options"]["ratio_of"] == "decoder"
        assert r["decoder_ratio_removed"] == plan["decoder_ratio_removed"] >= r["target_ratio"]
        assert r["ratio_removed"] < r["decoder_ratio_removed"]  # every removed parameter is a decoder layer's
    assert rows[0]["decoder_ratio_removed"] == 0.0
    assert json.loads((out / "compare.json").read_text())["ratio_of"] == "decoder"
    assert "Ratios are fractions of the decoder layers'" in (out / "results.md").read_text()
    assert "decoder_ratio_removed" in (out / "results.csv").read_text().splitlines()[0]
    with pytest.raises(PrunekitError, match="other inputs \\(ratio_of differ\\)"):
        compare(str(ckpt), "blockpruner", "0.2", cal, [calib_file], **kw)
    with pytest.raises(PrunekitError, match="`ratio_of` 'all' is not known"):
        compare(str(ckpt), "blockpruner", "0.2", cal, [calib_file], ratio_of="all", **kw)


def test_compare_reads_a_directory_made_before_ratio_of(tmp_path, calib_file):
    """A compare.json without ``ratio_of`` (older prunekit) is the default's: a re-run continues it."""
    ckpt = save_tiny_checkpoint(tmp_path / "tiny", "llama", num_hidden_layers=4)
    cal = CalibConfig(source=calib_file, seq_len=24, windows=4, batch_size=2)
    out = tmp_path / "cmp"
    kw = {"out": out, "eval_windows": 2, "eval_seq_len": 24}
    compare(str(ckpt), "shortgpt", "0.2", cal, [calib_file], **kw)
    manifest = json.loads((out / "compare.json").read_text())
    assert manifest.pop("ratio_of") == "total"
    (out / "compare.json").write_text(json.dumps(manifest))
    compare(str(ckpt), "shortgpt", "0.2", cal, [calib_file], **kw)  # not refused
    with pytest.raises(PrunekitError, match="other inputs \\(ratio_of differ\\)"):
        compare(str(ckpt), "shortgpt", "0.2", cal, [calib_file], ratio_of="decoder", **kw)
