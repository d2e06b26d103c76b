"""Calibration windows: where they come from (:class:`CalibConfig`) and the windows of a loaded
model's tokenizer (:func:`calibration_windows`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunekit.core.errors import PrunekitError, check_choice, check_positive_int
from prunekit.data.windows import Windows, build_windows
from prunekit.models.loading import LoadedModel


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
        check_positive_int("seq_len", self.seq_len)
        if self.windows is not None and (not isinstance(self.windows, int) or self.windows < 1):
            raise PrunekitError(f"`windows` {self.windows} asks for no windows.", "Use `windows` 1 or more.")
        check_choice("`sample`", self.sample, ("first", "random"))
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("rows", self.rows)

    def as_dict(self) -> dict:
        return asdict(self)


def calibration_windows(loaded: LoadedModel, calib: CalibConfig) -> Windows:
    """The windows ``calib`` describes, tokenized by ``loaded``'s tokenizer (within its positions)."""
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    return build_windows(
        loaded.tokenizer, calib.source, calib.seq_len, calib.windows, sample=calib.sample, seed=calib.seed,
        max_positions=max_pos, rows=calib.rows,
    )


def calibration_record(windows: Windows, batch_size: int, ignore_index: int | None) -> dict:
    """The plan's record of the calibration: the windows' fingerprint, the batch size and the ignored label
    (every method's plan and journal fingerprint use this one record)."""
    return windows.fingerprint() | {"batch_size": batch_size, "ignore_index": ignore_index}
