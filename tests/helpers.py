"""Helpers for tests that run the CLI on a tiny checkpoint.

:func:`run_cli` runs ``prunekit ARGS`` in this process (the console entry point with ``sys.argv`` set, its
output captured), which is what a test of the command's behaviour needs; :func:`run_cli_fresh` starts a
fresh interpreter, kept for the checks where a new process is the point (the console script itself,
kill -9, torchrun, a reload without prunekit imported).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.cli.console import console, out_console
from prunekit.cli.main import main as cli_main
from prunekit.models.tiny import TINY_TEXT, save_tiny_checkpoint

CALIB_TEXT = "\n\n".join([TINY_TEXT, TINY_TEXT.upper(), TINY_TEXT[::-1]] * 6)


def make_tiny_workspace(tmp: Path, model_type: str = "llama", layers: int = 4) -> tuple[Path, Path]:
    """A tiny checkpoint and a calibration text file under ``tmp``."""
    model_dir = save_tiny_checkpoint(tmp / f"tiny-{model_type}", model_type, num_hidden_layers=layers)
    calib = tmp / "calib.txt"
    calib.write_text(CALIB_TEXT, encoding="utf-8")
    return model_dir, calib


@dataclass
class CliResult:
    """What a CLI run gave: the exit code and the two streams (as ``subprocess.CompletedProcess`` names them)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class _Environ:
    """``os.environ`` updated with ``env`` for the duration, restored exactly after (keys added are removed)."""

    def __init__(self, env: dict | None) -> None:
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.env.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run ``prunekit ARGS`` in this process: ``sys.argv`` set, stdout and stderr captured, the exit code
    taken from ``SystemExit`` (0 when the command returns). ``env`` is added to ``os.environ`` for the run;
    torch's thread count and the environment are restored after. The consoles print as into a pipe: no
    terminal, ``COLUMNS`` wide (80 unless ``env`` or the environment says otherwise). ``timeout`` is accepted
    for the fresh variant's signature and not enforced here (pytest's own limits apply)."""
    del timeout
    argv, threads = sys.argv, torch.get_num_threads()
    widths = [(c, c._width) for c in (console, out_console)]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        columns = (env or {}).get("COLUMNS") or os.environ.get("COLUMNS") or "80"
        for c, _ in widths:
            c.width = int(columns)
        sys.argv = ["prunekit", *map(str, args)]
        with _Environ(env), redirect_stdout(out), redirect_stderr(err):
            try:
                cli_main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        for c, width in widths:
            c._width = width
    return CliResult(list(args), code, out.getvalue(), err.getvalue())


def run_cli_fresh(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``prunekit ARGS`` in a fresh interpreter (``python -m prunekit.cli``), as a user's shell would."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )
