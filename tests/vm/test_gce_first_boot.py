"""GCE: one guest, booted once from the image, then changed live and rebooted on the same disk.

The guest has GCE's SMBIOS identity (product "Google Compute Engine") and the
agent runs as the image ships it, with no --platform: it detects GCE from DMI.
Tests in this module share that VM and run in file order (the reboot is
last), so `nox -s vm` runs them with `--dist loadfile`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.vm import ssh
from guestsim.vm.image import ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import SMBIOS, Runner

from .conftest import UserKey, record_timing
from .guest import agent_journal, boot_report, host_keys_settled

STARTUP_MARK = "vm-test-startup-script-ran"
SHUTDOWN_MARK = "vm-test-shutdown-script-ran"
FORWARDED_IP = "10.128.0.100"
# The agent follows metadata with a long poll: a change should land in seconds.
LIVE_CHANGE_TIMEOUT = 90


def scenario(alice: UserKey, bob: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "4520031799277581759", "name": "vm-test"},
        "users": [
            {"name": alice.name, "keys": [alice.public]},
            {"name": bob.name, "keys": [bob.public]},
        ],
        "scripts": {
            "startup": f"#!/bin/bash\necho {STARTUP_MARK} as $(id -un)\n",
            "shutdown": f"#!/bin/bash\necho {SHUTDOWN_MARK}\n",
        },
        "network": {
            "interfaces": [
                {
                    "mac": "42:01:0a:80:00:02",
                    "ip": "10.128.0.2/20",
                    "gateway": "10.128.0.1",
                    "forwarded_ips": [FORWARDED_IP],
                }
            ]
        },
    }


@pytest.fixture(scope="module")
def sim(user_keys: Callable[[str], UserKey]) -> Iterator[Simulator]:
    with Simulator(scenario(user_keys("alice"), user_keys("bob")), platforms=("gce",)) as s:
        yield s


@pytest.fixture(scope="module")
def vm(
    guest_image: ImagePaths,
    vm_runner: Runner,
    sim: Simulator,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    with Vm(
        guest_image, sim.port, vm_runner, keep_dir=vm_logs_dir / "gce_first_boot", smbios=SMBIOS["gce"]
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login("alice", alice.private), 300, 0.5):
            raise TimeoutError(f"alice never logged in\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"gce first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_agent_detected_gce_from_dmi(vm: Vm):
    assert vm.ssh("cat /sys/class/dmi/id/product_name").stdout.strip() == "Google Compute Engine"
    journal = agent_journal(vm)
    assert "platform gce: DMI product_name is 'Google Compute Engine'" in journal, journal[-3000:]


def test_metadata_user_logs_in_with_a_real_ssh_client(vm: Vm, user_keys: Callable[[str], UserKey]):
    alice = user_keys("alice")
    result = vm.ssh("id -un; echo $HOME", user="alice", key=alice.private)
    assert result.stdout.split() == ["alice", "/home/alice"]


def test_second_user_logs_in_too(vm: Vm, user_keys: Callable[[str], UserKey]):
    assert vm.can_login("bob", user_keys("bob").private)


def test_google_sudoers_member_runs_sudo_without_password(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("sudo -n true && sudo -n id -un", user="alice", key=user_keys("alice").private)
    assert result.stdout.strip() == "root"


def test_wrong_key_is_refused(vm: Vm, user_keys: Callable[[str], UserKey]):
    assert not vm.can_login("alice", user_keys("mallory").private)


def test_host_keys_in_guest_attributes_are_the_ones_ssh_sees(vm: Vm, sim: Simulator):
    published = {
        key.split("/", 1)[1]: value.strip()
        for key, value in sim.guest_attributes().items()
        if key.startswith("hostkeys/")
    }
    offered = ssh.keyscan(vm.ssh_port)
    assert "ssh-ed25519" in published, f"published: {sorted(published)}"
    for key_type, blob in published.items():
        assert offered.get(key_type) == blob, f"{key_type} differs from what sshd offers"


def test_rsa_host_key_follows_ready_and_sshd_serves_it(vm: Vm, sim: Simulator):
    # Made after READY (sshd started on ed25519/ecdsa): published and offered once done.
    host_keys_settled(vm)
    published = wait_until(lambda: "hostkeys/ssh-rsa" in sim.guest_attributes(), 60, 1)
    assert published, sorted(sim.guest_attributes())
    offered = ssh.keyscan(vm.ssh_port, types=("rsa",))
    assert offered.get("ssh-rsa") == sim.guest_attributes()["hostkeys/ssh-rsa"].strip()
    journal = agent_journal(vm)
    ready = journal.index("first pass done")
    assert journal.index("generate SSH host key /etc/ssh/ssh_host_rsa_key") > ready, journal[-3000:]


def test_agent_is_ready_before_sshd_accepts_logins(vm: Vm):
    from .guest import unit_times

    agent = unit_times(vm, "guestagent.service")
    sshd = unit_times(vm, "ssh.service")
    assert 0 < agent["ActiveEnterTimestampMonotonic"] <= sshd["ActiveEnterTimestampMonotonic"]


def test_units_pass_systemd_analyze_verify_in_the_guest(vm: Vm):
    result = vm.ssh(
        "systemd-analyze verify guestagent.service guestagent-startup-scripts.service"
        " guestagent-shutdown-scripts.service",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_startup_script_output_reaches_the_serial_console(vm: Vm):
    assert wait_until(lambda: STARTUP_MARK in vm.serial_text(), 120), vm.serial_tail()
    assert f"{STARTUP_MARK} as root" in vm.serial_text()


def test_forwarded_ip_becomes_a_local_route(vm: Vm):
    def routed() -> bool:
        out = vm.ssh("ip route show table local proto 66").stdout
        return FORWARDED_IP in out

    assert wait_until(routed, 60), vm.ssh("ip route show table local").stdout


def test_added_key_logs_in_without_a_reboot(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    carol = user_keys("carol")
    assert not vm.can_login("carol", carol.private)
    keys = sim.get("instance/attributes/ssh-keys")
    sim.set("instance/attributes/ssh-keys", f"{keys.rstrip()}\n{carol.line}\n")
    assert wait_until(lambda: vm.can_login("carol", carol.private), LIVE_CHANGE_TIMEOUT)
    assert vm.boots == 1


def test_removed_key_no_longer_logs_in(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    bob = user_keys("bob")
    assert vm.can_login("bob", bob.private)
    keys = sim.get("instance/attributes/ssh-keys")
    kept = [line for line in keys.splitlines() if not line.startswith("bob:")]
    sim.set("instance/attributes/ssh-keys", "\n".join(kept) + "\n")
    assert wait_until(lambda: not vm.can_login("bob", bob.private), LIVE_CHANGE_TIMEOUT)
    # The others are untouched.
    assert vm.can_login("alice", user_keys("alice").private)


# Last in the file: it reboots the shared VM.
def test_reboot_keeps_users_and_host_keys(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    fingerprint = "sha256sum /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; getent passwd alice carol"
    before_files = vm.ssh(fingerprint).stdout
    before_offered = ssh.keyscan(vm.ssh_port)
    before_published = sim.guest_attributes()

    seconds = vm.reboot()
    record_timing("reboot (same disk): power off + boot to root SSH", f"{seconds:.1f} s")

    for user in ("alice", "carol"):
        assert wait_until(lambda u=user: vm.can_login(u, user_keys(u).private), 120), user
    assert vm.ssh(fingerprint).stdout == before_files
    assert ssh.keyscan(vm.ssh_port) == before_offered
    hostkeys = {k: v for k, v in sim.guest_attributes().items() if k.startswith("hostkeys/")}
    assert hostkeys == {k: v for k, v in before_published.items() if k.startswith("hostkeys/")}
    assert not vm.can_login("bob", user_keys("bob").private)


def test_shutdown_script_output_reaches_the_serial_console(vm: Vm):
    # The reboot above stopped guestagent-shutdown-scripts.service.
    assert SHUTDOWN_MARK in vm.serial_text(), vm.serial_tail()
