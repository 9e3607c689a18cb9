"""Azure: one guest provisioned from its OVF DVD, deprovisioned, booted again as a new VM, then rebooted.

What makes it Azure, as the fabric shows a VM:
  - DMI: Microsoft's Hyper-V identity and the chassis asset tag
    7783-7084-3265-9085-8269-3286-77 (`qemu.SMBIOS["azure"]`);
  - the provisioning DVD: `ovf-env.xml` on a UDF-only volume (`guestsim media
    azure-ovf-udf`) on the CD-ROM, /dev/sr0;
  - IMDS at 169.254.169.254:80 and the WireServer at 168.63.129.16:80, two
    guestfwds to the same simulator port (it serves both). Slirp's DHCP sends no
    option 245, so the agent falls back to 168.63.129.16 as an Azure guest whose
    lease lacks it would; nothing in the guest is told where the WireServer is.
    The slirp network (`qemu.AZURE_NET`, 160.0.0.0/4) holds both addresses;
  - the resource disk: an extra writable disk (/dev/vdb) laid out as Azure's (one
    MBR partition, NTFS "Temporary Storage", DATALOSS_WARNING_README.txt only;
    `guestsim.vm.resource_disk`);
  - a root disk larger than the image (the overlay's virtual size is 3 GiB, the
    image's ext4 2 GiB, on the whole of /dev/vda): the agent grows it;
  - an image carrying /etc/waagent.conf, as Azure images ship WALinuxAgent's
    configuration (an image variant of its own: `build_image(files=...)`). It asks
    for a 32 MiB swap file on the resource disk: the agent's [ResourceDisk]
    options come from that file or its own config files only, so an image that
    carries them is the honest way to give a guest them at first boot.

The agent runs as the image ships it (no --platform, no --metadata-url).

Boot 1: the admin logs in with the DVD's key and with its password, has sudo,
exactly one Ready report reached the fabric for this goal state, the resource
disk is ext4 `ga-resource` at /mnt/resource with the warning file, an fstab
entry and swap on, the root filesystem fills its disk. Then `sudo guestagent
deprovision --user --force` as the admin, and a power-off.
Boot 2, the same disk as a new VM (a new vmId and goal state in the simulator,
a new DVD with another key and hostname, and a resource disk holding a user's
file): new host keys, the admin provisioned again with the new key, a second
Ready for the new VM, the resource disk left alone (it holds data).
Boot 3, a plain reboot: nothing provisioned or reported again.

Tests share the VM and run in file order.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.media import build_media
from guestsim.scenario import Scenario, load_scenario
from guestsim.vm import image, resource_disk, ssh
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import AZURE_NET, SMBIOS, WIRESERVER_ADDRESS, Disk, QemuSpec, Runner, VmFiles

from .conftest import UserKey, record_timing
from .guest import agent_journal, boot_report, dmi, host_keys_settled

ADMIN = "azureuser"
PASSWORD = "Az-VmTest-Passw0rd!"  # the test VM's own admin password
HOSTNAME = "az-vm-1"
NEW_HOSTNAME = "az-vm-2"
MAC = "00:0d:3a:12:34:56"  # Microsoft's OUI, as Azure NICs have
ROOT_SIZE = "3G"
IMAGE_DISK_BYTES = 2 * 1024**3
SWAP_MB = 32
MOUNT_POINT = "/mnt/resource"
DATA_FILE = "results.csv"
WAAGENT_CONF = """\
# /etc/waagent.conf as an Azure image's builder ships it (WALinuxAgent's format).
Provisioning.Agent=auto
Provisioning.DeleteRootPassword=y
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.DecodeCustomData=n
Provisioning.ExecuteCustomData=n
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=y
ResourceDisk.SwapSizeMB=32
Logs.Verbose=n
OS.EnableFirewall=y
"""
DETECTED = "platform azure: DMI chassis_asset_tag is '7783-7084-3265-9085-8269-3286-77' (Azure)"
CUSTOM_DATA = "#!/bin/sh\necho custom data\n"
# The disks subsystem runs after READY; mkfs, swap and resize2fs take a while under TCG.
DISKS_TIMEOUT = 240


def scenario(key: UserKey, instance_id: str, name: str) -> dict[str, Any]:
    return {
        "instance": {
            "id": instance_id,
            "name": name,
            "zone": "westeurope-1",
            "machine_type": "Standard_B2s",
        },
        "project": {"id": "az-resource-group"},
        # The first user is the admin (OVF UserName, osProfile.adminUsername).
        "users": [{"name": ADMIN, "keys": [key.public], "password": PASSWORD}],
        "user_data": CUSTOM_DATA,
        "network": {"interfaces": [{"mac": MAC, "ip": f"{AZURE_NET.dhcpstart}/24"}]},
    }


def first(alice: UserKey) -> dict[str, Any]:
    return scenario(alice, "8000000000000000011", HOSTNAME)


def second(bob: UserKey) -> dict[str, Any]:
    return scenario(bob, "8000000000000000012", NEW_HOSTNAME)


def vm_id(doc: dict[str, Any]) -> str:
    scn = load_scenario(doc)
    assert isinstance(scn, Scenario)
    return scn.uuid


def health_reports(sim: Simulator) -> list[dict[str, Any]]:
    return list(sim.state("azure")["health_reports"])


@pytest.fixture(scope="module")
def azure_image(vm_cache_dir: Path, agent_deb: Path) -> image.ImagePaths:
    return image.build_image(vm_cache_dir, agent_deb, files={"etc/waagent.conf": WAAGENT_CONF})


@pytest.fixture(scope="module")
def media(user_keys: Callable[[str], UserKey], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = resource_disk.missing_tools()
    if missing:
        pytest.skip(f"building Azure's resource disk needs {', '.join(missing)} (ntfs-3g, fdisk)")
    out = tmp_path_factory.mktemp("azure")
    return {
        "dvd": build_media("azure-ovf-udf", first(user_keys("alice")), out / "ovf1.udf"),
        "dvd2": build_media("azure-ovf-udf", second(user_keys("bob")), out / "ovf2.udf"),
        "resource": resource_disk.build_resource_disk(out / "resource.img"),
        "data": resource_disk.build_resource_disk(
            out / "data.img", extra_files={DATA_FILE: b"run,score\n1,0.93\n"}
        ),
    }


@pytest.fixture(scope="module")
def sim(user_keys: Callable[[str], UserKey]) -> Iterator[Simulator]:
    with Simulator(first(user_keys("alice")), platforms=("azure",)) as s:
        yield s


@pytest.fixture(scope="module")
def vm(
    azure_image: image.ImagePaths,
    vm_runner: Runner,
    sim: Simulator,
    media: dict[str, Path],
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    with Vm(
        azure_image,
        sim.port,
        vm_runner,
        keep_dir=vm_logs_dir / "azure_first_boot",
        smbios=SMBIOS["azure"],
        cdrom=media["dvd"],
        disks=[Disk(media["resource"], writable=True)],
        network=AZURE_NET,
        metadata_aliases=[WIRESERVER_ADDRESS],
        root_size=ROOT_SIZE,
        mac=MAC,
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login(ADMIN, alice.private), 300, 0.5):
            raise TimeoutError(f"{ADMIN} never logged in with the DVD's key\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"azure first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_wireserver_is_a_second_forward_to_the_simulator(tmp_path: Path):
    # No VM: both service addresses go to the simulator's one port, inside slirp's network.
    spec = QemuSpec(
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        files=VmFiles(tmp_path),
        ssh_port=2222,
        metadata_port=8080,
        network=AZURE_NET,
        metadata_aliases=(WIRESERVER_ADDRESS,),
        disks=(Disk(tmp_path / "res.img", writable=True), tmp_path / "ro.img"),
    )
    argv = spec.argv()
    options = argv[argv.index("-netdev") + 1].split(",")
    assert [o for o in options if o.startswith("guestfwd=")] == [
        "guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080",
        "guestfwd=tcp:168.63.129.16:80-cmd:socat - TCP:127.0.0.1:8080",
    ]
    assert "net=160.0.0.0/4" in options and "restrict=on" in options
    drives = [argv[i + 1] for i, word in enumerate(argv) if word == "-drive"]
    assert drives[1] == f"file={tmp_path / 'res.img'},if=virtio,format=raw"
    assert drives[2] == f"file={tmp_path / 'ro.img'},if=virtio,readonly=on,format=raw"
    with pytest.raises(ValueError, match="inside"):
        QemuSpec(
            kernel=Path("/k"),
            initrd=Path("/i"),
            files=VmFiles(tmp_path),
            ssh_port=2222,
            metadata_port=8080,
            metadata_aliases=(WIRESERVER_ADDRESS,),  # outside DEFAULT_NET's 169.254.0.0/16
        ).argv()
    tables = SMBIOS["azure"].argv()
    assert "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77" in tables


def test_image_files_make_a_variant_of_their_own(tmp_path: Path):
    # No VM: waagent.conf is part of the Azure image's cache key; no files keep the old key.
    base = tmp_path / "guest-base-0.tar"
    deb = tmp_path / "guestagent.deb"
    base.write_bytes(b"")
    deb.write_bytes(b"deb")
    plain = image.image_key(base, deb)
    assert image.image_key(base, deb, files={}) == plain
    azure = image.image_key(base, deb, files={"etc/waagent.conf": WAAGENT_CONF})
    assert azure != plain
    assert image.image_key(base, deb, files={"etc/waagent.conf": WAAGENT_CONF + "#"}) != azure
    for bad in ("/etc/waagent.conf", "../etc/x", "etc/../x", image.DISTRO_CONFIG_PATH):
        with pytest.raises(ValueError, match=r"relative, normalised|written by the image builder"):
            image.build_image(tmp_path, deb, files={bad: ""})


# ---------------------------------------------------------------- boot 1


def test_admin_logs_in_with_the_dvd_key_and_has_sudo(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $HOME; sudo -n id -un; id -Gn", user=ADMIN, key=user_keys("alice").private)
    lines = result.stdout.splitlines()
    assert lines[:3] == [ADMIN, f"/home/{ADMIN}", "root"], lines
    assert "guestagent-sudoers" in lines[3].split(), lines
    assert not vm.can_login(ADMIN, user_keys("mallory").private)


def test_admin_logs_in_with_the_dvd_password(vm: Vm):
    # DisableSshPasswordAuthentication is false on the DVD: sshd takes passwords.
    effective = vm.ssh("sshd -T | grep -iE '^(passwordauthentication|kbdinteractiveauthentication) '").stdout
    assert "passwordauthentication yes" in effective.lower(), effective
    result = ssh.run_with_password(vm.ssh_port, ADMIN, PASSWORD, "id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ADMIN
    wrong = ssh.run_with_password(vm.ssh_port, ADMIN, PASSWORD + "x", "id -un")
    assert wrong.returncode == 255
    # Stored as a SHA-512-crypt hash; root's password deleted (waagent.conf DeleteRootPassword=y).
    shadow = vm.ssh(f"getent shadow {ADMIN} root").stdout.splitlines()
    fields = {line.split(":")[0]: line.split(":")[1] for line in shadow}
    assert fields[ADMIN].startswith("$6$"), fields[ADMIN][:3]
    assert fields["root"] == "*"


def test_agent_detected_azure_from_dmi(vm: Vm):
    assert dmi(vm, "chassis_asset_tag") == "7783-7084-3265-9085-8269-3286-77"
    assert dmi(vm, "sys_vendor") == "Microsoft Corporation"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start and "--metadata-url" not in exec_start, exec_start
    journal = agent_journal(vm)
    assert DETECTED in journal, journal[-3000:]


def test_ovf_came_from_the_udf_dvd_never_mounted(vm: Vm):
    assert vm.ssh("blkid -p -o value -s TYPE /dev/sr0").stdout.strip() == "udf"
    assert vm.ssh("findmnt -n -S /dev/sr0", check=False).stdout.strip() == ""
    # The DVD's HostName (IMDS's computerName is the same here) and its custom data.
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == HOSTNAME, 60)
    saved = vm.ssh("stat -c '%a %U' /var/lib/waagent/CustomData; cat /var/lib/waagent/CustomData").stdout
    mode, _, text = saved.partition("\n")
    assert mode == "600 root", mode
    # Decode off (DecodeCustomData=n): kept as the base64 text the DVD carries.
    assert text.strip() != "" and "echo custom data" not in text


def test_wireserver_reached_at_its_own_address(vm: Vm, sim: Simulator):
    journal = agent_journal(vm)
    assert "Azure WireServer at http://168.63.129.16 (the default address" in journal, journal[-3000:]
    wire = [r for r in sim.requests() if r["query"].get("comp") in ("versions", "goalstate", "health")]
    assert {r["headers"].get("host") for r in wire} == {WIRESERVER_ADDRESS}, wire
    imds = sim.requests("/metadata/instance")
    assert imds and {r["headers"].get("host") for r in imds} == {"169.254.169.254"}
    assert all(r["headers"].get("metadata") == "true" for r in imds)


def test_one_ready_report_for_the_goal_state(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    doc = first(user_keys("alice"))
    assert wait_until(lambda: len(health_reports(sim)) >= 1, 60)
    time.sleep(5)  # a second report would come right after the first
    reports = health_reports(sim)
    assert len(reports) == 1, reports
    report = reports[0]
    assert report["state"] == "Ready" and report["matches_goal_state"], report
    assert report["container_id"] == vm_id(doc)
    assert report["instance_id"] == f"{vm_id(doc)}.{HOSTNAME}"
    record = json.loads(vm.ssh("cat /var/lib/guestagent/azure_provisioned").stdout)
    assert record["vm_id"] == vm_id(doc), record
    assert "azure_provisioning: reported Ready to the fabric" in agent_journal(vm)


def test_resource_disk_formatted_and_mounted_with_swap(vm: Vm):
    def mounted() -> bool:
        return vm.ssh(f"findmnt -n -o SOURCE {MOUNT_POINT}", check=False).stdout.strip() == "/dev/vdb1"

    def swapping() -> bool:
        return f"{MOUNT_POINT}/swapfile" in vm.ssh("cat /proc/swaps").stdout

    assert wait_until(lambda: mounted() and swapping(), DISKS_TIMEOUT, 2), vm.ssh(
        "lsblk -f; cat /proc/swaps; journalctl -b -o cat -u guestagent | grep -i disks", check=False
    ).stdout
    probed = vm.ssh("blkid -o export /dev/vdb1").stdout
    assert "TYPE=ext4" in probed and "LABEL=ga-resource" in probed, probed
    assert vm.ssh("blkid -o value -s PTTYPE /dev/vdb").stdout.strip() == "gpt"
    warning = vm.ssh(f"cat {MOUNT_POINT}/{resource_disk.WARNING_NAME}").stdout
    assert "temporary" in warning.lower(), warning
    fstab = vm.ssh("cat /etc/fstab").stdout
    uuid = vm.ssh("blkid -o value -s UUID /dev/vdb1").stdout.strip()
    assert re.search(rf"^UUID={uuid} {MOUNT_POINT} ext4 \S*nofail\S* 0 2$", fstab, re.M), fstab
    assert vm.ssh("findmnt --fstab -n -o TARGET --source UUID=" + uuid).stdout.strip() == MOUNT_POINT
    swap = vm.ssh(f"stat -c '%s %a' {MOUNT_POINT}/swapfile").stdout.split()
    assert swap == [str(SWAP_MB * 1024 * 1024), "600"], swap


def test_root_filesystem_grown_to_the_disk(vm: Vm):
    disk = int(vm.ssh("blockdev --getsize64 /dev/vda").stdout)
    assert disk == 3 * 1024**3
    assert vm.ssh("findmnt -n -o SOURCE /").stdout.strip() == "/dev/vda"

    def grown() -> bool:
        size = int(vm.ssh("df -B1 --output=size / | tail -n 1").stdout)
        return size > IMAGE_DISK_BYTES

    assert wait_until(grown, DISKS_TIMEOUT, 2), vm.ssh(
        "df -h /; dumpe2fs -h /dev/vda | grep -i 'block count'"
    ).stdout
    blocks = vm.ssh("dumpe2fs -h /dev/vda 2>/dev/null | sed -n 's/^Block count: *//p'").stdout.strip()
    block_size = vm.ssh("dumpe2fs -h /dev/vda 2>/dev/null | sed -n 's/^Block size: *//p'").stdout.strip()
    assert int(blocks) * int(block_size) == disk


# ---------------------------------------------------------------- deprovision, boot 2 as a new VM

_before: dict[str, Any] = {}


def test_deprovision_and_boot_the_disk_as_a_new_vm(
    vm: Vm, sim: Simulator, media: dict[str, Path], user_keys: Callable[[str], UserKey], vm_runner: Runner
):
    _before["fingerprints"] = ssh.fingerprints(vm.ssh_port)
    assert _before["fingerprints"].keys() >= {"ssh-ed25519"}, _before
    result = vm.ssh(
        "sudo -n guestagent deprovision --user --force",
        user=ADMIN,
        key=user_keys("alice").private,
        timeout=180,
    )
    assert "done: shut down and capture the image now" in result.stdout, result.stdout
    # sshd re-reads its host keys for every connection: with them gone nobody logs in
    # any more (as after WALinuxAgent's deprovision), so the console looks.
    assert vm.ssh("true", check=False).returncode == 255
    status, out = vm.console_run(
        f"! ls /etc/ssh | grep -q '^ssh_host_' && ! getent passwd {ADMIN} && ! test -e /home/{ADMIN}"
        " && ! test -e /var/lib/guestagent/azure_provisioned && ! test -e /var/lib/guestagent/instance-id"
    )
    assert status == 0, out
    vm.poweroff()
    # The new VM: another vmId (so another goal state), another DVD, a resource disk with data.
    bob = user_keys("bob")
    sim.apply(second(bob))
    vm.replace_cdrom(media["dvd2"])
    vm.replace_disk(0, media["data"])
    vm.start()
    if not wait_until(lambda: vm.can_login(ADMIN, bob.private), 300, 0.5):
        raise TimeoutError(f"{ADMIN} never logged in with the new VM's key\n{vm.diagnose()}")
    boot_to_ssh = time.monotonic() - vm.started_at
    record_timing(f"azure second boot, new VM id ({vm_runner.name} runner)", boot_report(vm, boot_to_ssh))


def test_new_vm_has_new_host_keys(vm: Vm):
    host_keys_settled(vm)  # the set the reboot test compares with is the whole set
    now = ssh.fingerprints(vm.ssh_port)
    assert now.keys() >= {"ssh-ed25519"}
    for key_type, fingerprint in now.items():
        assert fingerprint != _before["fingerprints"].get(key_type), key_type
    _before["fingerprints2"] = now


def test_new_vm_provisioned_the_admin_again(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; sudo -n id -un", user=ADMIN, key=user_keys("bob").private)
    assert result.stdout.split() == [ADMIN, "root"]
    # The old VM's key went with the deleted user.
    assert not vm.can_login(ADMIN, user_keys("alice").private)
    assert ssh.run_with_password(vm.ssh_port, ADMIN, PASSWORD, "true").returncode == 0
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == NEW_HOSTNAME, 60)
    journal = agent_journal(vm)
    new_id = vm_id(second(user_keys("bob")))
    assert f"azure_provisioning: provisioning VM {new_id}" in journal, journal[-3000:]


def test_new_vm_reported_ready_once(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    new_id = vm_id(second(user_keys("bob")))
    assert wait_until(lambda: len(health_reports(sim)) >= 2, 60)
    time.sleep(5)
    reports = health_reports(sim)
    assert len(reports) == 2, reports
    assert reports[1]["state"] == "Ready" and reports[1]["matches_goal_state"], reports[1]
    assert reports[1]["container_id"] == new_id
    assert reports[1]["instance_id"] == f"{new_id}.{NEW_HOSTNAME}"
    assert json.loads(vm.ssh("cat /var/lib/guestagent/azure_provisioned").stdout)["vm_id"] == new_id


def _data_disk_untouched(vm: Vm) -> None:
    probed = vm.ssh("blkid -p -o value -s TYPE /dev/vdb1; blkid -p -o value -s LABEL /dev/vdb1").stdout
    assert probed.splitlines() == ["ntfs", resource_disk.LABEL], probed
    assert vm.ssh("blkid -o value -s PTTYPE /dev/vdb").stdout.strip() == "dos"
    files = vm.ssh("ntfsls -f /dev/vdb1").stdout.split()
    assert sorted(files) == sorted([resource_disk.WARNING_NAME, DATA_FILE]), files
    assert vm.ssh(f"findmnt -n {MOUNT_POINT}", check=False).stdout.strip() == ""


def test_resource_disk_holding_data_is_never_formatted(vm: Vm):
    def refused() -> bool:
        return "never formatted" in agent_journal(vm)

    assert wait_until(refused, DISKS_TIMEOUT, 2), agent_journal(vm)[-3000:]
    line = next(x for x in agent_journal(vm).splitlines() if "never formatted" in x)
    assert "/dev/vdb" in line and f"holds 1 file(s) besides {resource_disk.WARNING_NAME}" in line, line
    _data_disk_untouched(vm)
    assert "/mnt/resource/swapfile" not in vm.ssh("cat /proc/swaps").stdout


# ---------------------------------------------------------------- boot 3: a plain reboot


def test_plain_reboot_provisions_and_reports_nothing(
    vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey], vm_runner: Runner
):
    seconds = vm.reboot()
    record_timing(
        f"azure reboot, same VM id ({vm_runner.name} runner): power off + boot to root SSH",
        f"{seconds:.1f} s",
    )
    assert wait_until(lambda: vm.can_login(ADMIN, user_keys("bob").private), 120)
    assert vm.ssh("systemctl is-active guestagent.service").stdout.strip() == "active"
    # Give a wrongly repeated provisioning pass and its report the time they would take.
    time.sleep(20)
    assert len(health_reports(sim)) == 2, health_reports(sim)
    journal = agent_journal(vm)  # this boot's
    assert "azure_provisioning: provisioning VM" not in journal, journal[-3000:]
    assert "first boot of instance" not in journal
    assert ssh.fingerprints(vm.ssh_port) == _before["fingerprints2"]
    assert vm.ssh("hostname").stdout.strip() == NEW_HOSTNAME
    _data_disk_untouched(vm)
    assert vm.boots == 3
