"""A real OpenSSH client against the guest's forwarded port: what users notice is a login that works."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import tempfile
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


# The password goes to ssh through SSH_ASKPASS (forced, no terminal needed), read from
# this process's environment by a two-line helper: never on a command line.
_ASKPASS = '#!/bin/sh\nprintf "%s\\n" "$GUESTSIM_SSH_PASSWORD"\n'


def run_with_password(
    port: int, user: str, password: str, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `command` as `user`, logging in with a password only (no key is offered);
    exit status 255 means the login itself failed (wrong password, or sshd refuses
    password logins)."""
    with tempfile.TemporaryDirectory(prefix="guestsim-askpass-") as tmp:
        askpass = Path(tmp) / "askpass"
        askpass.write_text(_ASKPASS)
        askpass.chmod(0o700)
        # BatchMode=yes (and the "-o" before it) would forbid asking for a password.
        at = CLIENT_OPTIONS.index("BatchMode=yes")
        options = list(CLIENT_OPTIONS[: at - 1]) + list(CLIENT_OPTIONS[at + 1 :])
        argv = [
            "ssh",
            *options,
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-p",
            str(port),
            f"{user}@127.0.0.1",
            command,
        ]
        env = {
            **os.environ,
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": os.environ.get("DISPLAY", ":0"),
            "GUESTSIM_SSH_PASSWORD": password,
        }
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            start_new_session=True,  # no controlling terminal: ssh must use the askpass helper
        )


def fingerprints(port: int, types: tuple[str, ...] = KEYSCAN_TYPES) -> dict[str, str]:
    """The SHA256 fingerprints of the host keys the guest's sshd offers, by key type."""
    out: dict[str, str] = {}
    for key_type, blob in keyscan(port, types).items():
        digest = hashlib.sha256(base64.b64decode(blob)).digest()
        out[key_type] = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    return out
