"""Options of LLM-Pruner width pruning (``prunekit prune --method llm-pruner``), validated on
construction; every error names the flag and the fix.

``ratio`` is the fraction of the model's TOTAL parameters to remove (embeddings and LM head
included in the total), or with ``ratio_of`` ``decoder`` of its decoder layers' parameters. The
authors' ``--pruning_ratio`` is a per-layer fraction inside the pruned layer range; prunekit solves
for the per-layer fraction that reaches ``ratio`` and records it in the plan (``width.per_layer_fraction``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from prunekit.core.errors import PrunekitError, check_choice
from prunekit.methods.options import RATIO_OF

#: Per-weight scores (``w``: a weight, ``g``: dL/dw of the calibration loss, ``F``: the diagonal
#: Fisher approximation of the Hessian, mean over samples of the per-sample squared gradient):
#: l1 = |w|; l2 = w^2; element1 = param_first = |w g|; element2 = param_mix = |w g - w^2 F / 2|;
#: param_second = w^2 F / 2; vector = |sum of w g over the whole group|; random; fusion = param_first and vector
#: blended per layer with a weight chosen from the calibration loss (:mod:`prunekit.methods.width.fusion`).
IMPORTANCES = ("param_first", "element1", "element2", "param_second", "param_mix", "vector", "fusion", "l1", "l2", "random")
TAYLOR = ("param_first", "element1", "element2", "param_second", "param_mix", "vector", "fusion")
NEEDS_FISHER = ("element2", "param_second", "param_mix")
AGGREGATES = ("sum", "mean", "max", "prod", "last")
STRATEGIES = ("block", "channel")
RUNTIME_OPTIONS = ("max_memory",)  # change where the weights are held, never the plan


def parse_layers(spec: str | None, num_layers: int) -> tuple[int, int]:
    """``--layers START:END`` (END exclusive, Python-slice style) -> (start, end), checked against the model.

    ``None`` is the default range: the authors' LLaMA-7B range (layers 4..29 of 32) scaled to the
    model, always sparing at least the first and the last layer: ``START = max(1, round(4L/32))``,
    ``END = min(L-1, L - round(2L/32))`` (halves rounded up); SmolLM2's 30 layers: ``4:28``.
    """
    if spec is None:
        if num_layers < 3:
            return 0, num_layers
        start = max(1, math.floor(4 * num_layers / 32 + 0.5))
        end = min(num_layers - 1, num_layers - math.floor(2 * num_layers / 32 + 0.5))
        return (start, end) if start < end else (1, num_layers - 1)
    start, end = _split_layers(spec)
    start = 0 if start is None else start
    end = num_layers if end is None else end
    if start < 0:
        start += num_layers
    if end < 0:
        end += num_layers
    if not (0 <= start < end <= num_layers):
        raise PrunekitError(
            f"`layers` {spec} is out of range for a model of {num_layers} layers.",
            f"Use START:END with 0 <= START < END <= {num_layers}, e.g. `layers` 1:{num_layers - 1}.",
        )
    return start, end


def _split_layers(spec: str) -> tuple[int | None, int | None]:
    parts = str(spec).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(int(p) if p.strip() else None for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise PrunekitError(f"`layers` '{spec}' is not START:END.", "Use e.g. `layers` 1:29 (END exclusive).") from None


@dataclass
class WidthConfig:
    """Options of one LLM-Pruner run (flags in parentheses).

    ``ratio`` (``--ratio``): the fraction of the parameters to remove, of all of them or, with ``ratio_of``
    (``--ratio-of``) ``decoder``, of the decoder layers' (:data:`prunekit.methods.options.RATIO_OF`);
    ``importance`` (``--importance``): see :data:`IMPORTANCES`; ``aggregate`` (``--aggregate``):
    how the scores of a group's parts (q/k/v/o of a KV group; gate/up/down of a channel) combine;
    ``strategy`` (``--strategy``): ``block`` = heads and MLP channels inside ``layers``
    (``--layers START:END``), the same fraction in every layer unless ``global_`` (``--global``);
    ``channel`` = the hidden dimension across the whole model; ``samples`` (``--samples``): the
    calibration windows whose gradients are accumulated (their length is ``--seq-len``);
    ``at_least`` (``--at-least``): remove at least ``ratio`` of the parameters (the depth methods'
    rule, used by ``compare``) instead of the reachable amount closest to it; ``max_memory``
    (``--max-memory``): GiB of weights resident on the compute device, the gradient pass then runs
    layer by layer (a runtime option: the plan records it nowhere, the plan is the uncapped one's).
    """

    method: ClassVar[str] = "llm-pruner"  # the registry's name; not an option
    ratio: float = 0.2
    ratio_of: str = "total"
    importance: str = "param_first"
    aggregate: str = "sum"
    strategy: str = "block"
    layers: str | None = None
    global_: bool = False
    samples: int = 10
    seed: int = 0
    at_least: bool = False
    max_memory: float | None = None

    def __post_init__(self) -> None:
        check_choice("`importance`", self.importance, IMPORTANCES)
        check_choice("`aggregate`", self.aggregate, AGGREGATES)
        check_choice("`strategy`", self.strategy, STRATEGIES)
        check_choice("`ratio_of`", self.ratio_of, RATIO_OF)
        if self.ratio is None:
            raise PrunekitError("llm-pruner needs `ratio` (the fraction of the total parameters to remove).", "Use e.g. `ratio` 0.2.")
        if isinstance(self.ratio, bool) or not (0.0 < float(self.ratio) < 1.0):
            raise PrunekitError(f"`ratio` {self.ratio} is outside (0, 1).", "Use a fraction of the total parameters, e.g. `ratio` 0.2.")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or self.samples < 1:
            raise PrunekitError(f"`samples` {self.samples} is out of range.", "Use 1 or more calibration samples (the paper uses 10).")
        if self.max_memory is not None and (isinstance(self.max_memory, bool) or not self.max_memory > 0):
            raise PrunekitError(f"`max_memory` {self.max_memory} must be positive.", "Use e.g. `max_memory` 20 (GiB).")
        if self.layers is not None:
            _split_layers(self.layers)
        if self.strategy == "channel" and self.layers is not None:
            raise PrunekitError("`layers` applies to `strategy` block only.", "Drop `layers`, or use `strategy` block.")
        if self.strategy == "channel" and self.global_:
            raise PrunekitError("`global` applies to `strategy` block only.", "Drop `global`, or use `strategy` block.")
        if self.global_ and self.aggregate == "prod":
            raise PrunekitError(
                "`aggregate` prod cannot rank groups across layers (its scores are kept as logs).",
                "Use `aggregate` sum, mean, max or last with `global`.",
            )
        if self.importance == "fusion" and (self.strategy != "block" or self.max_memory is not None):
            raise PrunekitError("`importance` fusion masks each layer's structures in a forward of the whole model.",
                                "Use it with `strategy` block and without `max_memory`.")
        if self.importance in ("vector", "fusion") and self.aggregate not in ("sum", "mean"):
            raise PrunekitError(
                f"`aggregate` {self.aggregate} does not apply to `importance` vector (its score is |sum of w*g| over the whole group).",
                "Use `aggregate` sum (or mean) with vector.",
            )

    @property
    def needs_gradients(self) -> bool:
        return self.importance in TAYLOR

    @property
    def needs_fisher(self) -> bool:
        return self.importance in NEEDS_FISHER

    def as_dict(self) -> dict:
        """The options a plan (and the gradient journal) records: all but :data:`RUNTIME_OPTIONS`."""
        d = asdict(self)
        d["global"] = d.pop("global_")
        for k in RUNTIME_OPTIONS:
            d.pop(k)
        return d
