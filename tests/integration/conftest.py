"""Integration fixtures: a sandbox root, the simulator on loopback, the agent as a real process.

The agent runs with --root SANDBOX (shadow-utils get --prefix SANDBOX) and
--metadata-url pointing at the simulator on 127.0.0.1, so these tests create
real users with real tools without touching this machine's accounts, and no
request can reach a real metadata server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.entrypoints.sandbox import make_sandbox

AGENT = [sys.executable, "-m", "guestagent"]


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates users with shadow-utils inside a sandbox root")
    if shutil.which("useradd") is None and not os.path.exists("/usr/sbin/useradd"):
        pytest.skip("shadow-utils (useradd) not installed")


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    _needs_root()
    return Path(make_sandbox(str(tmp_path / "root")))


def scenario(users: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    """A scenario whose users each have the given key lines."""
    return {
        "users": [{"name": name, "keys": [{"key": k} for k in keys]} for name, keys in users.items()],
        **extra,
    }


def ssh_keys_value(users: dict[str, list[str]]) -> str:
    return "\n".join(f"{u}:{k}" for u, keys in users.items() for k in keys)


@pytest.fixture
def run_agent(sandbox: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, url: str, timeout: float = 120, platform: str = "gce"
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*AGENT, args[0], "--root", str(sandbox), "--metadata-url", url, "--platform", platform, *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    return run


class AgentDaemon:
    def __init__(self, sandbox: Path, url: str, *extra: str, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*AGENT, "daemon", "--root", str(sandbox), "--metadata-url", url, "--platform", "gce",
             "--backoff-max", "1", *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 5.0) -> float:
        """SIGTERM and wait; returns how long the exit took."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - started


@pytest.fixture
def start_daemon(sandbox: Path, tmp_path: Path) -> Iterator[Callable[..., AgentDaemon]]:
    started: list[AgentDaemon] = []

    def start(url: str, *extra: str) -> AgentDaemon:
        daemon = AgentDaemon(sandbox, url, *extra, log=tmp_path / f"daemon{len(started)}.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> float:
    """Seconds until predicate() held; fails the test on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def passwd_entry(sandbox: Path, user: str) -> list[str] | None:
    for line in (sandbox / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    return None


def group_members(sandbox: Path, group: str) -> set[str] | None:
    for line in (sandbox / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return {m for m in fields[3].split(",") if m}
    return None
