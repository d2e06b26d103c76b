"""The search journal: every finished step, flushed and fsynced, so a killed search resumes.

``OUT/journal.jsonl`` holds a header line ``{"journal": 1, "fingerprint": {...}}`` (model weights
hash, calibration text sha256 and window recipe, method options) and one JSON line per finished
step. A torn last line (the process died mid-write) is ignored. ``--resume`` refuses a journal
whose fingerprint differs in any key, naming the input that changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from prunekit.core.errors import PrunekitError

JOURNAL_VERSION = 1
JOURNAL_NAME = "journal.jsonl"


class Journal:
    """Append-only, fsynced step log of one search."""

    def __init__(self, path: Path, fingerprint: dict, records: list[dict]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.records = records

    @classmethod
    def open(cls, out: Path, fingerprint: dict, resume: bool) -> "Journal":
        """Start a new journal in ``out`` or, with ``resume``, continue the one there."""
        out = Path(out)
        path = out / JOURNAL_NAME
        if resume:
            if not path.is_file():
                raise PrunekitError(f"`resume`: there is no journal in '{out}' to resume from.",
                                    "Run without `resume` to start the search.")
            header, records = read_journal(path)
            _check_same_inputs(header.get("fingerprint", {}), fingerprint)
            journal = cls(path, fingerprint, records)
            journal._rewrite()  # drop a torn last line before appending
            return journal
        out.mkdir(parents=True, exist_ok=True)
        journal = cls(path, fingerprint, [])
        journal._rewrite()
        return journal

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"journal": JOURNAL_VERSION, "fingerprint": self.fingerprint}, sort_keys=True) + "\n")
            for rec in self.records:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        """Append one finished step, flushed and fsynced before returning."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def read_journal(path: Path) -> tuple[dict, list[dict]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):
        raise PrunekitError(f"journal '{path}' has no valid header (corrupted).",
                            "Run without `resume` (with `overwrite`) to start again.") from None
    if header.get("journal") != JOURNAL_VERSION:
        raise PrunekitError(f"journal '{path}' has version {header.get('journal')!r}, not {JOURNAL_VERSION}.",
                            "Run without `resume` (with `overwrite`) to start again.")
    records = []
    for n, line in enumerate(lines[1:], 2):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines):
                raise PrunekitError(f"journal '{path}' line {n} is corrupted.",
                                    "Run without `resume` (with `overwrite`) to start again.") from None
    return header, records


def _check_same_inputs(old: dict, new: dict) -> None:
    """Refuse ``old`` (a journal's fingerprint) unless it equals ``new`` in every key, naming what differs."""
    labels = {"model": "the model weights", "calibration": "the calibration data or window recipe", "options": "the method options"}
    for key in list(labels) + sorted(k for k in set(old) | set(new) if k not in labels):
        if old.get(key) != new.get(key):
            detail = ""
            if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                diff = sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k))
                detail = f" ({', '.join(diff)})" if diff else ""
            raise PrunekitError(
                f"`resume`: the journal was written for other inputs: {labels.get(key, f'the {key}')} differ{detail}.",
                "Resume with the same inputs, or start again with `overwrite`.",
            )


def write_state(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """A resumable point's tensors as safetensors at ``path``: written aside, fsynced, renamed into place. Append the
    journal line that names it only after this returns, so the journal never claims more than the state holds."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(path: Path, *, what: str, fix: str) -> tuple[dict[str, str], dict]:
    """``(metadata, tensors)`` of a state written by :func:`write_state`; a file that cannot be read is one
    :class:`PrunekitError` naming ``what`` (e.g. "the gradient state") with the ``fix``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise PrunekitError(f"`resume`: {what} '{path}' cannot be read ({type(e).__name__}).", fix) from None

