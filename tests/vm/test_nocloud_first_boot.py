"""NoCloud: one guest whose metadata is a cidata ISO on its CD-ROM, booted once, every check on that boot.

The ISO is built from the scenario by the simulator's media builder
(`guestsim media nocloud-iso`) and attached as a CD-ROM (/dev/sr0). The guest
has no metadata forward at all (no guestfwd: nothing answers at
169.254.169.254) and QEMU's own SMBIOS identity, as a plain KVM/libvirt VM
would. The agent runs as the image ships it (no --platform, `[Core] platform`
unset = auto) and has to find the seed itself. meta-data's public-keys have
no user name: the image's `[Accounts] default_user` (debian) receives them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim.media import build_media
from guestsim.vm.image import DEFAULT_USER, ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import Runner

from .conftest import UserKey, record_timing
from .guest import agent_journal, boot_report, dmi

HOSTNAME = "vm-nocloud"
DETECTED = re.compile(r"platform nocloud: iso9660 volume 'cidata' at (/dev/\S+) found")


def scenario(alice: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "4520031799277581761", "name": HOSTNAME},
        "users": [{"name": alice.name, "keys": [alice.public]}],
    }


@pytest.fixture(scope="module")
def cidata_iso(user_keys: Callable[[str], UserKey], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nocloud") / "cidata.iso"
    return build_media("nocloud-iso", scenario(user_keys("alice")), out)


@pytest.fixture(scope="module")
def vm(
    guest_image: ImagePaths,
    vm_runner: Runner,
    cidata_iso: Path,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    # No metadata port: the seed is on the CD-ROM only.
    with Vm(
        guest_image, None, vm_runner, keep_dir=vm_logs_dir / "nocloud_first_boot", cdrom=cidata_iso
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login(DEFAULT_USER, alice.private), 300, 0.5):
            raise TimeoutError(f"{DEFAULT_USER} never logged in with the seed's key\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"nocloud first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_default_user_logs_in_with_the_meta_data_key(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $HOME", user=DEFAULT_USER, key=user_keys("alice").private)
    assert result.stdout.split() == [DEFAULT_USER, f"/home/{DEFAULT_USER}"]
    assert not vm.can_login(DEFAULT_USER, user_keys("mallory").private)


def test_default_user_has_passwordless_sudo(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("sudo -n id -un; id -Gn", user=DEFAULT_USER, key=user_keys("alice").private)
    lines = result.stdout.splitlines()
    assert lines[0] == "root"
    assert "guestagent-sudoers" in lines[1].split(), lines


def test_agent_detected_nocloud_from_the_cidata_cdrom(vm: Vm):
    # QEMU's own identity: nothing in DMI names a cloud, the local media decide.
    assert dmi(vm, "sys_vendor") == "QEMU"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start, exec_start
    journal = agent_journal(vm)
    found = DETECTED.search(journal)
    assert found, journal[-3000:]
    # The harness's CD-ROM is that volume.
    assert vm.ssh(f"readlink -f {found.group(1)}").stdout.strip() == "/dev/sr0"
    assert vm.ssh("blkid -o value -s LABEL /dev/sr0").stdout.strip() == "cidata"


def test_seed_was_read_without_mounting_it(vm: Vm):
    assert vm.ssh("findmnt -n -S /dev/sr0", check=False).stdout.strip() == ""


def test_guest_has_no_network_metadata(vm: Vm):
    probe = vm.ssh("timeout 5 bash -c '</dev/tcp/169.254.169.254/80'", check=False)
    assert probe.returncode != 0


def test_hostname_comes_from_local_hostname(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == HOSTNAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


def test_state_records_the_default_user(vm: Vm):
    assert vm.ssh("cat /var/lib/guestagent/nocloud_users").stdout.split() == [DEFAULT_USER]
