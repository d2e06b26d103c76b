"""engine/memo.py: a second search on the same model and calibration reads the first one's candidate sums
(``prunekit demo``: budget-greedy, then BlockPruner) and still makes exactly the plan it makes alone."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.data.calibration import CalibConfig
from prunekit.engine.memo import ScoreMemo
from prunekit.methods.options import DepthConfig
from prunekit.models.loading import wrap_model
from prunekit.models.tiny import TINY_TEXT, tiny_model, tiny_tokenizer
from prunekit.pipeline.prune import prune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    path = tmp_path_factory.mktemp("memo") / "calib.txt"
    path.write_text((TINY_TEXT + "\n\n") * 40, encoding="utf-8")
    return CalibConfig(source=str(path), seq_len=16, windows=4, batch_size=1)


@pytest.mark.parametrize("first,second,dtype", [("budget-greedy", "blockpruner", torch.float32),
                                                ("budget-greedy", "blockpruner", torch.bfloat16),
                                                ("blockpruner", "budget-greedy", torch.bfloat16),
                                                ("blockpruner", "blockpruner", torch.float32)])
def test_a_shared_memo_changes_work_not_plans(cal, first, second, dtype):
    """The second search's plan with the memo is its plan alone, byte for byte (in bfloat16 too, as the demo searches)."""
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=6).to(dtype), tiny_tokenizer())
    alone = prune(loaded, DepthConfig(method=second, ratio=0.3), cal)
    memo = ScoreMemo()
    prune(loaded, DepthConfig(method=first, ratio=0.3), cal, memo=memo)
    shared = prune(loaded, DepthConfig(method=second, ratio=0.3), cal, memo=memo)
    assert json.dumps(shared.plan) == json.dumps(alone.plan)  # byte for byte: choices, values, dense value
    assert shared.timing["memo_hits"] > 0 and alone.timing["memo_hits"] == 0
    assert shared.timing["work"]["block_runs"] < alone.timing["work"]["block_runs"]
    if first == second:  # the same search again reads every candidate's sums: it runs only the prefix states it keeps
        assert shared.timing["work"]["block_runs"] < alone.timing["work"]["block_runs"] / 3


def test_a_memo_is_refused_on_other_inputs(cal):
    loaded = wrap_model(tiny_model("llama", num_hidden_layers=4), tiny_tokenizer())
    memo = ScoreMemo()
    prune(loaded, DepthConfig(method="blockpruner", remove=1), cal, memo=memo)
    other = CalibConfig(**(cal.as_dict() | {"windows": 3}))
    with pytest.raises(ValueError, match="same model, windows"):
        prune(loaded, DepthConfig(method="blockpruner", remove=1), other, memo=memo)
