"""Per-stage options, validated on construction; errors name the flag and the bad value."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import PrunekitError, check_choice

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
        f"--search '{value}' is not known.",
        "Use greedy, greedy+swap or beam:K with a beam width K of 2 or more (e.g. beam:3).",
    )


CACHE_MODES = ("none", "prefix", "trajectory")


def _positive_int(flag: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PrunekitError(f"{flag} {value} is out of range.", f"Use a whole number of 1 or more for {flag}.")


@dataclass
class CalibConfig:
    """Where calibration windows come from (``--calib``, ``--seq-len``, ``--windows``, ``--sample``, ``--seed``).

    Defaults follow the BlockPruner paper (Alpaca, 2048-token windows, all windows of 256 rows);
    on a CPU use the embedded ``wiki`` with a few short windows.
    """

    source: str = "alpaca"
    seq_len: int = 2048
    windows: int | None = None
    sample: str = "first"
    seed: int = 0
    batch_size: int = 2
    rows: int = 256

    def __post_init__(self) -> None:
        _positive_int("--seq-len", self.seq_len)
        if self.windows is not None and (not isinstance(self.windows, int) or self.windows < 1):
            raise PrunekitError(f"--windows {self.windows} asks for no windows.", "Use --windows 1 or more.")
        check_choice("--sample", self.sample, ("first", "random"))
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--rows", self.rows)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DepthConfig:
    """Options of a depth (block / layer) pruning search.

    ``remove``: number of units to remove; ``ratio``: fraction of the model's total parameters to
    remove (the search stops once at least that fraction is removed). Exactly one is given.
    ``cache``: how much the engine keeps (``trajectory`` = prefix + trajectory caches);
    ``cache_gb``: the memory budget of the kept states (default: half the free memory).
    ``candidate_batch``: candidates of a greedy step run as one batch (default: 1 on the CPU, as
    many as a quarter of the free accelerator memory holds, at most 16, on an accelerator).
    """

    method: str = "blockpruner"
    blocks_kind: str = "mix"
    remove: int | None = None
    ratio: float | None = None
    search: str = "greedy"
    cache: str = "trajectory"
    early_exit: bool = True
    cache_gb: float | None = None
    candidate_batch: int | None = None

    def __post_init__(self) -> None:
        from .depth.methods import DEPTH_METHODS

        check_choice("--method", self.method, sorted(DEPTH_METHODS))
        check_choice("--blocks-kind", self.blocks_kind, ("mix", "attn", "mlp"))
        parse_search(self.search)
        if self.search != "greedy":
            from .depth.beam import SEARCH_METHODS

            if self.method not in SEARCH_METHODS:
                raise PrunekitError(
                    f"--search {self.search} applies to the greedy methods ({', '.join(SEARCH_METHODS)}); '{self.method}' ranks units in one shot.",
                    "Drop --search, or use --method blockpruner.",
                )
        check_choice("--cache", self.cache, CACHE_MODES)
        if (self.remove is None) == (self.ratio is None):
            raise PrunekitError("give exactly one of --remove and --ratio.", "For example --ratio 0.2 or --remove 8.")
        if self.remove is not None:
            _positive_int("--remove", self.remove)
        if self.ratio is not None and not (0.0 < float(self.ratio) < 1.0):
            raise PrunekitError(f"--ratio {self.ratio} is outside (0, 1).", "Use a fraction of the parameters, e.g. --ratio 0.2.")
        if self.cache_gb is not None and not self.cache_gb > 0:
            raise PrunekitError(f"--cache-gb {self.cache_gb} must be positive.", "Use e.g. --cache-gb 4.")
        if self.candidate_batch is not None:
            _positive_int("--candidate-batch", self.candidate_batch)

    def as_dict(self) -> dict:
        return asdict(self)


def default_cache_bytes(device) -> float:
    """Half of the free memory of ``device`` (accelerator memory, or RAM for the CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free / 2
    try:
        import psutil

        return psutil.virtual_memory().available / 2
    except ImportError:  # pragma: no cover
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2
