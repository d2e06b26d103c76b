"""The search journals of ``prunekit compare``: ``OUT/searches/<method slug>/journal.jsonl``.

A stepwise method's search journals every finished step with its ``clock`` (seconds and counted MACs since the
search began) under a fingerprint (model weights, calibration, the method's plan options, the ratios searched). A
re-run with the same fingerprint resumes from the last step; another one starts afresh (logged). The journal is
removed once the method's cells are written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from prunekit.core.errors import PrunekitError
from prunekit.core.journal import JOURNAL_NAME, Journal
from prunekit.methods.depth.outcome import SearchClock, clock_of
from prunekit.pipeline.compare_args import MethodSpec

LogFn = Callable[[str], None]


def search_fingerprint(weights_sha256: str, calibration: dict, options: dict, ratios: list[float]) -> dict:
    """What a resumed search must share with the journaled one (as JSON reads it back: tuples become lists)."""
    return json.loads(json.dumps({"model": weights_sha256, "calibration": calibration, "options": options, "ratios": ratios}))


def search_journal(out: Path, spec: MethodSpec, fingerprint: dict, say: LogFn) -> tuple[Journal, int | None]:
    """The journal of ``spec``'s search, ``OUT/searches/<slug>/journal.jsonl``, and the number of steps it
    resumes from: continued when written for the same ``fingerprint`` (model, calibration, the method's
    plan options, the ratios searched), else started afresh (None; the log line says why)."""
    folder = out / "searches" / spec.slug
    path = folder / JOURNAL_NAME
    if path.is_file():
        try:
            journal = Journal.open(folder, fingerprint, resume=True)
        except PrunekitError as e:  # no valid header, or other inputs
            say(f"{spec.name}: the journal {path} cannot be resumed ({e.problem}); searching afresh")
        else:
            say(f"{spec.name}: resuming its search after step {len(journal.records)} (journal {path})")
            return journal, len(journal.records)
    return Journal.open(folder, fingerprint, resume=False), None


def drop_journal(out: Path, spec: MethodSpec) -> None:
    """Remove ``spec``'s search journal once its cells are written, and ``searches/`` once empty."""
    shutil.rmtree(out / "searches" / spec.slug, ignore_errors=True)
    try:
        (out / "searches").rmdir()
    except OSError:  # absent, or another method's journal is there
        pass


def stamper(clock: SearchClock, stamps: list[tuple[float, float]], journal: Journal | None) -> Callable[[dict], None]:
    """The ``on_record`` of a compare search: each finished step's (seconds, MACs) into ``stamps`` and, with
    ``journal``, the record with its ``clock`` into the journal. A method that stamps itself (budget-greedy,
    greedy+swap) gives the record its own ``clock``, which is kept."""

    def on_record(rec: dict) -> None:
        now = clock_of(rec) or clock()
        stamps.append((now["seconds"], now["macs"]))
        if journal is not None:
            journal.append(rec | {"clock": now})

    return on_record
