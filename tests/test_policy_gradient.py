"""The policy-gradient width method (issue 27): estimator, projection, batched masks, resume, every family."""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import CALIB_TEXT, make_tiny_workspace, run_cli
from prunekit.core.errors import PrunekitError
from prunekit.data.calibration import CalibConfig
from prunekit.data.windows import Windows
from prunekit.engine.runner import Engine
from prunekit.methods.width.masks import BLOCK, CHANNEL, HEAD, MaskedForward, build_units
from prunekit.methods.width.pg_math import draw_masks, estimate, project, update_baseline
from prunekit.methods.width.pg_options import PolicyConfig
from prunekit.methods.width.policy_gradient import Budget, make_plan
from prunekit.models.loading import LoadedModel
from prunekit.models.registry import ADAPTERS, get_adapter
from prunekit.models.tiny import family_model, tiny_tokenizer
from prunekit.pipeline.prune import prune
from prunekit.plan.apply import apply_plan
from prunekit.plan.slicing import slice_family

THETA = torch.tensor([0.3, 0.6, 0.8], dtype=torch.float64)


def _loss(m: torch.Tensor) -> torch.Tensor:
    """A known loss of a 3-unit mask (interactions included)."""
    return 1.0 + 2.0 * m[0] - m[1] + 3.0 * m[0] * m[2] + 0.5 * m[1] * m[2]


def _exact_gradient(theta: torch.Tensor) -> torch.Tensor:
    th = theta.clone().requires_grad_(True)
    expected = sum(_prob(th, m) * _loss(m) for m in _all_masks(len(theta)))
    expected.backward()
    return th.grad


def _all_masks(n: int) -> list[torch.Tensor]:
    return [torch.tensor(bits, dtype=torch.float64) for bits in itertools.product((0.0, 1.0), repeat=n)]


