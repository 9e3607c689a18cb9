"""Programs run with subprocess: argv lists only, never through a shell."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from guestagent.ports.commands import CommandResult

log = logging.getLogger(__name__)

# The exit status reported for a command not started because the agent is stopping.
STOPPING = 143
# How long a command may take to end on SIGTERM before it gets SIGKILL.
END_GRACE = 2.0


def _end(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the command's process group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, END_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class SubprocessRunner:
    def __init__(self, extra_path: Sequence[str] = ("/usr/sbin", "/sbin")) -> None:
        # Services often start with a PATH lacking sbin, where useradd and friends live.
        parts = os.environ.get("PATH", "/usr/bin:/bin").split(":")
        self._path = ":".join(parts + [p for p in extra_path if p not in parts])
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self._cancelled = threading.Event()

    def which(self, program: str) -> str | None:
        return shutil.which(program, path=self._path)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        full_env = {**os.environ, "PATH": self._path, **(env or {})}
        program = self.which(argv[0]) or argv[0]
        with self._lock:
            if self._cancelled.is_set():
                message = f"{argv[0]}: not started, the agent is stopping"
                return CommandResult(tuple(argv), STOPPING, "", message)
            try:
                process = subprocess.Popen(
                    [program, *argv[1:]],
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=full_env,
                    # Its own group: a stop ends the command and whatever it started.
                    start_new_session=True,
                )
            except FileNotFoundError:
                return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
            self._running.add(process)
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _end(process)
            out, _ = process.communicate()
            return CommandResult(tuple(argv), 124, out or "", f"{argv[0]}: timed out after {timeout}s")
        finally:
            with self._lock:
                self._running.discard(process)
        if self._cancelled.is_set() and process.returncode < 0:
            err = f"{err}{argv[0]}: ended, the agent is stopping".lstrip()
        log.debug("ran %s: exit %d", argv[0], process.returncode)
        return CommandResult(tuple(argv), process.returncode, out, err)

    def cancel(self) -> None:
        """The agent is stopping (SIGTERM): end the commands running now and start no more.

        A pass then finishes within moments instead of waiting out a slow useradd, host
        key generation or DHCP; every file is replaced by rename, so none is left torn.
        """
        with self._lock:
            self._cancelled.set()
            running = list(self._running)
        for process in running:
            _end(process)
