"""Outputs are never half-written: a failure while writing the model leaves the previous OUT/ intact."""

from __future__ import annotations

import pytest

import prunekit as pk
import prunekit.plan.apply as apply_mod
from helpers import make_tiny_workspace


def test_failure_while_writing_the_model_leaves_previous_out_intact(tmp_path, monkeypatch):
    model_dir, calib = make_tiny_workspace(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("the earlier result")
    depth = pk.DepthConfig(remove=2)
    cal = pk.CalibConfig(source=str(calib), seq_len=16, windows=4, batch_size=2)

    def broken_save(*args, **kwargs):
        raise OSError("disk failed while writing the weights")

    monkeypatch.setattr(apply_mod, "save_model", broken_save)
    with pytest.raises(OSError, match="disk failed"):
        pk.prune(str(model_dir), depth, cal, out=out, overwrite=True, device="cpu")
    assert (out / "previous.txt").read_text() == "the earlier result"
    assert not (out / "plan.json").exists() and not (out / "model.safetensors").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == [], leftovers
    # only the journal of the finished steps was added (it is what --resume continues from)
    assert sorted(p.name for p in out.iterdir()) == ["journal.jsonl", "previous.txt"]
