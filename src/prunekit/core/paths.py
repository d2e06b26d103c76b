"""Where prunekit keeps prepared assets (embedded model, parsed corpora): ``$PRUNEKIT_CACHE``
or ``~/.cache/prunekit``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("PRUNEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prunekit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(name: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
