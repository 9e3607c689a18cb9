"""Unit tests run no programs and open no network connections (cloud-init's habit).

A unit test that reaches for subprocess or a socket fails at once, so a test
meant to be pure cannot quietly start depending on the machine.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_processes_or_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unit test started a process: {args[:1]}")

    def refuse_connect(self: socket.socket, address: Any) -> Any:
        raise AssertionError(f"unit test opened a connection to {address}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_process)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse_connect(None, a))  # type: ignore[arg-type]
