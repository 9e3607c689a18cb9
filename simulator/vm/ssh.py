"""A real OpenSSH client against the guest's forwarded port: what users notice is a login that works."""

from __future__ import annotations

import subprocess
from pathlib import Path

# The guest's host keys change with every fresh VM and the port is reused, so
# the harness's own connections never record them. The host-key test compares
# keys explicitly (keyscan vs. guest attributes) instead.
CLIENT_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    "ConnectTimeout=5",
    "-o",
    "LogLevel=ERROR",
)


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at `path`; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def ssh_argv(port: int, user: str, key: Path, command: str) -> list[str]:
    return [
        "ssh",
        *CLIENT_OPTIONS,
        "-i",
        str(key),
        "-p",
        str(port),
        f"{user}@127.0.0.1",
        command,
    ]


def run(
    port: int, user: str, key: Path, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `command` in the guest as `user`; exit status 255 means the login itself failed."""
    return subprocess.run(
        ssh_argv(port, user, key, command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def can_login(port: int, user: str, key: Path) -> bool:
    return run(port, user, key, "true", timeout=30).returncode == 0


def keyscan(port: int) -> dict[str, str]:
    """The host keys the guest's sshd offers, as {key type: base64 blob}."""
    result = subprocess.run(
        ["ssh-keyscan", "-p", str(port), "-T", "10", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 3:
            keys[parts[1]] = parts[2]
    return keys
