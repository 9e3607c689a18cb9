"""`guestagent deprovision` for real in a sandbox root: the agent provisions from the
simulator (GCE, then EC2's default user), deprovisioning removes what it made (real
userdel --prefix), and the next `run --once` sets the guest up as a new instance, with
new host keys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import AGENT, group_members, passwd_entry, read, scenario
from tests.keys import ED25519, ED25519_BOB

pytestmark = pytest.mark.root
OWN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqhMMDjKiHa0eV1aJ8KRUEEYL82M8WpxghbfuSI94sC mine\n"
GCE = {"id": "4520031799277581759", "name": "vm1", "hostname": "vm1.c.proj.internal"}
# A SHA-512 crypt field, as the image's root might have.
ROOT_HASH = "$6$rounds=5000$saltsalt$" + "A" * 86


def deprovision(sandbox: Path, *flags: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, "deprovision", "--root", str(sandbox), *flags],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )


def own_user(sandbox: Path, name: str) -> None:
    """A local user the agent does not manage, made with the real useradd."""
    subprocess.run(["useradd", "--prefix", str(sandbox), "-m", "-s", "/bin/bash", name], check=True)


def host_keys(sandbox: Path) -> dict[str, str]:
    ssh = sandbox / "etc/ssh"
    return {p.name: p.read_text() for p in sorted(ssh.glob("ssh_host_*.pub"))}


def set_root_field(sandbox: Path, field: str) -> None:
    shadow = sandbox / "etc/shadow"
    lines = shadow.read_text().splitlines(keepends=True)
    out = [f"root:{field}:{line.split(':', 2)[2]}" if line.startswith("root:") else line for line in lines]
    shadow.write_text("".join(out))


def root_field(sandbox: Path) -> str:
    for line in (sandbox / "etc/shadow").read_text().splitlines():
        if line.startswith("root:"):
            return line.split(":")[1]
    raise AssertionError("no root in the sandbox's shadow")


def snapshot(root: Path) -> dict[str, tuple[bytes | str, int]]:
    out: dict[str, tuple[bytes | str, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            body: bytes | str = os.readlink(path) if path.is_symlink() else (
                path.read_bytes() if path.is_file() else "dir"
            )
            out[str(path.relative_to(root))] = (body, st.st_mode)
    return out


def test_gce_deprovision_user_then_the_next_run_is_a_new_instance(sandbox: Path, run_agent) -> None:
    own_user(sandbox, "olivia")
    with Simulator(scenario({"alice": [ED25519], "bob": [ED25519_BOB]}, instance=GCE), platforms=("gce",)) as sim:
        first = run_agent("run", "--once", url=sim.url("gce"))
        assert first.returncode == 0, first.stdout + first.stderr
        before = host_keys(sandbox)
        assert before and read(sandbox / "etc/google_instance_id") == GCE["id"]
        set_root_field(sandbox, ROOT_HASH)

        dry = deprovision(sandbox, "--user", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete user alice and its home" in dry.stdout
        assert "would remove root's password" in dry.stdout
        assert "olivia" not in dry.stdout
        assert host_keys(sandbox) == before  # a dry run changes nothing

        done = deprovision(sandbox, "--user", "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        for gone in ("alice", "bob"):
            assert passwd_entry(sandbox, gone) is None
            assert not (sandbox / "home" / gone).exists()
        assert passwd_entry(sandbox, "olivia") is not None and (sandbox / "home/olivia").is_dir()
        assert root_field(sandbox) == "*"
        assert not list((sandbox / "etc/ssh").glob("ssh_host_*"))
        for record in ("etc/google_instance_id", "var/lib/google/google_users", "etc/boto.cfg",
                       "var/lib/guestagent/clock_drift_token"):
            assert not (sandbox / record).exists(), record
        assert read(sandbox / "etc/hostname") == "localhost\n"
        assert "# Added by guestagent" not in (read(sandbox / "etc/hosts") or "")
        assert "Traceback" not in done.stderr

        again = run_agent("run", "--once", url=sim.url("gce"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "did generate SSH host key" in again.stdout
    after = host_keys(sandbox)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)  # new keys, not the image's
    assert read(sandbox / "etc/google_instance_id") == GCE["id"]
    assert read(sandbox / "var/lib/google/google_users") == "alice\nbob\n"
    assert read(sandbox / "home/alice/.ssh/authorized_keys") == f"# Added by Google\n{ED25519}\n"
    assert read(sandbox / "etc/hostname") == "vm1\n"


def test_gce_deprovision_without_user_keeps_users_and_their_own_lines(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]}, instance=GCE), platforms=("gce",)) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        keys_file = sandbox / "home/alice/.ssh/authorized_keys"
        keys_file.write_text(OWN + keys_file.read_text())
        mode_before = keys_file.stat().st_mode
        set_root_field(sandbox, ROOT_HASH)

        done = deprovision(sandbox, "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        assert passwd_entry(sandbox, "alice") is not None
        assert read(keys_file) == OWN
        assert keys_file.stat().st_mode == mode_before
        assert "alice" not in (group_members(sandbox, "google-sudoers") or set())
        assert root_field(sandbox) == ROOT_HASH  # only --user touches root's password
        assert not (sandbox / "var/lib/google/google_users").exists()
        assert not list((sandbox / "etc/ssh").glob("ssh_host_*"))

        again = run_agent("run", "--once", url=sim.url("gce"))
    assert again.returncode == 0, again.stderr
    assert read(keys_file) == f"{OWN}# Added by Google\n{ED25519}\n"
    assert "alice" in (group_members(sandbox, "google-sudoers") or set())


def test_ec2_default_user_deprovisioned_and_provisioned_afresh(sandbox: Path, run_agent) -> None:
    config = sandbox / "etc/default/instance_configs.cfg"
    config.write_text("[Accounts]\ndefault_user = debian\ndefault_user_groups = adm,sudo\n")
    own_user(sandbox, "olivia")
    with Simulator(scenario({"alice": [ED25519]}), platforms=("ec2",)) as sim:
        first = run_agent("run", "--once", url=sim.url("ec2"), platform="ec2")
        assert first.returncode == 0, first.stdout + first.stderr
        assert read(sandbox / "var/lib/guestagent/ec2_users") == "debian\n"
        instance_id = read(sandbox / "var/lib/guestagent/instance-id")
        before = host_keys(sandbox)
        assert instance_id and before

        done = deprovision(sandbox, "--user", "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        assert passwd_entry(sandbox, "debian") is None and not (sandbox / "home/debian").exists()
        assert passwd_entry(sandbox, "olivia") is not None
        assert not (sandbox / "var/lib/guestagent/ec2_users").exists()
        assert not (sandbox / "var/lib/guestagent/instance-id").exists()
        assert not list((sandbox / "etc/ssh").glob("ssh_host_*"))
        assert config.exists()  # the configuration is the image's, never the agent's to remove

        again = run_agent("run", "--once", url=sim.url("ec2"), platform="ec2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert read(sandbox / "home/debian/.ssh/authorized_keys") == f"# Added by guestagent\n{ED25519}\n"
    assert read(sandbox / "var/lib/guestagent/instance-id") == instance_id
    after = host_keys(sandbox)
    assert set(after) == set(before) and all(after[k] != before[k] for k in before)


def test_confirmation_is_asked_and_no_changes_nothing(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]}, instance=GCE), platforms=("gce",)) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
    before = snapshot(sandbox)
    for answer in ("n\n", "", "yes please\n"):
        refused = deprovision(sandbox, "--user", stdin=answer)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "aborted; nothing changed" in refused.stdout
        assert snapshot(sandbox) == before
    accepted = deprovision(sandbox, "--user", stdin="y\n")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert passwd_entry(sandbox, "alice") is None
    # Done once, nothing is left to do, and nothing is asked.
    second = deprovision(sandbox, "--user")
    assert second.returncode == 0 and "nothing to remove" in second.stdout


@pytest.mark.parametrize(
    "original",
    [
        b"# the image's own\nPort 22\nMatch User x\n\tX11Forwarding no",  # no final newline
        b"# the image's own\r\nPort 22\r\n",  # CRLF kept as it was
    ],
)
def test_sshd_config_is_restored_byte_for_byte(sandbox: Path, original: bytes) -> None:
    sshd = sandbox / "etc/ssh/sshd_config"
    sshd.write_bytes(b"Port 22\nPasswordAuthentication yes\n")
    sshd.chmod(0o600)
    saved = sandbox / "var/lib/guestagent/sshd_config.orig"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(original)
    done = deprovision(sandbox, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sshd.read_bytes() == original
    assert sshd.stat().st_mode & 0o777 == 0o600
    assert not saved.exists()


def test_state_symlinks_are_removed_not_followed(sandbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("not the agent's\n")
    state = sandbox / "var/lib/guestagent"
    state.mkdir(parents=True, exist_ok=True)
    (state / "firstboot").symlink_to(outside)
    done = deprovision(sandbox, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (state / "firstboot").is_symlink()
    assert outside.read_text() == "not the agent's\n"
