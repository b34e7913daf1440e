"""Shared test set-up: no test may reach the network, and demo models build into a temp cache."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Hub libraries must never try the network in tests; gradio must not phone home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["DO_NOT_TRACK"] = "1"

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address, *args, **kwargs):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
        return _real_connect(self, address, *args, **kwargs)
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address, *args, **kwargs)
    raise OSError(f"tests may not use the network (tried {address!r})")


socket.socket.connect = _loopback_only


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder for demo:FAMILY models, shared by the whole test session; autouse, so no
    test ever builds into (or reads from) the user's own cache."""
    cache = tmp_path_factory.mktemp("ti-cache")
    os.environ["TI_TRAINER_CACHE"] = str(cache)
    # The GUIs under test save presets here, never into the user's ~/.config.
    os.environ["TI_TRAINER_PRESETS"] = str(tmp_path_factory.mktemp("ti-presets"))
    return cache
