"""`guestagent run --once --platform azure --root SANDBOX` for real: the provisioning DVD (UDF, as
Azure attaches it) under the sandbox, IMDS and the WireServer served by the simulator on loopback,
real shadow-utils with --prefix, real sshd -t. What the fabric received is read back from the
simulator: Ready; NotReady with the reason when the user cannot be created; faults.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.media import build_media
from tests.integration.conftest import AGENT, group_members, passwd_entry, read

pytestmark = pytest.mark.root
SCENARIO = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "azure.yaml"
PASSWORD = "Sim-Passw0rd!"
SSHD = """\
# sshd_config as an image ships it
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
Subsystem\tsftp\t/usr/lib/openssh/sftp-server

# Example of overriding settings on a per-user basis
Match User anoncvs
\tX11Forwarding no
"""
@pytest.fixture
def azure_vm(sandbox: Path, tmp_path: Path) -> Path:
    """The sandbox as an Azure image: sshd_config with a Match block, a host key, dhclient.conf,
    and the provisioning DVD as /dev/sr0."""
    (sandbox / "etc/ssh/sshd_config").write_text(SSHD)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sandbox / "etc/ssh/ssh_host_ed25519_key")],
        check=True,
    )
    (sandbox / "etc/dhcp").mkdir(parents=True, exist_ok=True)
    (sandbox / "etc/dhcp/dhclient.conf").write_text('send host-name "localhost";\nrequest subnet-mask;\n')
    (sandbox / "etc/hostname").write_text("debian\n")
    dvd = build_media("azure-ovf-udf", SCENARIO, tmp_path / "images" / "ovf.udf")
    (sandbox / "sys/block/sr0").mkdir(parents=True)
    (sandbox / "dev").mkdir(exist_ok=True)
    (sandbox / "dev/sr0").symlink_to(dvd)
    return sandbox


@pytest.fixture
def run(sandbox: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def go(url: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [
            *AGENT,
            "run",
            "--once",
            "--platform",
            "azure",
            "--root",
            str(sandbox),
            "--metadata-url",
            url,
        ]
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=timeout, check=False)

    return go


def reports(sim: Simulator) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = sim.state("azure")["health_reports"]
    return found


def shadow_hash(sandbox: Path, user: str) -> str:
    for line in (sandbox / "etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1]
    raise AssertionError(f"{user} not in shadow")


def test_provisioning_from_the_dvd_imds_and_wireserver(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stdout + result.stderr
        [report] = reports(sim)
        assert report["state"] == "Ready" and report["matches_goal_state"], report
        vm_id = sim.get("instance/compute/vmId", platform="azure")

        # The admin user, its key, its sudo group.
        assert passwd_entry(azure_vm, "azureuser") is not None
        keys = read(azure_vm / "home/azureuser/.ssh/authorized_keys") or ""
        assert "alice@laptop" in keys
        assert "azureuser" in (group_members(azure_vm, "guestagent-sudoers") or set())
        # The password from the DVD, as a SHA-512-crypt hash with a 10-character salt that
        # openssl computes the same way; never in the log.
        hashed = shadow_hash(azure_vm, "azureuser")
        _, crypt_id, salt, _ = hashed.split("$")
        assert (crypt_id, len(salt)) == ("6", 10)
        check = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=PASSWORD, capture_output=True,
            text=True, check=True,
        )  # fmt: skip
        assert check.stdout.strip() == hashed
        assert PASSWORD not in result.stdout + result.stderr
        assert hashed not in result.stdout + result.stderr

        # sshd_config: password logins on (the DVD gave a password), before the Match block.
        sshd = (azure_vm / "etc/ssh/sshd_config").read_text()
        assert sshd.index("PasswordAuthentication yes") < sshd.index("Match User anoncvs")
        assert sshd.index("ClientAliveInterval 180") < sshd.index("Include")
        assert (azure_vm / "var/lib/guestagent/sshd_config.orig").read_bytes() == SSHD.encode()
        # CustomData, as given (base64), 0600.
        custom = azure_vm / "var/lib/waagent/CustomData"
        assert stat.S_IMODE(custom.stat().st_mode) == 0o600
        assert custom.read_text() == "IyEvYmluL3NoCmVjaG8gY3VzdG9tIGRhdGEK"
        # Hostname: set, and published through dhclient.
        assert read(azure_vm / "etc/hostname") == "az-vm\n"
        assert read(azure_vm / "etc/dhcp/dhclient.conf") == 'send host-name "az-vm";\nrequest subnet-mask;\n'
        record = read(azure_vm / "var/lib/guestagent/azure_provisioned") or ""
        assert vm_id in record and '"reported": "Ready"' in record

        # A reboot: nothing is provisioned again, no second report.
        again = run(sim.url("azure"))
        assert again.returncode == 0, again.stderr
        assert "azure_provisioning: nothing to do" in again.stdout
        assert shadow_hash(azure_vm, "azureuser") == hashed
        assert len(reports(sim)) == 1

        # An image captured from this VM boots with a new VM id: provisioned again.
        sim.set("instance/compute/vmId", "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", platform="azure")
        third = run(sim.url("azure"))
        assert third.returncode == 0, third.stderr
        assert shadow_hash(azure_vm, "azureuser") != hashed  # a fresh salt
        assert [r["state"] for r in reports(sim)] == ["Ready", "Ready"]
        assert (azure_vm / "var/lib/guestagent/sshd_config.orig").read_bytes() == SSHD.encode()


def test_user_creation_failing_is_reported_not_ready(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # A live process holds /etc/passwd's lock (ours): useradd cannot create the user.
    (azure_vm / "etc/passwd.lock").write_text(f"{os.getpid()}\n")
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        result = run(sim.url("azure"))
        assert result.returncode == 1
        [report] = reports(sim)
    assert (report["state"], report["substatus"]) == ("NotReady", "ProvisioningFailed")
    assert "azureuser" in report["description"] and "lock" in report["description"], report
    assert passwd_entry(azure_vm, "azureuser") is None


def test_wireserver_500s_then_ok(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        sim.add_fault("/machine", kind="status", status=500, count=2, method="POST")
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
        assert [r["status"] for r in sim.requests(path="/machine", method="POST")] == [500, 500, 200]
        assert [r["state"] for r in reports(sim)] == ["Ready"]


def test_wireserver_down_then_back_reports_without_provisioning_again(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        fault = sim.add_fault("/machine", kind="status", status=503, method="POST")
        failed = run(sim.url("azure"), timeout=300)
        assert failed.returncode == 1
        assert "health report Ready not delivered" in failed.stderr
        hashed = shadow_hash(azure_vm, "azureuser")
        sim.remove_fault(fault)
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
        assert [r["state"] for r in reports(sim)] == ["Ready"]
        assert shadow_hash(azure_vm, "azureuser") == hashed  # provisioned once, reported later


def test_imds_410_while_the_vm_is_not_ready_yet(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        sim.add_fault("/metadata/instance", kind="status", status=410, count=3)
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
        assert [r["status"] for r in sim.requests(path="/metadata/instance")][:4] == [410, 410, 410, 200]
        assert [r["state"] for r in reports(sim)] == ["Ready"]


def test_no_dvd_provisions_from_imds(
    sandbox: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (sandbox / "etc/ssh/sshd_config").write_text(SSHD)
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        sim.set("instance/compute/osProfile/disablePasswordAuthentication", "true", platform="azure")
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
        assert [r["state"] for r in reports(sim)] == ["Ready"]
    assert "alice@laptop" in (read(sandbox / "home/azureuser/.ssh/authorized_keys") or "")
    assert shadow_hash(sandbox, "azureuser") in ("*", "!", "!*")  # no password without the DVD
    sshd = (sandbox / "etc/ssh/sshd_config").read_text()
    assert sshd.index("PasswordAuthentication no") < sshd.index("Match")
    assert not (sandbox / "var/lib/waagent/CustomData").exists()


def test_a_hostname_changed_by_hand_is_published_again(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        assert run(sim.url("azure")).returncode == 0
        (azure_vm / "etc/hostname").write_text("renamed-by-hand\n")
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
    assert "publish hostname renamed-by-hand" in result.stdout
    # Named once, when provisioned: the name given by hand is not taken back (as waagent).
    assert read(azure_vm / "etc/hostname") == "renamed-by-hand\n"
    assert (
        read(azure_vm / "etc/dhcp/dhclient.conf")
        == 'send host-name "renamed-by-hand";\nrequest subnet-mask;\n'
    )


def test_waagent_conf_settings_reach_provisioning(
    azure_vm: Path, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Through [Azure] directly (waagent.conf is read by the composition root once it calls
    guestagent.domain.waagent_conf.insert_waagent; see docs/azure.md)."""
    config = azure_vm / "etc/default/instance_configs.cfg"
    config.write_text("[Azure]\ndecode_custom_data = true\ndelete_root_password = true\n")
    with Simulator(SCENARIO, platforms=("azure",)) as sim:
        result = run(sim.url("azure"))
        assert result.returncode == 0, result.stderr
    assert (azure_vm / "var/lib/waagent/CustomData").read_text() == "#!/bin/sh\necho custom data\n"
    assert shadow_hash(azure_vm, "root") == "*"
