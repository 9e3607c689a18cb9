"""`guestagent collect-logs` on a sandbox the agent provisioned from the simulator: the
tarball holds the config and the state, and no key material, secret or symlink target;
and `guestagent --version`."""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import AGENT, scenario
from tests.keys import ED25519, ED25519_BOB

pytestmark = pytest.mark.root
GCE = {"id": "4520031799277581759", "name": "vm1", "hostname": "vm1.c.proj.internal"}
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"


def collect(sandbox: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "collect-logs", "--root", str(sandbox), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )


def members(out: Path) -> dict[str, str]:
    with tarfile.open(out, "r:gz") as tar:
        found = {}
        for info in tar.getmembers():
            assert info.isfile(), f"{info.name} is not a regular file"
            assert info.name.startswith("guestagent-logs/"), info.name
            assert ".." not in info.name.split("/") and not info.name.startswith("/")
            handle = tar.extractfile(info)
            assert handle is not None
            found[info.name.removeprefix("guestagent-logs/")] = handle.read().decode("utf-8", "replace")
    return found


def test_the_tarball_holds_config_and_state_and_no_secrets(sandbox: Path, run_agent, tmp_path: Path) -> None:
    (sandbox / "etc/default/instance_configs.cfg").write_text(
        "[Accounts]\ngroups = adm\n\n[InstanceSetup]\nhost_key_types = ed25519,rsa\n"
    )
    (sandbox / "etc/waagent.conf").write_text(
        "Provisioning.DeleteRootPassword=n\nHttpProxy.Password=pr0xy-s3cret\n"
    )
    with Simulator(scenario({"alice": [ED25519], "bob": [ED25519_BOB]}, instance=GCE), platforms=("gce",)) as sim:
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stdout + result.stderr
    state = sandbox / "var/lib/guestagent"
    state.mkdir(parents=True, exist_ok=True)
    (state / "tls.key").write_text(PEM)  # named like a key: never opened
    (state / "notes.txt").write_text("copied by hand:\n" + PEM)  # holds one: left out whole
    (state / "metadata.json").write_text(f'{{"ssh-keys": "alice:{ED25519}", "token": "AQAEAtok"}}\n')
    (state / "shadow-link").symlink_to(sandbox / "etc/shadow")
    (state / "big").write_bytes(b"x" * (3 * 1024 * 1024))
    (state / "binary").write_bytes(b"\x00\x01\x02")
    host_private = {p.name: p.read_text() for p in (sandbox / "etc/ssh").glob("ssh_host_*_key")}
    host_public = [p.read_text().split()[1] for p in (sandbox / "etc/ssh").glob("ssh_host_*_key.pub")]
    assert host_private and host_public

    out = tmp_path / "logs.tar.gz"
    done = collect(sandbox, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(out) in done.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    found = members(out)

    # The config layers and the state are there.
    assert "groups = adm" in found["files/etc/default/instance_configs.cfg"]
    assert "Provisioning.DeleteRootPassword=n" in found["files/etc/waagent.conf"]
    assert found["files/var/lib/google/google_users"] == "alice\nbob\n"
    assert found["files/etc/google_instance_id"] == GCE["id"]
    assert "files/var/lib/guestagent/clock_drift_token" in found
    assert "host_key_types = ed25519,rsa" in found["effective-config.txt"]
    assert "guestagent " in found["version.txt"]
    assert found["files/var/lib/guestagent/metadata.json"].startswith('{"ssh-keys": "alice:ssh-ed25519 <redacted key>')

    # What was left out, and why.
    manifest = found["manifest.txt"]
    assert "journal: not read under a sandbox root" in manifest
    assert "files/var/lib/guestagent/tls.key: left out (named like a private key" in manifest
    assert "files/var/lib/guestagent/notes.txt: left out (holds a private key)" in manifest
    assert "files/var/lib/guestagent/shadow-link: left out (a symlink, not followed)" in manifest
    assert "files/var/lib/guestagent/binary: left out (binary)" in manifest
    assert "files/var/lib/guestagent/big: " in manifest and "cut at the size bound" in manifest
    assert len(found["files/var/lib/guestagent/big"]) == 2 * 1024 * 1024
    for name in ("tls.key", "notes.txt", "shadow-link", "binary"):
        assert f"files/var/lib/guestagent/{name}" not in found
    assert not any(name.startswith("files/etc/ssh/ssh_host_") for name in found)

    # No key material, no secret, nothing of the shadow file anywhere.
    everything = "\n".join(found.values())
    for line in (ED25519, ED25519_BOB):
        assert line.split()[1] not in everything
    for blob in host_public:
        assert blob not in everything
    for text in host_private.values():
        body = [line for line in text.splitlines() if line and "-----" not in line]
        assert not any(part in everything for part in body)
    assert "PRIVATE KEY-----" not in everything and "b3BlbnNzaC1rZXkt" not in everything
    assert "pr0xy-s3cret" not in everything and "AQAEAtok" not in everything
    root_line = next(line for line in (sandbox / "etc/shadow").read_text().splitlines() if line.startswith("root:"))
    assert root_line not in everything
    assert not re.search(r"AAAA[A-Za-z0-9+/]{40,}", everything)


def test_a_symlinked_state_folder_is_not_followed(sandbox: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("outside the root\n")
    (sandbox / "run/guestagent").symlink_to(elsewhere)
    out = tmp_path / "logs.tar.gz"
    done = collect(sandbox, out)
    assert done.returncode == 0, done.stderr
    found = members(out)
    assert "outside the root" not in "\n".join(found.values())
    assert "files/run/guestagent: left out (a symlink" in found["manifest.txt"]


def test_an_unwritable_destination_fails_cleanly(sandbox: Path, tmp_path: Path) -> None:
    done = collect(sandbox, tmp_path / "missing-folder" / "logs.tar.gz")
    assert done.returncode == 1
    assert "cannot write" in done.stderr and "Traceback" not in done.stderr


def test_version() -> None:
    from importlib import metadata

    done = subprocess.run([*AGENT, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"guestagent {metadata.version('guestagent')}\n"
