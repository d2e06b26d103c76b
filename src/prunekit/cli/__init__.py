"""The ``prunekit`` command line: a table of thin commands over :mod:`prunekit.pipeline`."""

from prunekit.cli.main import main

__all__ = ["main"]
