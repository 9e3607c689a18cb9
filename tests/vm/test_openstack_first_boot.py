"""OpenStack: one guest that reads its metadata from a config drive, booted once, every check on that boot.

What makes it OpenStack, as Nova shows an instance: the SMBIOS identity
(manufacturer "OpenStack Foundation", product "OpenStack Nova", the
instance's UUID as the system UUID) and a config drive, an ISO9660 volume
labelled `config-2` built from the scenario by the simulator's media builder
(`guestsim media config-drive`) on the guest's CD-ROM (/dev/sr0). No metadata
forward: nothing answers at 169.254.169.254, the drive is all there is. The
scenario's NIC is left to DHCP (`ipv4_dhcp` in network_data.json), so nothing
static touches slirp's network. OpenStack's key pairs have no user name: the
image's `[Accounts] default_user` (debian) receives them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from guestsim.media import build_media
from guestsim.scenario import Scenario, load_scenario
from guestsim.vm.image import DEFAULT_USER, ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import SMBIOS, Runner

from .conftest import UserKey, record_timing
from .guest import account, agent_journal, boot_report, dmi

HOSTNAME = "vm-openstack"
DETECTED = re.compile(r"platform openstack: (DMI \S+ is '[^']*')")


def scenario(alice: UserKey) -> dict[str, Any]:
    return {
        "instance": {
            "id": "4520031799277581762",
            "name": HOSTNAME,
            "hostname": f"{HOSTNAME}.novalocal",
        },
        "users": [{"name": alice.name, "keys": [alice.public]}],
        # dhcp (the default): network_data.json says ipv4_dhcp for it.
        "network": {"interfaces": [{"mac": "42:01:0a:80:00:02", "ip": "10.128.0.2/20"}]},
    }


def instance_uuid(alice: UserKey) -> str:
    scn = load_scenario(scenario(alice))
    assert isinstance(scn, Scenario)
    return scn.uuid


@pytest.fixture(scope="module")
def config_drive(user_keys: Callable[[str], UserKey], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("openstack") / "config-drive.iso"
    return build_media("config-drive", scenario(user_keys("alice")), out)


@pytest.fixture(scope="module")
def vm(
    guest_image: ImagePaths,
    vm_runner: Runner,
    config_drive: Path,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    # Nova gives the SMBIOS system UUID the instance's uuid.
    smbios = attrs.evolve(SMBIOS["openstack"], uuid=instance_uuid(alice))
    with Vm(
        guest_image,
        None,
        vm_runner,
        keep_dir=vm_logs_dir / "openstack_first_boot",
        smbios=smbios,
        cdrom=config_drive,
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login(DEFAULT_USER, alice.private), 300, 0.5):
            raise TimeoutError(f"{DEFAULT_USER} never logged in with the key pair\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"openstack first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_default_user_logs_in_with_the_key_pair(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $HOME", user=DEFAULT_USER, key=user_keys("alice").private)
    assert result.stdout.split() == [DEFAULT_USER, f"/home/{DEFAULT_USER}"]
    assert not vm.can_login(DEFAULT_USER, user_keys("mallory").private)


def test_default_user_has_passwordless_sudo(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("sudo -n id -un; id -Gn", user=DEFAULT_USER, key=user_keys("alice").private)
    lines = result.stdout.splitlines()
    assert lines[0] == "root"
    assert "guestagent-sudoers" in lines[1].split(), lines


def test_key_pair_name_is_not_a_user(vm: Vm):
    assert account(vm, "alice") is None


def test_agent_detected_openstack_from_dmi(vm: Vm, user_keys: Callable[[str], UserKey]):
    assert dmi(vm, "sys_vendor") == "OpenStack Foundation"
    assert dmi(vm, "product_name") == "OpenStack Nova"
    assert dmi(vm, "product_uuid").lower() == instance_uuid(user_keys("alice"))
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start, exec_start
    journal = agent_journal(vm)
    assert DETECTED.search(journal), journal[-3000:]


def test_metadata_came_from_the_config_drive_on_the_cdrom(vm: Vm, user_keys: Callable[[str], UserKey]):
    assert vm.ssh("blkid -o value -s LABEL /dev/sr0").stdout.strip() == "config-2"
    # meta_data.json's uuid is the instance id; the drive was read without mounting it.
    recorded = vm.ssh("cat /var/lib/guestagent/instance-id").stdout.strip()
    assert recorded == instance_uuid(user_keys("alice"))
    assert f"first boot of instance {recorded}" in agent_journal(vm)
    assert vm.ssh("findmnt -n -S /dev/sr0", check=False).stdout.strip() == ""


def test_guest_has_no_network_metadata(vm: Vm):
    probe = vm.ssh("timeout 5 bash -c '</dev/tcp/169.254.169.254/80'", check=False)
    assert probe.returncode != 0


def test_network_stayed_on_dhcp(vm: Vm):
    # network_data.json says ipv4_dhcp: the lease slirp gave is the only address.
    out = vm.ssh("ip -4 -o addr show dev eth0").stdout
    assert "169.254.169.15/16" in out, out


def test_hostname_comes_from_meta_data(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == HOSTNAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


def test_state_records_the_default_user(vm: Vm):
    assert vm.ssh("cat /var/lib/guestagent/openstack_users").stdout.split() == [DEFAULT_USER]