def _prob(theta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.prod(theta * m + (1 - theta) * (1 - m))


def _expected_estimate(kind: str, k: int, previous: float | None) -> tuple[torch.Tensor, float]:
    """E[g] by enumerating every K-tuple of masks, and the weight w of the step's mean in the baseline."""
    total, weight = torch.zeros(3, dtype=torch.float64), None
    for combo in itertools.product(_all_masks(3), repeat=k):
        masks = torch.stack(combo)
        losses = torch.stack([_loss(m) for m in combo])
        baseline, weight = update_baseline(previous, losses)
        p = torch.prod(torch.stack([_prob(THETA, m) for m in combo]))
        total += p * estimate(losses, masks, THETA, baseline, weight=weight, kind=kind)
    return total, weight


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("previous", [None, 0.7])  # the first step (δ = the step's mean) and a later one
def test_exact_score_estimator_is_unbiased(k, previous):
    mean, _ = _expected_estimate("score", k, previous)
    assert torch.allclose(mean, _exact_gradient(THETA), atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("previous", [None, 0.7])
def test_sqrt_estimator_matches_its_own_expectation(k, previous):
    """The authors' estimator: E[g] = (K − w)/(K − 1) · sqrt(θ(1−θ)) ⊙ ∇E[L] (unbiased up to that rescaling)."""
    mean, w = _expected_estimate("sqrt", k, previous)
    want = (k - w) / (k - 1) * (THETA * (1 - THETA)).sqrt() * _exact_gradient(THETA)
    assert torch.allclose(mean, want, atol=1e-12)


def test_draws_follow_theta_and_the_generator():
    a = draw_masks(THETA, 20000, torch.Generator().manual_seed(3))
    assert torch.allclose(a.mean(0), THETA, atol=0.015)
    assert torch.equal(a, draw_masks(THETA, 20000, torch.Generator().manual_seed(3)))
    mc = torch.zeros(3, dtype=torch.float64)
    gen, n = torch.Generator().manual_seed(0), 4000
    for _ in range(n):  # Monte Carlo over the sampler agrees with the enumeration (a later step, δ_prev = 0.7)
        masks = draw_masks(THETA, 2, gen)
        losses = torch.stack([_loss(m) for m in masks])
        baseline, w = update_baseline(0.7, losses)
        mc += estimate(losses, masks, THETA, baseline, weight=w, kind="score") / n
    assert torch.allclose(mc, _exact_gradient(THETA), atol=0.25)


@pytest.mark.parametrize("weighted", [False, True])
def test_projection_meets_the_budget_exactly(weighted):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        y = torch.rand(500, generator=gen, dtype=torch.float64) * 2 - 0.5
        c = torch.randint(1, 1000, (500,), generator=gen).double() if weighted else None
        cost = c if weighted else torch.ones(500, dtype=torch.float64)
        k = float((cost * y.clamp(0, 1)).sum()) * (0.2 + 0.03 * trial)
        theta = project(y, k, c)
        assert float(theta.min()) >= 0.0 and float(theta.max()) <= 1.0
        assert abs(float((cost * theta).sum()) - k) <= 1e-6 * max(1.0, k)
        shift = y - theta  # clip(y - v) with one v >= 0 for every unit strictly inside (0, 1)
        inside = (theta > 0) & (theta < 1)
        assert float(shift[inside].max() - shift[inside].min()) < 1e-9 and float(shift[inside].min()) >= 0
    loose = torch.tensor([0.2, 1.3, -0.1], dtype=torch.float64)
    assert torch.equal(project(loose, 10.0), loose.clamp(0, 1))  # a budget that does not bind only clips


def _loaded(model_type: str, layers: int = 4) -> LoadedModel:
    model = family_model(model_type, num_hidden_layers=layers)
    return LoadedModel(model, tiny_tokenizer(), get_adapter(model), f"tiny-{model_type}", {})


def _windows(n: int = 4, t: int = 12) -> Windows:
    ids = torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(1))
    return Windows(ids, "random", "x", {"seq_len": t, "windows": n})


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma2", "granite"])
def test_k_batched_masks_equal_k_separate_forwards(one_thread, model_type):
    loaded = _loaded(model_type)
    units = build_units(loaded.adapter, 0, 4, mixed=True)
    engine = Engine(loaded.adapter, _windows(), 2, cache_bytes=0)
    fwd = MaskedForward(engine, units)
    theta = torch.full((units.n,), 0.6, dtype=torch.float64)
    masks = draw_masks(theta, 3, torch.Generator().manual_seed(0))
    together = fwd.losses(1, masks)
    alone = torch.cat([fwd.losses(1, masks[j:j + 1]) for j in range(3)])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert len(set(together.tolist())) == 3  # three different masks, three different losses
    assert all(not m._forward_pre_hooks for m in fwd.modules)  # the hooks are gone


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi3"])
def test_a_mask_is_the_sliced_model(one_thread, model_type):
    """Masking structures gives the loss of the model with those structures sliced out (the model's own loss)."""
    loaded = _loaded(model_type)
    units = build_units(loaded.adapter, 0, 4, mixed=False)
    win = _windows(2)
    fwd = MaskedForward(Engine(loaded.adapter, win, 2, cache_bytes=0), units)
    mask = torch.ones(1, units.n, dtype=torch.float64)
    kept = []
    for i, fam in enumerate(units.families):
        drop = [0] if fam.kind == "attn" else list(range(0, fam.n, 3))
        mask[0, units.span(i).start + torch.tensor(drop)] = 0.0
        kept.append([s for s in range(fam.n) if s not in drop])
    masked = float(fwd.losses(0, mask)[0])
    model = copy.deepcopy(loaded.model)
    adapter = get_adapter(model)
    for fam, keep in zip(build_units(adapter, 0, 4, mixed=False).families, kept):
        slice_family(fam, keep)
        if fam.kind == "attn":
            adapter.sync_attention(fam.layer)
    with torch.no_grad():
        sliced = float(model(input_ids=win.ids[:2], labels=win.ids[:2]).loss)
    assert masked == pytest.approx(sliced, rel=1e-5)


def test_mixed_plan_removes_blocks_and_slices_the_rest(one_thread):
    """A plan with both ``removed`` blocks and a ``width`` record: built, validated, applied, counted."""
    loaded = _loaded("llama")
    config = PolicyConfig(ratio=0.3, units="mixed", steps=0)
    units = build_units(loaded.adapter, 0, 4, mixed=True)
    budget = Budget(units, loaded.adapter.total_params(), 0.3, mixed=True)
    theta = torch.full((units.n,), 0.9, dtype=torch.float64)
    theta[units.kind == CHANNEL] = torch.linspace(0.1, 0.8, int((units.kind == CHANNEL).sum()), dtype=torch.float64)
    theta[units.block_pos(units.blocks[3])] = 0.0  # mlp 1 goes first
    theta[units.offsets[2]] = 0.05  # a KV group of layer 1 (its attention stays)
    plan = make_plan(loaded, config, units, theta, budget=budget, record={"model_type": "llama", "config": loaded.model.config.to_dict()},
                     calibration={}, dense_loss=1.0)
    assert [r["unit"] for r in plan["removed"]] == ["mlp 1"]
    layer1 = next(e for e in plan["width"]["layers"] if e["layer"] == 1)
    assert "mlp_channels" not in layer1 and layer1["num_kv_heads"] == 1
    assert abs(plan["ratio_removed"] - 0.3) < 0.01
    model = copy.deepcopy(loaded.model)
    apply_plan(model, plan, check=False)
    assert sum(p.numel() for p in model.parameters()) == plan["params_after"]
    assert torch.isfinite(model(input_ids=_windows(1).ids).logits).all()
    assert plan["width"]["theta"][1]["mlp_block"] == 0.0


def _calib(tmp_path) -> CalibConfig:
    path = tmp_path / "calib.txt"
    path.write_text(CALIB_TEXT, encoding="utf-8")
    return CalibConfig(source=str(path), seq_len=16, batch_size=2)


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_every_family_runs_or_refuses_in_one_line(one_thread, tmp_path, model_type):
    loaded = _loaded(model_type)
    config = PolicyConfig(ratio=0.25, steps=4, units="mixed" if model_type in ("llama", "gemma2") else "width")
    a = loaded.adapter
    if a.width_refusal or any(a.mixer_kind(i) != "attention" for i in range(a.num_layers)):
        reason = "no exact slice" if a.width_refusal else "linear mixer"  # hybrid families: no mask for their mixers
    elif any(a.experts(i) is not None for i in range(a.num_layers)):
        reason = "routed experts"
    else:
        reason = None
    if reason is not None:
        with pytest.raises(PrunekitError, match=reason) as e:
            prune(loaded, config, _calib(tmp_path))
        assert "\n" not in str(e.value)
        return
    res = prune(loaded, config, _calib(tmp_path))  # the pipeline checks the plan's count against the pruned model
    assert res.plan["method"] == "policy-gradient" and 0.2 < res.plan["ratio_removed"] < 0.3
    assert res.plan["options"]["steps"] == 4 and "importance" not in res.plan["options"]
    assert len(res.plan["width"]["theta"]) == 4
    with torch.no_grad():
        assert torch.isfinite(res.loaded.model(input_ids=_windows(1).ids).logits).all()


def test_steps_zero_keeps_the_initialisations_top_k(one_thread, tmp_path):
    res = prune(_loaded("llama"), PolicyConfig(ratio=0.2, steps=0, init="wanda"), _calib(tmp_path))
    for row, entry in zip(res.plan["width"]["theta"], res.plan["width"]["layers"]):
        theta = row["mlp_channels"]
        kept = entry.get("mlp_channels", list(range(len(theta))))
        dropped = [theta[j] for j in range(len(theta)) if j not in kept]
        assert not dropped or max(dropped) <= min(theta[j] for j in kept)
    with pytest.raises(PrunekitError, match="`masks`"):
        PolicyConfig(ratio=0.2, masks=1)


class Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_plan(one_thread, tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    cal = CalibConfig(source=str(calib), seq_len=16, batch_size=2)
    config = PolicyConfig(ratio=0.2, steps=40, journal_every=5, units="mixed")
    prune(str(model_dir), config, cal, out=tmp_path / "ref")

    def kill(stage, done, total, info=None):
        if done == 23:
            raise Killed

    with pytest.raises(Killed):
        prune(str(model_dir), config, cal, out=tmp_path / "k", progress=kill)
    steps = [json.loads(x)["step"] for x in (tmp_path / "k" / "journal.jsonl").read_text().splitlines()[1:]]
    assert steps == [0, 5, 10, 15, 20]
    res = prune(str(model_dir), config, cal, out=tmp_path / "k", resume=True)
    assert res.timing["resumed_at_step"] == 20 and res.timing["steps_run"] == 20
    assert (tmp_path / "k" / "plan.json").read_bytes() == (tmp_path / "ref" / "plan.json").read_bytes()


def test_resume_refuses_other_options(one_thread, tmp_path):
    model_dir, calib = make_tiny_workspace(tmp_path)
    cal = CalibConfig(source=str(calib), seq_len=16, batch_size=2)

    def kill(stage, done, total, info=None):
        if done == 7:
            raise Killed

    with pytest.raises(Killed):
        prune(str(model_dir), PolicyConfig(ratio=0.2, steps=30, journal_every=5), cal, out=tmp_path / "k", progress=kill)
    with pytest.raises(PrunekitError, match="method options differ"):
        prune(str(model_dir), PolicyConfig(ratio=0.2, steps=30, lr=0.1, journal_every=5), cal, out=tmp_path / "k", resume=True)


@pytest.mark.subprocess
def test_sigkill_then_resume_gives_the_same_plan(tmp_path):
    """A real ``prunekit prune --method policy-gradient`` killed with SIGKILL after two journal points."""
    model_dir, calib = make_tiny_workspace(tmp_path, layers=6)
    common = ["prune", str(model_dir), "--method", "policy-gradient", "--ratio", "0.2", "--calib", str(calib),
              "--seq-len", "16", "--batch-size", "2", "--steps", "3000", "--units", "mixed"]
    env = {"OMP_NUM_THREADS": "1"}  # the same arithmetic in every run
    ref = run_cli(*common, "--out", str(tmp_path / "ref"), env=env)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # header, the initialisation, step 10
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [json.loads(x)["step"] for x in journal.read_text().splitlines()[1:] if x.strip().endswith("}")]
    assert len(done) >= 2 and max(done) < 3000, "the kill came too late to test resuming"
    assert not (out / "plan.json").exists()
    r = run_cli(*common, "--out", str(out), "--resume", env=env)
    assert r.returncode == 0, r.stderr
    assert "resumed the policy-gradient run after step" in r.stdout + r.stderr
    assert (out / "plan.json").read_bytes() == (tmp_path / "ref" / "plan.json").read_bytes()


def test_units_and_kinds():
    loaded = _loaded("llama")
    units = build_units(loaded.adapter, 1, 3, mixed=True)
    assert int((units.kind == HEAD).sum()) == 2 * 2 and int((units.kind == CHANNEL).sum()) == 2 * 96
    assert int((units.kind == BLOCK).sum()) == 4 and units.block_pos(units.blocks[0]) == 4 + 192
