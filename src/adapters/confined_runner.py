"""A runner for --root sandboxes: only programs that stay inside the sandbox may run.

Account tools get --prefix ROOT from the command builder; checks such as
visudo -c or sshd -t only read; ssh-keygen writes where it is told (under the
root). Everything else (hwclock, hostname, systemctl, dhclient, ...) would
change the machine the agent runs on, so it is refused and logged instead.
This is the safety net that lets the whole agent run for real in a sandbox.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from guestagent.ports.commands import CommandResult, CommandRunner

log = logging.getLogger(__name__)

_PREFIXED = frozenset({"useradd", "groupadd", "usermod", "userdel"})
_READ_ONLY = {"visudo": "-c", "sshd": "-t"}
_SANDBOX_SAFE = frozenset({"ssh-keygen"})
REFUSED = 126


class ConfinedRunner:
    def __init__(self, inner: CommandRunner, root: str) -> None:
        self._inner = inner
        self._root = root

    def which(self, program: str) -> str | None:
        return self._inner.which(program)

    def cancel(self) -> None:
        cancel = getattr(self._inner, "cancel", None)
        if cancel is not None:
            cancel()

    def _allowed(self, argv: Sequence[str]) -> bool:
        program = os.path.basename(argv[0])
        args = list(argv[1:])
        if program == "nice" and len(args) > 2 and args[0] == "-n":
            return self._allowed(args[2:])  # a lower priority changes nothing outside
        if program in _PREFIXED:
            return len(args) >= 2 and args[0] == "--prefix" and args[1] == self._root
        if program in _READ_ONLY:
            return any(a.startswith(_READ_ONLY[program]) for a in args)
        if program in _SANDBOX_SAFE:
            # ssh-keygen may only write under the sandbox root
            paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-f"]
            return all(os.path.abspath(p).startswith(self._root + os.sep) for p in paths)
        return False

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        if not self._allowed(argv):
            message = f"{argv[0]}: not run in sandbox root {self._root} (it would change this machine)"
            log.info("%s", message)
            return CommandResult(tuple(argv), REFUSED, "", message)
        return self._inner.run(argv, timeout=timeout, env=env, stdin=stdin)
