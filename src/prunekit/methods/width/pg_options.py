"""Options of the policy-gradient width method (``prunekit prune --method policy-gradient``), validated on
construction; every error names the option and the fix.

:class:`PolicyConfig` is a :class:`~prunekit.methods.width.options.WidthConfig` (the registry and the
pipeline treat every width method's options as one), but only ``ratio``, ``layers``, ``samples`` (the
windows of the Taylor initialisation) and ``seed`` of the parent mean anything here; the plan records
:meth:`PolicyConfig.as_dict`, which leaves the others out. ``ratio`` is, as for llm-pruner, the fraction
of the model's TOTAL parameters to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prunekit.core.errors import PrunekitError, check_choice, check_positive_int
from prunekit.methods.width.options import WidthConfig

INITS = ("wanda", "taylor", "uniform")
UNITS = ("width", "mixed")
ESTIMATORS = ("sqrt", "score")
#: Options of the parent that the policy-gradient method does not read (left out of its plan).
UNUSED_PARENT = ("importance", "aggregate", "strategy", "global", "at_least")
#: Options that change how the run is journaled, never the plan.
PG_RUNTIME = ("journal_every",)


@dataclass
class PolicyConfig(WidthConfig):
    """Options of one policy-gradient run (flags in parentheses; see docs/width.md).

    ``steps`` (``--steps``): SGD steps on the keep probabilities θ (0: the initialisation's top-k);
    ``masks`` (``--masks``): Bernoulli masks drawn per step, K >= 2, run as one batched forward;
    ``lr`` (``--lr``): the peak learning rate of the cosine schedule; ``init`` (``--init``): ``wanda``,
    ``taylor`` or ``uniform``; ``units`` (``--units``): ``width`` (KV groups and MLP channels, separate
    budgets) or ``mixed`` (also whole attention and MLP blocks, one parameter-weighted budget);
    ``estimator`` (``--estimator``): ``sqrt`` (the authors' code) or ``score`` (the exact Bernoulli score,
    unbiased); ``layers`` (``--layers START:END``): the layers with units (default: all of them);
    ``journal_every``: steps between journal points (a runtime option).
    """

    method: ClassVar[str] = "policy-gradient"
    steps: int = 200
    masks: int = 2
    lr: float = 0.05
    init: str = "wanda"
    units: str = "width"
    estimator: str = "sqrt"
    journal_every: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("`init`", self.init, INITS)
        check_choice("`units`", self.units, UNITS)
        check_choice("`estimator`", self.estimator, ESTIMATORS)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise PrunekitError(f"`steps` {self.steps} is out of range.", "Use 0 (the initialisation alone) or more steps.")
        if not isinstance(self.masks, int) or isinstance(self.masks, bool) or self.masks < 2:
            raise PrunekitError(f"`masks` {self.masks} is out of range.", "Use 2 or more masks per step (the authors use 2).")
        check_positive_int("journal_every", self.journal_every)
        if isinstance(self.lr, bool) or not float(self.lr) > 0:
            raise PrunekitError(f"`lr` {self.lr} must be positive.", "Use e.g. `lr` 0.05.")
        if self.max_memory is not None:
            raise PrunekitError("policy-gradient runs the whole model on one device; `max_memory` does not apply to it.",
                                "Drop `max_memory`, or use `method` llm-pruner.")
        if self.at_least or self.strategy != "block" or self.global_:
            raise PrunekitError("`at_least`, `strategy` and `global` are llm-pruner options; policy-gradient ranks every unit globally.",
                                "Drop them.")

    @property
    def needs_gradients(self) -> bool:
        return self.init == "taylor"

    @property
    def needs_fisher(self) -> bool:
        return False

    def as_dict(self) -> dict:
        """The options a plan (and the journal's fingerprint) records."""
        d = super().as_dict()
        for k in UNUSED_PARENT + PG_RUNTIME:
            d.pop(k, None)
        return d
