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
    # Two emulated guests on two cores answer the SSH banner slowly; 5 s was seen to fail.
    "ConnectTimeout=20",
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


KEYSCAN_TYPES = ("ed25519", "ecdsa", "rsa")


def keyscan(port: int, types: tuple[str, ...] = KEYSCAN_TYPES, attempts: int = 3) -> dict[str, str]:
    """The host keys the guest's sshd offers, as {key type: base64 blob}.

    One type per scan, retried: ssh-keyscan opens one connection per type at
    once, and under TCG a slow sshd lets one of them time out, which would
    look like a missing key.
    """
    keys: dict[str, str] = {}
    for key_type in types:
        for _ in range(attempts):
            result = subprocess.run(
                ["ssh-keyscan", "-p", str(port), "-T", "30", "-t", key_type, "127.0.0.1"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            found = [
                line.split()
                for line in result.stdout.splitlines()
                if not line.startswith("#") and len(line.split()) >= 3
            ]
            if found:
                keys.update({parts[1]: parts[2] for parts in found})
                break
    return keys
