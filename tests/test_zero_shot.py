"""Zero-shot evaluation through lm-eval on the in-memory pruned model, over a local task (a JSONL shipped
in tests/data and a task YAML): lm-eval's acc / acc_norm must equal the same metrics computed directly
from the model's log-likelihoods; --limit, offline refusals and the CLI path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.hub import OFFLINE_SWITCHES, hub_offline
from prunekit.models.contract import ATTN, Block
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import tiny_model, tiny_tokenizer

pytest.importorskip("lm_eval")
from prunekit.evaluation import zero_shot as zs_mod
from prunekit.evaluation.zero_shot import zero_shot

DATA = Path(__file__).parent / "data"
VOCAB = 300


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """tests/data/zs_tiny.yaml pointed at the absolute path of tests/data/zs_tiny.jsonl."""
    d = tmp_path_factory.mktemp("tasks")
    text = (DATA / "zs_tiny.yaml").read_text().replace("DATA_FILE", str(DATA / "zs_tiny.jsonl"))
    (d / "zs_tiny.yaml").write_text(text)
    return d


@pytest.fixture(scope="module")
def pruned():
    loaded = wrap_model(tiny_model("llama", vocab_size=VOCAB, seed=3), tiny_tokenizer(VOCAB))
    loaded.adapter.remove_block(Block.of(0, ATTN))  # runs with a zero attention, as pruned models do
    return loaded


def _direct_metrics(loaded, docs):
    """acc and acc_norm computed here from the model: sum of log p(choice tokens | question), argmax."""
    tok, model = loaded.tokenizer, loaded.model
    acc = norm = 0
    for d in docs:
        ctx = tok(d["question"])["input_ids"]
        lls = []
        for choice in d["choices"]:
            cont = tok(" " + choice)["input_ids"]  # lm-eval's default target delimiter is a space
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            lls.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        acc += int(max(range(len(lls)), key=lambda i: lls[i]) == d["label"])
        normed = [ll / len((" " + c).encode()) for ll, c in zip(lls, d["choices"])]
        norm += int(max(range(len(normed)), key=lambda i: normed[i]) == d["label"])
    return acc / len(docs), norm / len(docs)


def test_lm_eval_metrics_equal_direct_computation(pruned, task_dir):
    docs = [json.loads(line) for line in (DATA / "zs_tiny.jsonl").read_text().splitlines() if line.strip()]
    res = zero_shot(pruned, ["zs_tiny"], task_dir=task_dir, batch_size=4)
    row = res["tasks"]["zs_tiny"]
    acc, acc_norm = _direct_metrics(pruned, docs)
    assert row["samples"] == len(docs)
    assert row["acc"] == pytest.approx(acc) and row["acc_norm"] == pytest.approx(acc_norm)
    assert res["average_acc"] == pytest.approx(acc) and res["average_acc_norm"] == pytest.approx(acc_norm)
    limited = zero_shot(pruned, ["zs_tiny"], task_dir=task_dir, limit=3)
    assert limited["tasks"]["zs_tiny"]["samples"] == 3
    assert limited["tasks"]["zs_tiny"]["acc"] == pytest.approx(_direct_metrics(pruned, docs[:3])[0])


def test_offline_names_what_could_not_be_fetched(pruned, tmp_path, monkeypatch):
    (tmp_path / "hubtask.yaml").write_text((DATA / "zs_tiny.yaml").read_text()
                                           .replace("task: zs_tiny", "task: hub_only")
                                           .replace("dataset_path: json", "dataset_path: someorg/not-cached-dataset"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrunekitError, match=r"could not fetch the datasets of hub_only \(someorg/not-cached-dataset\)"):
        zero_shot(pruned, ["hub_only"], task_dir=tmp_path)


def _hub_task(tmp_path) -> Path:
    (tmp_path / "hubtask.yaml").write_text((DATA / "zs_tiny.yaml").read_text()
                                           .replace("task: zs_tiny", "task: hub_only")
                                           .replace("dataset_path: json", "dataset_path: someorg/cached-dataset"))
    return tmp_path


def test_cached_data_runs_offline_and_the_switches_are_restored(pruned, tmp_path, monkeypatch):
    """Hub unreachable, the task's dataset cached: lm-eval runs with the offline switches set, and afterwards
    they are as before the call (unset here), not left set for the rest of the process."""
    import lm_eval

    for name in OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(zs_mod, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(zs_mod, "_cached", lambda path: path == "someorg/cached-dataset")
    seen = {}

    def simple_evaluate(**kwargs):
        seen.update({name: os.environ.get(name) for name in OFFLINE_SWITCHES})
        return {"results": {"hub_only": {"acc,none": 0.5}}, "n-samples": {"hub_only": {"effective": 2}}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    res = zero_shot(pruned, ["hub_only"], task_dir=_hub_task(tmp_path))
    assert res["tasks"]["hub_only"]["acc"] == 0.5
    assert seen == dict.fromkeys(OFFLINE_SWITCHES, "1")
    assert all(name not in os.environ for name in OFFLINE_SWITCHES)


def test_hub_offline_restores_what_was_there(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(RuntimeError), hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
        raise RuntimeError("the block failed")
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
    with hub_offline(active=False):
        assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ


def test_bad_input_is_refused(pruned, task_dir):
    with pytest.raises(PrunekitError, match="'zs_tinyy' is not an lm-eval task.*Did you mean 'zs_tiny'"):
        zero_shot(pruned, ["zs_tinyy"], task_dir=task_dir)
    with pytest.raises(PrunekitError, match="`limit` 0"):
        zero_shot(pruned, ["zs_tiny"], task_dir=task_dir, limit=0)
    with pytest.raises(PrunekitError, match="names no task"):
        zero_shot(pruned, [" "], task_dir=task_dir)


def test_cli_eval_tasks_on_a_pruned_output(pruned, task_dir, tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli.main import app
    from prunekit.plan.apply import save_pruned

    plan = {"prunekit_plan": 1, "method": "manual", "options": {}, "calibration": {}, "width": None,
            "model": {"spec": "<in-memory>", "model_type": "llama", "config": pruned.model.config.to_dict()},
            "removed": [{"step": 0, "unit": "attn 0", "blocks": [0]}],
            "params_before": 0, "params_after": pruned.adapter.total_params(), "ratio_removed": 0.0}
    save_pruned(pruned, plan, tmp_path / "out")
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "out"), "--tasks", "zs_tiny", "--task-dir", str(task_dir),
                                   "--limit", "4"])
    assert res.exit_code == 0, res.output
    assert "zs_tiny" in res.output and "average" in res.output
