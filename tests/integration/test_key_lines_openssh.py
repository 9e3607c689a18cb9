"""The agent installs exactly the key lines OpenSSH accepts: each mutated line is put to
`ssh-keygen -l -f`, and the agent's validator must agree with it, both ways.

A line OpenSSH refuses would give a user an account and sudo with no usable key
(extra base64 padding used to pass Python's decoder); a line OpenSSH accepts but
the agent refused would lock a user out.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.domain.validation import Invalid, parse_key_line

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
OPTIONS = ["", 'from="10.0.0.0/8" ', "no-port-forwarding,no-pty ", 'command="echo hi there" ']


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """(type, base64) of one fresh key of each kind, made by ssh-keygen itself."""
    folder = tmp_path_factory.mktemp("keys")
    keys = []
    for name, args in [("ed", ["-t", "ed25519"]), ("p256", ["-t", "ecdsa", "-b", "256"]),
                       ("p384", ["-t", "ecdsa", "-b", "384"]), ("p521", ["-t", "ecdsa", "-b", "521"]),
                       ("rsa", ["-t", "rsa", "-b", "2048"])]:
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(folder / name), *args], check=True)
        key_type, blob, *_ = (folder / f"{name}.pub").read_text().split()
        keys.append((key_type, blob))
    # A 768-bit RSA key OpenSSH refuses for its size (ssh-keygen cannot make one any more).
    small = b"".join(struct.pack(">I", len(f)) + f for f in (b"ssh-rsa", b"\x01\x00\x01", b"\x00\xc5" + b"\x11" * 95))
    keys.append(("ssh-rsa", base64.b64encode(small).decode()))
    return keys


def openssh_accepts(line: str, folder: Path) -> bool:
    path = folder / "authorized_keys"
    path.write_text(line + "\n")
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=False)
    return done.returncode == 0


def agent_accepts(line: str) -> bool:
    try:
        parse_key_line(line)
    except Invalid:
        return False
    return True


mutation = st.one_of(
    st.just(("none", 0, "")),
    st.tuples(st.just("append"), st.just(0), st.sampled_from(["=", "==", "===", "A", "AA", "A=", "=A"])),
    st.tuples(st.just("drop"), st.integers(0, 10_000), st.just("")),
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.sampled_from(list(B64))),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.sampled_from(["=", "A", "/"])),
    st.tuples(st.just("cut"), st.integers(1, 10_000), st.just("")),
)


def mutate(blob: str, how: tuple[str, int, str]) -> str:
    kind, at, text = how
    at = at % max(len(blob), 1)
    if kind == "append":
        return blob + text
    if kind == "drop":
        return blob[:at] + blob[at + 1 :]
    if kind == "replace":
        return blob[:at] + text + blob[at + 1 :]
    if kind == "insert":
        return blob[:at] + text + blob[at:]
    if kind == "cut":
        return blob[: max(at, 1)]
    return blob


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.integers(0, 5),
    how=mutation,
    options=st.sampled_from(OPTIONS),
    separator=st.sampled_from([" ", "\t", "  "]),
    comment=st.sampled_from(["", "alice@laptop", "a comment with spaces"]),
)
def test_agent_and_openssh_agree_on_every_line(
    real_keys: list[tuple[str, str]], tmp_path: Path, key: int, how: tuple[str, int, str], options: str,
    separator: str, comment: str,
) -> None:
    key_type, blob = real_keys[key]
    line = f"{options}{key_type} {mutate(blob, how)}"
    if comment:
        line += separator + comment
    assert agent_accepts(line) == openssh_accepts(line, tmp_path), line


@pytest.mark.parametrize("suffix", ["=", "==", "==="])
def test_extra_padding_is_refused_like_openssh_does(
    real_keys: list[tuple[str, str]], tmp_path: Path, suffix: str
) -> None:
    key_type, blob = real_keys[0]
    line = f"{key_type} {blob}{suffix} alice"
    assert not openssh_accepts(line, tmp_path)
    assert not agent_accepts(line)
