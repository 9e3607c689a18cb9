"""CPIO: one guest whose metadata is the illumos raw CPIO device, booted, then rebooted on the same disks.

The device is a raw disk whose LBA 0 is a newc cpio archive (no filesystem),
built from the scenario by the simulator's media builder (`guestsim media
cpio`: nodename, authorized_keys, firstboot.sh) and attached as a second,
read-only virtio disk (/dev/vdb). Nothing else says where the guest runs:
QEMU's own SMBIOS identity (only the system UUID is set, as `-uuid` would,
and it is the instance id), no cidata or config-2 volume, no `ds=` on the
kernel command line, no metadata forward. The agent runs as the image ships
it (no --platform) and finds the device by its cpio magic. The device's keys
are root's; its firstboot.sh runs once per instance, and not again after a
reboot of the same disk.

Tests share the VM and run in file order (the reboot is last).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim.media import build_media
from guestsim.vm.image import ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import QemuSpec, Runner, Smbios, VmFiles

from .conftest import UserKey, record_timing
from .guest import agent_journal, boot_report, dmi

NODENAME = "vm-cpio"
INSTANCE_UUID = "0c9e5a4e-2f7b-4d3a-8b61-5e4f3a2b1c0d"
MARKER = "/var/tmp/fb"
FIRSTBOOT = f"#!/bin/sh\necho ran >> {MARKER}\n"
# The firstboot pass comes after READY, so its marker may trail the first login a little.
FIRSTBOOT_TIMEOUT = 120


def scenario(alice: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "4520031799277581763", "name": NODENAME},
        "users": [{"name": alice.name, "keys": [alice.public]}],
        "scripts": {"startup": FIRSTBOOT},
    }


@pytest.fixture(scope="module")
def cpio_device(user_keys: Callable[[str], UserKey], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpio") / "metadata.img"
    return build_media("cpio", scenario(user_keys("alice")), out)


@pytest.fixture(scope="module")
def vm(
    guest_image: ImagePaths,
    vm_runner: Runner,
    cpio_device: Path,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    with Vm(
        guest_image,
        None,
        vm_runner,
        keep_dir=vm_logs_dir / "cpio_first_boot",
        # QEMU's identity otherwise; the system UUID only (what `-uuid` sets).
        smbios=Smbios(uuid=INSTANCE_UUID),
        disks=[cpio_device],
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login("root", alice.private), 300, 0.5):
            raise TimeoutError(f"root never logged in with the device's key\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"cpio first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_device_is_a_read_only_virtio_disk_after_the_root_disk(tmp_path: Path):
    # No VM: the command line. if=virtio like the root disk, so it comes second (/dev/vdb).
    spec = QemuSpec(
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        files=VmFiles(tmp_path),
        ssh_port=2222,
        metadata_port=None,
        disks=(tmp_path / "disk1.img",),
    )
    argv = spec.argv()
    drives = [argv[i + 1] for i, word in enumerate(argv) if word == "-drive"]
    assert drives[0].startswith(f"file={spec.files.overlay},if=virtio,")
    assert drives[1] == f"file={tmp_path / 'disk1.img'},if=virtio,readonly=on,format=raw"


def test_root_logs_in_with_the_devices_key(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $HOME", user="root", key=user_keys("alice").private)
    assert result.stdout.split() == ["root", "/root"]
    assert not vm.can_login("root", user_keys("mallory").private)


def test_no_user_was_made_from_the_key(vm: Vm):
    # The device's keys are root's: no default user, no user named after the key.
    assert vm.ssh("ls /home").stdout.split() == []
    assert vm.ssh("getent passwd alice debian", check=False).stdout.strip() == ""


def test_harness_key_still_logs_in_as_root(vm: Vm):
    # The agent manages its own keys in root's authorized_keys and leaves the rest.
    assert vm.ssh("id -un").stdout.strip() == "root"


def test_agent_found_the_device_by_its_cpio_magic(vm: Vm):
    # Nothing else names a platform: QEMU's DMI, no seed volume, no ds= word.
    assert dmi(vm, "sys_vendor") == "QEMU"
    cmdline = vm.ssh("cat /proc/cmdline").stdout
    assert "ds=" not in cmdline, cmdline
    labels = vm.ssh("blkid -o value -s LABEL", check=False).stdout.split()
    assert "cidata" not in labels and "config-2" not in labels, labels
    # /dev/vdb is the device: a newc archive from its first byte, no filesystem.
    assert vm.ssh("head -c 6 /dev/vdb").stdout == "070701"
    assert vm.ssh("cat /sys/block/vdb/ro").stdout.strip() == "1"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start, exec_start
    journal = agent_journal(vm)
    assert "platform cpio: newc cpio archive at LBA 0 of /dev/vdb" in journal, journal[-3000:]


def test_instance_id_is_the_smbios_uuid(vm: Vm):
    assert dmi(vm, "product_uuid").lower() == INSTANCE_UUID
    assert vm.ssh("cat /var/lib/guestagent/instance-id").stdout.strip() == INSTANCE_UUID


def test_hostname_is_the_nodename(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == NODENAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


def test_firstboot_script_ran_once(vm: Vm):
    assert wait_until(lambda: vm.ssh(f"cat {MARKER}", check=False).stdout == "ran\n", FIRSTBOOT_TIMEOUT), (
        agent_journal(vm)[-3000:]
    )
    # Recorded as done for this instance, only after it succeeded.
    stamps = vm.ssh("cat /var/lib/guestagent/firstboot").stdout
    assert INSTANCE_UUID in stamps, stamps
    assert "firstboot: running firstboot.sh" in agent_journal(vm)


# Last: it reboots the shared VM.
def test_reboot_does_not_run_firstboot_again(vm: Vm, user_keys: Callable[[str], UserKey]):
    seconds = vm.reboot()
    record_timing("cpio reboot (same disks): power off + boot to root SSH", f"{seconds:.1f} s")
    assert wait_until(lambda: vm.can_login("root", user_keys("alice").private), 120)
    # The agent has been through a full pass on this boot (READY: sshd starts after it).
    assert vm.ssh("systemctl is-active guestagent.service").stdout.strip() == "active"
    # Give a wrongly repeated firstboot pass the time it would take to show.
    time.sleep(20)
    assert vm.ssh(f"cat {MARKER}").stdout == "ran\n"
    assert "firstboot: running" not in agent_journal(vm)  # this boot's journal
    assert vm.ssh("hostname").stdout.strip() == NODENAME
    assert vm.boots == 2
