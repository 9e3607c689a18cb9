"""In a sandbox root nothing that would change the machine itself may run."""

from __future__ import annotations

import pytest

from guestagent.adapters.confined_runner import REFUSED, ConfinedRunner
from tests.fakes import RecordingRunner

ROOT = "/tmp/sandbox"


@pytest.mark.parametrize("argv", [
    ["useradd", "--prefix", ROOT, "-m", "alice"],
    ["usermod", "--prefix", ROOT, "-a", "-G", "g", "alice"],
    ["/usr/sbin/visudo", "-cf", f"{ROOT}/etc/sudoers.d/x"],
    ["sshd", "-t", "-f", f"{ROOT}/etc/ssh/sshd_config"],
    ["ssh-keygen", "-t", "ed25519", "-f", f"{ROOT}/etc/ssh/ssh_host_ed25519_key.temp", "-N", "", "-q"],
    ["nice", "-n", "19", "ssh-keygen", "-t", "rsa", "-f", f"{ROOT}/etc/ssh/ssh_host_rsa_key.temp"],
])
def test_sandbox_safe_commands_run(argv: list[str]) -> None:
    inner = RecordingRunner()
    assert ConfinedRunner(inner, ROOT).run(argv).ok
    assert inner.calls == [tuple(argv)]


@pytest.mark.parametrize("argv", [
    ["useradd", "-m", "alice"],  # no --prefix: would edit the real /etc/passwd
    ["useradd", "--prefix", "/", "alice"],
    ["gpasswd", "-a", "alice", "google-sudoers"],
    ["/sbin/hwclock", "--hctosys", "-u", "--noadjfile"],
    ["hostname", "vm-1"],
    ["systemctl", "reload", "ssh"],
    ["dhclient", "eth1"],
    ["ssh-keygen", "-t", "rsa", "-f", "/etc/ssh/ssh_host_rsa_key"],
    ["nice", "-n", "19", "ssh-keygen", "-t", "rsa", "-f", "/etc/ssh/ssh_host_rsa_key"],
    ["nice", "-n", "19", "hostname", "vm-1"],
    ["sshd"],
])
def test_commands_that_would_change_the_machine_are_refused(argv: list[str]) -> None:
    inner = RecordingRunner()
    result = ConfinedRunner(inner, ROOT).run(argv)
    assert result.returncode == REFUSED
    assert "would change this machine" in result.stderr
    assert inner.calls == []
