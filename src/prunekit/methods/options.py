"""Options of the depth methods (:class:`DepthConfig`), validated on construction.

What a method can do (its units, search variants, criterion) is checked against the method
registry (:mod:`prunekit.methods.registry`) when a run starts, not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunekit.core.errors import PrunekitError, check_choice, check_positive_int
from prunekit.models.adapter import ModelAdapter

SEARCHES = ("greedy", "beam:K", "greedy+swap")


def parse_search(value: str) -> tuple[str, int]:
    """``--search``: ``greedy`` -> ("greedy", 1), ``greedy+swap`` -> ("greedy+swap", 1), ``beam:K`` -> ("beam", K).

    K >= 2 (``beam:1`` is greedy itself; the library accepts it, the flag does not).
    """
    if value in ("greedy", "greedy+swap"):
        return value, 1
    kind, _, k = str(value).partition(":")
    if kind == "beam" and k.isdigit() and int(k) >= 2:
        return "beam", int(k)
    raise PrunekitError(
        f"`search` '{value}' is not known.",
        "Use greedy, greedy+swap or beam:K with a beam width K of 2 or more (e.g. beam:3).",
    )


#: What ``ratio`` is a fraction of: ``total`` = every parameter of the model (embedding and LM head included;
#: the default), ``decoder`` = the decoder layers' parameters (the embedding, final norm and LM head left out).
RATIO_OF = ("total", "decoder")


def ratio_base(adapter: ModelAdapter, ratio_of: str) -> int:
    """The parameter count ``ratio`` is a fraction of (see :data:`RATIO_OF`)."""
    return adapter.decoder_params() if check_choice("`ratio_of`", ratio_of, RATIO_OF) == "decoder" else adapter.total_params()


def base_name(ratio_of: str) -> str:
    """How an error message names the parameters ``ratio`` is a fraction of."""
    return "the decoder layers' parameters" if ratio_of == "decoder" else "the parameters"


CACHE_MODES = ("none", "prefix", "trajectory")
RUNTIME_OPTIONS = ("cache", "early_exit", "cache_gb", "candidate_batch", "max_memory", "device_map")  # change the speed, never the choices



@dataclass
class DepthConfig:
    """Options of a depth (block / layer) pruning search.

    ``remove``: number of units to remove; ``ratio``: fraction of the parameters to remove (the search
    stops once at least that fraction is removed). Exactly one is given. ``ratio_of``: what ``ratio`` is
    a fraction of, ``total`` (every parameter) or ``decoder`` (the decoder layers'; :data:`RATIO_OF`).
    ``cache``: how much the engine keeps (``trajectory`` = prefix + trajectory caches);
    ``cache_gb``: the memory budget of the kept states (default: half the free memory).
    ``candidate_batch``: candidates of a greedy step run as one group (default: on the CPU, one per
    lane — the torch threads, each candidate of a group on its own thread —; on an accelerator,
    stacked into one batch, as many as a quarter of its free memory holds, at most 16).
    ``max_memory``: GiB of weights resident on the compute device; the rest stay memory-mapped in
    the checkpoint's dtype and blocks are brought in as they run (the plan is the uncapped one).
    ``device_map``: ``auto`` or ``{module name: device}`` (a dict, inline JSON or a .json path):
    the checkpoint split over devices by accelerate, each block run on its own device (same plan).
    """

    method: str = "blockpruner"
    blocks_kind: str = "mix"
    remove: int | None = None
    ratio: float | None = None
    ratio_of: str = "total"
    search: str = "greedy"
    cache: str = "trajectory"
    early_exit: bool = True
    cache_gb: float | None = None
    candidate_batch: int | None = None
    max_memory: float | None = None
    device_map: str | dict | None = None

    def __post_init__(self) -> None:
        check_choice("`blocks_kind`", self.blocks_kind, ("mix", "attn", "mlp"))
        parse_search(self.search)
        check_choice("`ratio_of`", self.ratio_of, RATIO_OF)
        check_choice("`cache`", self.cache, CACHE_MODES)
        if (self.remove is None) == (self.ratio is None):
            raise PrunekitError("give exactly one of `remove` and `ratio`.", "For example `ratio` 0.2 or `remove` 8.")
        if self.remove is not None:
            check_positive_int("remove", self.remove)
        if self.ratio is not None and not (0.0 < float(self.ratio) < 1.0):
            raise PrunekitError(f"`ratio` {self.ratio} is outside (0, 1).", "Use a fraction of the parameters, e.g. `ratio` 0.2.")
        if self.cache_gb is not None and not self.cache_gb > 0:
            raise PrunekitError(f"`cache_gb` {self.cache_gb} must be positive.", "Use e.g. `cache_gb` 4.")
        if self.candidate_batch is not None:
            check_positive_int("candidate_batch", self.candidate_batch)
        if self.max_memory is not None and not self.max_memory > 0:
            raise PrunekitError(f"`max_memory` {self.max_memory} must be positive.", "Use e.g. `max_memory` 20 (GiB).")
        if self.device_map is not None and self.max_memory is not None:
            raise PrunekitError("`device_map` and `max_memory` do not go together (a split over devices, or blocks brought in to one).",
                                "Give one of them.")

    def as_dict(self) -> dict:
        return asdict(self)

    def plan_options(self) -> dict:
        """The options a plan records: all but the :data:`RUNTIME_OPTIONS` (speed only)."""
        return {k: v for k, v in self.as_dict().items() if k not in RUNTIME_OPTIONS}

