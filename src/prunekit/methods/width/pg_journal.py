"""Journal and resume of the policy-gradient method (``prune --method policy-gradient --out OUT [--resume]``).

The run's state after step ``t`` is small: θ (float64 ``[n]``), the baseline δ, the step count (the
schedule and plain SGD keep no other state: ``η_t`` is a function of ``t``), the mask generator's state
(``torch.Generator.get_state()``, uint8) and the dense model's calibration loss. Every ``journal_every``
steps (and after the initialisation, step 0, and the last step) the state goes to
``OUT/.policy.partial.safetensors`` (written aside, fsynced, renamed into place), then one line
``{"stage": "policy-gradient", "step": t, "baseline": δ, "loss": mean loss of the step}`` to
``OUT/journal.jsonl`` (:mod:`prunekit.core.journal`: fingerprint = model weights, calibration, options).

``resume`` reloads the state named by the last line and continues with step ``t + 1``: the same θ,
δ, generator and batch order, so the final plan is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.core.errors import PrunekitError
from prunekit.core.journal import Journal, read_state, write_state

STATE_NAME = ".policy.partial.safetensors"


@dataclass
class PolicyState:
    """What a resumed run needs: θ, baseline (None before the first step), step done, generator state, dense loss."""

    theta: torch.Tensor
    baseline: float | None
    step: int
    generator: torch.Tensor
    dense_loss: float


class PolicyJournal:
    """Resumable points of a policy-gradient run in ``out`` (see the module docstring)."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool) -> None:
        self.out = Path(out)
        self.journal = Journal.open(self.out, fingerprint, resume)
        self.state_path = self.out / STATE_NAME

    @property
    def path(self) -> Path:
        return self.journal.path

    def start(self) -> PolicyState | None:
        """The state of the last journaled point, or None (start from the initialisation)."""
        recs = [r for r in self.journal.records if r.get("stage") == "policy-gradient"]
        if not recs:
            return None
        want = recs[-1]["step"]
        meta, tensors = read_state(self.state_path, what="the policy state",
                                   fix="Run without `resume` (with `overwrite`) to start again.")
        if int(meta.get("step", -1)) != want:
            raise PrunekitError(f"`resume`: the policy state holds step {meta.get('step')}, the journal says {want}.",
                                "Run without `resume` (with `overwrite`) to start again.")
        baseline = float(tensors["baseline"][0]) if bool(tensors["has_baseline"][0]) else None
        return PolicyState(tensors["theta"], baseline, want, tensors["generator"], float(tensors["dense_loss"][0]))

    def write(self, state: PolicyState, loss: float | None) -> None:
        """Write the state, then the journal line that names it."""
        tensors = {
            "theta": state.theta.contiguous(), "generator": state.generator.contiguous(),
            "baseline": torch.tensor([state.baseline or 0.0], dtype=torch.float64),
            "has_baseline": torch.tensor([state.baseline is not None], dtype=torch.uint8),
            "dense_loss": torch.tensor([state.dense_loss], dtype=torch.float64),
        }
        write_state(self.state_path, tensors, {"step": str(state.step)})
        self.journal.append({"stage": "policy-gradient", "step": state.step, "baseline": state.baseline, "loss": loss})
