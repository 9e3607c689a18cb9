"""The guest's serial console, driven with pexpect through QEMU's console socket.

QEMU writes every console byte to serial.log whether or not a client is
attached, but a client that is attached and does not read stalls the guest's
serial port (and with it the boot, since systemd writes to the console). So
the harness attaches only while it talks to the console: `session()` connects,
runs commands, and lets go. Waiting for the boot reads serial.log instead.

The console is the way in that depends neither on the network nor on sshd
(which starts only once the agent is ready): the harness uses it to
diagnose a guest that SSH cannot reach.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect.fdpexpect

# The autologin shell's prompt (the agent may rename the host, so any hostname).
ROOT_PROMPT = re.compile(r"root@[\w.-]+:~# ")
# Terminal control sequences (bash's bracketed paste, colours) are not output.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleSession:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._child = pexpect.fdpexpect.fdspawn(
            sock.fileno(), encoding="utf-8", codec_errors="replace", timeout=30
        )

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> str:
        """Wait for `pattern`; return what came before it."""
        self._child.expect(pattern, timeout=timeout)
        return str(self._child.before)

    def prompt(self, timeout: float = 30) -> None:
        self._child.sendline("")
        self._child.expect(ROOT_PROMPT, timeout=timeout)

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command as root; return (exit status, output).

        Output is best effort: service logs also go to this console and can
        interleave. Use SSH (machine.Vm.ssh) when the output must be exact.
        """
        tag = uuid.uuid4().hex[:8]
        # The marker is split in the typed text, so only the printed one matches.
        self._child.sendline(f'{command}; echo "@@{tag}""-rc=$?@@"')
        self._child.expect(re.compile(rf"@@{tag}-rc=(\d+)@@"), timeout=timeout)
        output = str(self._child.before)
        match = self._child.match
        if not isinstance(match, re.Match):
            raise RuntimeError("console: no exit status")
        _, _, body = output.partition("\n")  # drop the echoed command line
        text = ANSI.sub("", body).replace("\r\n", "\n").replace("\r", "")
        return int(match.group(1)), text.strip()


@contextlib.contextmanager
def session(socket_path: Path, timeout: float = 30) -> Iterator[ConsoleSession]:
    """Attach to the console for the duration of the block (at a shell prompt)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path))
        console = ConsoleSession(sock)
        console.prompt(timeout)
        yield console
    finally:
        sock.close()


def wait_for_prompt(serial_log: Path, timeout: float, offset: int = 0) -> float:
    """Wait until the autologin prompt appears in serial.log after byte `offset`
    (the log spans reboots); return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if serial_log.exists():
            with serial_log.open("rb") as f:
                f.seek(offset)
                if ROOT_PROMPT.search(f.read().decode(errors="replace")):
                    return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"no shell prompt on the serial console in {timeout} s")
