"""The Hugging Face hub seen from here: whether it can be reached, and offline mode for the span of a call.

``hub_reachable`` is asked before anything would download (recovery's ``auto`` data, zero-shot datasets), so an
unreachable hub becomes one decision instead of minutes of retries. ``hub_offline`` sets the offline switches of
huggingface_hub and datasets for a ``with`` block and restores them afterwards, so the rest of the process is
left as it was.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

HUB_HOST = "huggingface.co"
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub (``huggingface.co``) accepts a TCP connection on port 443; an offline switch set to 1 counts as no."""
    if any(os.environ.get(name) == "1" for name in OFFLINE_SWITCHES):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_offline(active: bool = True) -> Iterator[None]:
    """Within the block, the hub's offline switches are ``1`` (when ``active``); afterwards each is as it was."""
    saved = {name: os.environ.get(name) for name in OFFLINE_SWITCHES}
    if active:
        os.environ.update(dict.fromkeys(OFFLINE_SWITCHES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
