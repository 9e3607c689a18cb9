"""Programs run with subprocess: argv lists only, never through a shell."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from guestagent.ports.commands import CommandResult

log = logging.getLogger(__name__)


class SubprocessRunner:
    def __init__(self, extra_path: Sequence[str] = ("/usr/sbin", "/sbin")) -> None:
        # Services often start with a PATH lacking sbin, where useradd and friends live.
        parts = os.environ.get("PATH", "/usr/bin:/bin").split(":")
        self._path = ":".join(parts + [p for p in extra_path if p not in parts])

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
        try:
            done = subprocess.run(
                [program, *argv[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                check=False,
            )
        except FileNotFoundError:
            return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return CommandResult(tuple(argv), 124, out, f"{argv[0]}: timed out after {timeout}s")
        log.debug("ran %s: exit %d", argv[0], done.returncode)
        return CommandResult(tuple(argv), done.returncode, done.stdout, done.stderr)
