"""DigitalOcean: one droplet-like guest with no DHCP, whose only address is the one the agent configures.

What makes it a droplet, as on the real cloud: SMBIOS system manufacturer
"DigitalOcean" (DMI sys_vendor), the simulator playing the droplet metadata
service at 169.254.169.254:80, and no DHCP: the image variant without an eth0
stanza (`build_image(..., network="static")`), so eth0 is down and no dhclient
runs. The agent (no --platform) detects DigitalOcean from DMI, puts a
temporary link-local address (169.254.X.Y/16, from the MAC) on eth0 to reach
the service, configures the droplet's public address and default route from
v1.json through its static network subsystem, and drops the temporary address
after the next poll.

The slirp network is `qemu.PUBLIC_NET` (160.0.0.0/4): it holds 169.254.169.254
(the guestfwd) and the temporary address, and the "public" 172.16.0.15/20 with
slirp itself as gateway 172.16.0.1 (the simulator's DO document gives a public
IP a /20 and gateway .1); slirp's SSH forward goes to its first DHCP address,
which PUBLIC_NET sets to 172.16.0.15, so SSH only works once the agent has
configured the droplet's address. The key goes to the image's default user.

Tests share the VM and run in file order (the live key change is last).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from guestsim.vm import image
from guestsim.vm.image import DEFAULT_USER, ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import PUBLIC_NET, SMBIOS, Runner, SlirpNet

from .conftest import UserKey, record_timing
from .guest import account, agent_journal, boot_report, dmi

HOSTNAME = "vm-droplet"
PUBLIC_IP = PUBLIC_NET.dhcpstart  # where slirp's SSH forward delivers
GATEWAY = PUBLIC_NET.host
# [DigitalOcean] poll_interval is 10 s: a few polls under a loaded TCG guest.
POLL_TIMEOUT = 90
PUT = re.compile(r"DigitalOcean: put the temporary address (169\.254\.\d+\.\d+/16) on (\S+)")
REMOVED = "DigitalOcean: removed the temporary address {address} from {link}"


def scenario(*keys: UserKey) -> dict[str, Any]:
    return {
        "instance": {"id": "317230081", "name": HOSTNAME},
        "users": [{"name": key.name, "keys": [key.public]} for key in keys],
        # A public interface only (no private NIC, no anchor address).
        "network": {"interfaces": [{"mac": "42:01:0a:80:00:02", "public_ip": PUBLIC_IP}]},
    }


@pytest.fixture(scope="module")
def static_image(vm_cache_dir: Path, agent_deb: Path) -> ImagePaths:
    return image.build_image(vm_cache_dir, agent_deb, network="static")


@pytest.fixture(scope="module")
def sim(user_keys: Callable[[str], UserKey]) -> Iterator[Simulator]:
    with Simulator(scenario(user_keys("alice")), platforms=("digitalocean",)) as s:
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
        sim.port,
        vm_runner,
        keep_dir=vm_logs_dir / "digitalocean_first_boot",
        smbios=SMBIOS["digitalocean"],
        network=PUBLIC_NET,
    ) as machine:
        machine.start()
        if not wait_until(lambda: machine.can_login(DEFAULT_USER, alice.private), 300, 0.5):
            raise TimeoutError(f"{DEFAULT_USER} never logged in with the droplet's key\n{machine.diagnose()}")
        boot_to_ssh = time.monotonic() - machine.started_at
        record_timing(f"digitalocean first boot ({vm_runner.name} runner)", boot_report(machine, boot_to_ssh))
        yield machine


def test_slirp_network_holds_the_metadata_and_public_addresses():
    # No VM: libslirp accepts a guestfwd (and answers ARP) only inside its network.
    net = ipaddress.ip_network(PUBLIC_NET.net)
    for address in ("169.254.169.254", "169.254.129.3", PUBLIC_IP, GATEWAY):
        assert ipaddress.ip_address(address) in net
    assert not ipaddress.ip_address(PUBLIC_IP).is_link_local
    with pytest.raises(ValueError, match="inside"):
        SlirpNet(net="10.128.0.0/20", host="10.128.0.1", dhcpstart="10.128.0.2").options(metadata=True)


def temporary(vm: Vm) -> tuple[str, str]:
    """(address/prefix, link) the agent logged putting on a NIC."""
    found = PUT.search(agent_journal(vm))
    assert found, agent_journal(vm)[-3000:]
    return found.group(1), found.group(2)


def eth0_ipv4(vm: Vm) -> list[str]:
    out = vm.ssh("ip -4 -o addr show dev eth0").stdout
    return re.findall(r"inet (\S+)", out)


def test_default_user_logs_in_over_the_configured_address(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("id -un; echo $SSH_CONNECTION", user=DEFAULT_USER, key=user_keys("alice").private)
    user, connection = result.stdout.splitlines()
    assert user == DEFAULT_USER
    # SSH_CONNECTION = client-ip client-port server-ip server-port: slirp forwarded to
    # the address the agent configured, from slirp's own address (the gateway).
    client, _, server, port = connection.split()
    assert (server, port) == (PUBLIC_IP, "22"), connection
    assert client == GATEWAY, connection


def test_default_user_has_passwordless_sudo(vm: Vm, user_keys: Callable[[str], UserKey]):
    result = vm.ssh("sudo -n id -un; id -Gn", user=DEFAULT_USER, key=user_keys("alice").private)
    lines = result.stdout.splitlines()
    assert lines[0] == "root"
    assert "guestagent-sudoers" in lines[1].split(), lines
    assert account(vm, "alice") is None


def test_agent_detected_digitalocean_from_dmi(vm: Vm):
    assert dmi(vm, "sys_vendor") == "DigitalOcean"
    exec_start = vm.ssh("systemctl show -p ExecStart guestagent.service").stdout
    assert "--platform" not in exec_start, exec_start
    journal = agent_journal(vm)
    assert "platform digitalocean: DMI sys_vendor is 'DigitalOcean'" in journal, journal[-3000:]


def test_no_dhcp_in_the_guest(vm: Vm):
    # The image has no eth0 stanza: ifupdown left eth0 alone and no DHCP client ran.
    assert "eth0" not in vm.ssh("grep -v '^#' /etc/network/interfaces").stdout
    assert vm.ssh("pgrep -a dhclient", check=False).returncode == 1
    leases = vm.ssh("cat /var/lib/dhcp/dhclient*.leases 2>/dev/null", check=False).stdout
    assert leases.strip() == "", leases


def test_public_address_and_default_route_from_metadata(vm: Vm):
    assert f"{PUBLIC_IP}/20" in eth0_ipv4(vm)
    route = vm.ssh("ip -4 route show default").stdout.split()
    assert route[:5] == ["default", "via", GATEWAY, "dev", "eth0"], route


def test_temporary_address_reached_the_service_then_went(vm: Vm, sim: Simulator):
    address, link = temporary(vm)
    assert link == "eth0"
    ip = ipaddress.ip_interface(address)
    assert ip.network == ipaddress.ip_network("169.254.0.0/16")
    assert ip.ip not in ipaddress.ip_network("169.254.169.0/24")
    # Gone after the next poll once the droplet's own address was up.
    assert wait_until(lambda: address not in eth0_ipv4(vm), POLL_TIMEOUT), eth0_ipv4(vm)
    assert REMOVED.format(address=address, link=link) in agent_journal(vm)
    assert [a for a in eth0_ipv4(vm) if a.startswith("169.254.")] == []
    # And the service is still polled, now through the droplet's own address.
    before = len(sim.requests())
    assert wait_until(lambda: len(sim.requests()) > before, POLL_TIMEOUT)


def test_simulator_saw_only_the_document(sim: Simulator, vm: Vm):
    seen = sim.requests()
    # DMI decided: nothing was probed; every poll reads the one JSON document.
    assert seen and {r["path"] for r in seen} == {"/metadata/v1.json"}, sorted({r["path"] for r in seen})
    assert all(r["method"] == "GET" and r["status"] == 200 for r in seen)


def test_hostname_comes_from_metadata(vm: Vm):
    assert wait_until(lambda: vm.ssh("hostname").stdout.strip() == HOSTNAME, 60), (
        vm.ssh("hostname; cat /etc/hostname").stdout
    )


# Last: it changes the metadata.
def test_added_key_logs_in_without_a_reboot(vm: Vm, sim: Simulator, user_keys: Callable[[str], UserKey]):
    alice, bob = user_keys("alice"), user_keys("bob")
    assert not vm.can_login(DEFAULT_USER, bob.private)
    sim.apply(scenario(alice, bob))
    changed = time.monotonic()
    assert wait_until(lambda: vm.can_login(DEFAULT_USER, bob.private), POLL_TIMEOUT), (
        agent_journal(vm)[-3000:]
    )
    record_timing("digitalocean: key added -> default user logs in with it", f"{time.monotonic() - changed:.1f} s")
    assert vm.can_login(DEFAULT_USER, alice.private)
    # Polled through the public address: the temporary one never came back.
    assert [a for a in eth0_ipv4(vm) if a.startswith("169.254.")] == []
    assert vm.boots == 1
