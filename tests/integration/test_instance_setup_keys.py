"""Instance setup for real: ssh-keygen under a sandbox root, host keys PUT into the
simulator's guest attributes, and a restart of the same instance that changes nothing."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.platforms.gce import GceMetadata
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.sysfs import SysfsWriter
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config, InstanceSetup
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.instance_setup import InstanceSetupSubsystem, report_sshable
from tests.fakes import RecordingRunner

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen missing")

SCENARIO = {
    "instance": {"id": "4520031799277581759", "name": "setup-vm"},
    "project": {"id": "demo-project", "numeric_id": 123456789012},
}


def _only_ssh_keygen(argv: tuple[str, ...]) -> CommandResult | None:
    assert argv[0] == "ssh-keygen", argv
    return None  # so the real runner runs it


def keygen_only() -> RecordingRunner:
    """The real runner, for ssh-keygen only; records what ran."""
    return RecordingRunner(respond=_only_ssh_keygen, delegate=SubprocessRunner())


def _ctx(root: Path, runner: RecordingRunner, source: GceMetadata, **opts: object) -> Context:
    fs = LocalFileSystem(str(root))
    return Context(
        config=Config(InstanceSetup=InstanceSetup(**opts)),  # type: ignore[arg-type]
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=SystemClock(),
        guest_attributes=source,
        root=fs.root,
        sysfs=SysfsWriter(fs.root),
    )


def _ssh_state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    ssh = root / "etc/ssh"
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, stat.S_IMODE(p.stat().st_mode))
        for p in sorted(ssh.iterdir())
    }


def test_first_boot_keys_published_then_restart_regenerates_nothing(
    tmp_path: Path, make_simulator: object
) -> None:
    sim = make_simulator(SCENARIO, platforms=("gce",))  # type: ignore[operator]
    source = GceMetadata(sim.url("gce"), backoff_max=0.1)
    metadata: InstanceMetadata = source.get().metadata
    assert metadata.instance_id == "4520031799277581759"
    runner = keygen_only()

    first = InstanceSetupSubsystem().reconcile(
        _ctx(tmp_path, runner, source, host_key_types=("ed25519", "ecdsa")), metadata
    )
    assert first.ok, first.failures
    assert sorted(c[2] for c in runner.calls) == ["ecdsa", "ed25519"]

    state = _ssh_state(tmp_path)
    assert state["ssh_host_ed25519_key"][2] == 0o600
    assert state["ssh_host_ed25519_key.pub"][2] == 0o644
    assert not [name for name in state if ".temp" in name]

    published = sim.guest_attributes()
    for name in ("ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key.pub"):
        key_type, blob = state[name][0].decode().split()[:2]
        assert published[f"hostkeys/{key_type}"] == blob
    assert "hostkeys/ssh-ed25519" in published

    assert (tmp_path / "etc/boto.cfg").read_text().splitlines()[1] == (
        "default_project_id = 123456789012"
    )
    assert (tmp_path / "etc/google_instance_id").read_text() == "4520031799277581759"

    # the agent restarts on the same instance: nothing is regenerated or rewritten
    runner.calls.clear()
    boto_mtime = (tmp_path / "etc/boto.cfg").stat().st_mtime_ns
    again = InstanceSetupSubsystem().reconcile(
        _ctx(tmp_path, runner, source, host_key_types=("ed25519", "ecdsa")), metadata
    )
    assert again.ok, again.failures
    assert runner.calls == []
    assert _ssh_state(tmp_path) == state
    assert (tmp_path / "etc/boto.cfg").stat().st_mtime_ns == boto_mtime

    # a clone (new instance id) gets new keys
    sim.set("instance/id", "999")
    clone = source.get().metadata
    InstanceSetupSubsystem().reconcile(_ctx(tmp_path, runner, source, host_key_types=("ed25519",)), clone)
    assert _ssh_state(tmp_path)["ssh_host_ed25519_key"][0] != state["ssh_host_ed25519_key"][0]
    assert (tmp_path / "etc/google_instance_id").read_text() == "999"
    source.close()


def test_sshable_lands_in_guest_attributes(tmp_path: Path, make_simulator: object) -> None:
    sim = make_simulator(SCENARIO, platforms=("gce",))  # type: ignore[operator]
    source = GceMetadata(sim.url("gce"), backoff_max=0.1)
    assert report_sshable(_ctx(tmp_path, keygen_only(), source))
    value = sim.guest_attributes()["guest-agent/sshable"]
    assert value.isdigit() and abs(int(value) - int(SystemClock().now().timestamp())) < 60
    source.close()


def test_set_host_keys_false_keeps_image_keys(tmp_path: Path, make_simulator: object) -> None:
    sim = make_simulator(SCENARIO, platforms=("gce",))  # type: ignore[operator]
    source = GceMetadata(sim.url("gce"), backoff_max=0.1)
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_rsa_key").write_text("image key\n")
    runner = keygen_only()
    outcome = InstanceSetupSubsystem().reconcile(
        _ctx(tmp_path, runner, source, set_host_keys=False), source.get().metadata
    )
    assert outcome.ok
    assert runner.calls == []
    assert (tmp_path / "etc/ssh/ssh_host_rsa_key").read_text() == "image key\n"
    assert not any(k.startswith("hostkeys/") for k in sim.guest_attributes())
    assert os.path.exists(tmp_path / "etc/google_instance_id")
    source.close()
