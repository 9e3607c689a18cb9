"""SmartOS: one Triton HVM guest whose metadata comes over its second serial port, booted once.

What makes it a Triton KVM/bhyve guest: SMBIOS manufacturer "Joyent",
product "SmartDC HVM" (DMI product_name, the agent's detection hint), and the
metadata channel on COM2 (/dev/ttyS1): QEMU joins that port to the
simulator's SmartOS socket (`sim.serial_socket("smartos")`), which speaks
Triton's metadata protocol v2 as the host's metadata agent does. No metadata
forward, and no console or getty on ttyS1 (the console is ttyS0).

No DHCP either: the image variant without an eth0 stanza
(`build_image(..., network="static")`) leaves eth0 down until the agent
configures it from `sdc:nics` (a static NIC, `dhcp: false` in the scenario:
10.128.0.2/20, gateway 10.128.0.1). The slirp network is made to match it
(net 10.128.0.0/20, slirp at .1, SSH forwarded to .2), so SSH only works
once the agent has configured the address. `root_authorized_keys` are
root's. The agent writes the host keys it generated back as customer
metadata (`guestagent:hostkeys/<type>`), which the simulator records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.vm import image, ssh
from guestsim.vm.image import ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import SMBIOS, QemuSpec, Runner, SlirpNet, VmFiles

from .conftest import UserKey, record_timing
from .guest import agent_journal, boot_report, dmi, host_keys_settled

HOSTNAME = "vm-smartos"
ADDRESS = "10.128.0.2"
GATEWAY = "10.128.0.1"
# slirp's network is the NIC's subnet: slirp is the gateway, the SSH forward goes to the NIC's address.
NET = SlirpNet(net="10.128.0.0/20", host=GATEWAY, dhcpstart=ADDRESS)
HOSTKEY_PREFIX = "guestagent:hostkeys/"


def scenario(alice: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "4520031799277581764", "name": HOSTNAME},
        "users": [{"name": alice.name, "keys": [alice.public]}],
        "network": {
            "interfaces": [
                {"mac": "42:01:0a:80:00:02", "ip": f"{ADDRESS}/20", "gateway": GATEWAY, "dhcp": False}
            ]
        },
    }


@pytest.fixture(scope="module")
def static_image(vm_cache_dir: Path, agent_deb: Path) -> ImagePaths:
    return image.build_image(vm_cache_dir, agent_deb, network="static")


@pytest.fixture(scope="module")
def sim(user_keys: Callable[[str], UserKey]) -> Iterator[Simulator]:
    with Simulator(scenario(user_keys("alice")), platforms=("smartos",)) as s:
        yield s


@pytest.fixture(scope="module")
def vm(
    static_image: ImagePaths,
    vm_runner: Runner,
    sim: Simulator,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
) -> Iterator[Vm]:
    alice = user_keys("alice")
    with Vm(
        static_image,
        None,
        vm_runner,
        keep_dir=vm_logs_dir / "smartos_first_boot",
        smbios=SMBIOS["smartos"],
        serial_sockets=[sim.serial_socket("smartos")],
        network=NET,
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login("root", alice.private), 300, 0.5):
            raise TimeoutError(f"root never logged in with root_authorized_keys\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"smartos first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_channel_is_com2_joined_to_the_socket(tmp_path: Path):
    # No VM: the command line. COM1 stays the console; COM2 is a client of the socket.
    spec = QemuSpec(
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        files=VmFiles(tmp_path),
        ssh_port=2222,
        metadata_port=None,
        serial_sockets=(Path("/tmp/guestsim-smartos-x/metadata.sock"),),
        network=NET,
    )
    argv = spec.argv()
    assert argv[argv.index("-serial") + 1] == "chardev:serial0"
    chardevs = [argv[i + 1] for i, word in enumerate(argv) if word == "-chardev"]
    assert chardevs[1] == "socket,id=serial1,path=/tmp/guestsim-smartos-x/metadata.sock,reconnect=1"
    assert "isa-serial,chardev=serial1,index=1" in argv
    netdev = argv[argv.index("-netdev") + 1].split(",")
    assert [o for o in netdev if "fwd=" in o] == ["hostfwd=tcp:127.0.0.1:2222-:22"]
    assert {"net=10.128.0.0/20", "host=10.128.0.1", "dhcpstart=10.128.0.2", "restrict=on"} <= set(netdev)


def test_root_logs_in_with_root_authorized_keys(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $SSH_CONNECTION", user="root", key=user_keys("alice").private)
    user, connection = result.stdout.splitlines()
    assert user == "root"
    assert connection.split()[2:] == [ADDRESS, "22"], connection
    assert not vm.can_login("root", user_keys("mallory").private)
    # No user was made from the key.
    assert vm.ssh("ls /home").stdout.split() == []


def test_agent_detected_smartos_from_dmi(vm: Vm):
    assert dmi(vm, "sys_vendor") == "Joyent"
    assert dmi(vm, "product_name") == "SmartDC HVM"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start, exec_start
    journal = agent_journal(vm)
    assert "platform smartos: DMI product_name 'SmartDC HVM' starts with 'SmartDC'" in journal, journal[-3000:]


def test_metadata_came_over_com2(vm: Vm, sim: Simulator):
    # ttyS1 (line 1: COM2 at 0x2f8) is a 16550 the host joined to the simulator, and
    # the agent's requests and the answers went through it.
    com2 = vm.ssh("grep '^1:' /proc/tty/driver/serial").stdout
    assert "uart:16550A" in com2 and "port:000002F8" in com2, com2
    counters = dict(re.findall(r"(tx|rx):(\d+)", com2))
    assert int(counters["tx"]) > 0 and int(counters["rx"]) > 0, com2
    assert vm.ssh("systemctl is-active serial-getty@ttyS1.service", check=False).stdout.strip() != "active"
    assert "ttyS1" not in vm.ssh("cat /proc/cmdline").stdout
    seen = sim.requests()
    methods = {r["method"] for r in seen}
    assert {"NEGOTIATE", "GET"} <= methods, methods
    asked = {r["path"] for r in seen if r["method"] == "GET"}
    assert {"sdc:uuid", "sdc:nics", "root_authorized_keys"} <= asked, sorted(asked)
    # No metadata forward: nothing answers at 169.254.169.254.
    probe = vm.ssh("timeout 5 bash -c '</dev/tcp/169.254.169.254/80'", check=False)
    assert probe.returncode != 0


def test_no_dhcp_in_the_guest(vm: Vm):
    assert "eth0" not in vm.ssh("grep -v '^#' /etc/network/interfaces").stdout
    assert vm.ssh("pgrep -a dhclient", check=False).returncode == 1


def test_static_address_and_route_from_sdc_nics(vm: Vm):
    out = vm.ssh("ip -4 -o addr show dev eth0").stdout
    assert f"{ADDRESS}/20" in out, out
    route = vm.ssh("ip -4 route show default").stdout.split()
    assert route[:5] == ["default", "via", GATEWAY, "dev", "eth0"], route


def test_hostname_is_sdc_hostname(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == HOSTNAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


def test_instance_id_is_sdc_uuid(vm: Vm, sim: Simulator):
    uuid = sim.get("sdc:uuid", platform="smartos")
    assert vm.ssh("cat /var/lib/guestagent/instance-id").stdout.strip() == uuid


def test_host_keys_were_put_back(vm: Vm, sim: Simulator):
    def published() -> dict[str, str]:
        put: dict[str, str] = sim.state("smartos").get("put", {})
        return {k[len(HOSTKEY_PREFIX):]: v for k, v in put.items() if k.startswith(HOSTKEY_PREFIX)}

    host_keys_settled(vm)  # the RSA key is made after READY: until then the set grows
    assert wait_until(lambda: "ssh-rsa" in published(), 60), sim.state("smartos")
    keys = published()
    # What sshd offers ({type: base64}) is what was published, type by type.
    offered = ssh.keyscan(vm.ssh_port)
    assert offered and set(offered) <= set(keys), (sorted(offered), sorted(keys))
    for key_type, blob in offered.items():
        assert blob in keys[key_type].split(), (key_type, keys[key_type])
