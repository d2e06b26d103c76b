"""Atomic outputs and fingerprints.

Everything prunekit writes (plans, model directories, reports) goes to a temporary sibling and
is renamed into place, so an interrupted write never leaves a half-written file or directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from prunekit.core.errors import PrunekitError


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted keys, 2-space indent, trailing newline) atomically: temp file + fsync + rename."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` atomically: temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or an existing non-empty directory without ``--overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"output path '{out}' is a file.", "Give `out` a directory path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PrunekitError(
            f"output directory '{out}' already exists and is not empty.",
            "Pass `overwrite` to replace it, or choose another `out`.",
        )
    check_creatable(out)


def check_creatable(out: Path) -> None:
    """Refuse a path under which no directory can be created (a file, a read-only or virtual filesystem)."""
    probe = Path(out).resolve().parent
    while not probe.exists():
        probe = probe.parent
    try:  # the only sure test: create (and remove) a directory where the output's first new directory goes
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".prunekit-probe-"))
    except OSError as e:
        raise PrunekitError(
            f"the output directory '{out}' cannot be created: '{probe}' {_why(e)}.",
            "Choose an `out` in a writable directory.",
        ) from None


def _why(e: OSError) -> str:
    if isinstance(e, NotADirectoryError):
        return "is not a directory"
    return f"does not accept new directories ({e.strerror or type(e).__name__})"


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out``, on failure it is removed.

    The previous content of ``out`` stays intact until the new one is complete.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the block: processes preparing the same
    cached asset (two test workers, two users' runs) wait for each other instead of writing it twice."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_disk_space(path: Path, needed_bytes: int) -> None:
    """Refuse to start writing weights when the filesystem has less than ``needed_bytes`` free."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise PrunekitError(
            f"not enough disk space under '{probe}': {needed_bytes / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free.",
            "Free some space or choose another `out`.",
        )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_hash(model: torch.nn.Module, dtype: torch.dtype | None = None) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer kept in the state dict
    (floating tensors converted to ``dtype`` first when given, one at a time)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
