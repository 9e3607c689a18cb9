"""Static networking through real rtnetlink, inside a throwaway network namespace.

Each test gets its own namespace `gan-XXXX` holding a veth pair: `gannic0` (the
guest's NIC, with a DigitalOcean-style MAC) and its peer, both up so the link
has carrier. Nothing is changed in the machine's own namespace: sysctls the
tests set (accept_dad) are the namespace's own, files go under a temporary
root, and the namespace is deleted after each test, also when it fails. The
kernel's view is read back with `ip -j`, not with the adapter under test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.pyroute2_netlink import Pyroute2Netlink
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain import network as domain
from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Route
from guestagent.domain.network import StaticRoute
from guestagent.services.context import Context
from guestagent.services.network import HEAL_INTERVAL, NetworkSubsystem

pytestmark = pytest.mark.root

MAC0 = "da:00:0a:80:00:02"
NIC0, PEER0 = "gannic0", "ganpeer0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True)


def set_sysctl(ns: str, path: str, value: str) -> None:
    """A sysctl of the namespace (never the machine's): written from inside it."""
    _in_ns(ns, "sh", "-c", f"echo {value} > /proc/sys/{path}")


def get_sysctl(ns: str, path: str) -> str:
    return _in_ns(ns, "cat", f"/proc/sys/{path}").stdout.strip()


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not installed")
    name = f"gan-{secrets.token_hex(4)}"
    if _ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("ip netns add is not available here")
    try:
        _ip("-n", name, "link", "add", NIC0, "address", MAC0, "type", "veth", "peer", "name", PEER0)
        _ip("-n", name, "link", "set", PEER0, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


def no_dad(ns: str) -> None:
    for dev in ("all", "default", NIC0):
        set_sysctl(ns, f"net/ipv6/conf/{dev}/accept_dad", "0")


def addresses(ns: str, family: str = "-4") -> list[dict[str, Any]]:
    (info,) = json.loads(_ip("-n", ns, "-j", family, "addr", "show", "dev", NIC0).stdout or "[{}]") or [{}]
    return [a for a in info.get("addr_info", []) if a.get("scope") != "link"]


def address_set(ns: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for fam in ("-4", "-6") for a in addresses(ns, fam)}


def routes(ns: str) -> list[dict[str, Any]]:
    out = []
    for family in ("-4", "-6"):
        out += json.loads(_ip("-n", ns, "-j", family, "route", "show", "table", "main").stdout or "[]")
    return out


def ours(ns: str) -> set[tuple[str, str | None]]:
    found = set()
    for r in routes(ns):
        if r.get("protocol") != "67":
            continue
        hops = r.get("nexthops") or [r]
        for hop in hops:
            found.add((r["dst"], hop.get("gateway")))
    return found


def link(ns: str) -> dict[str, Any]:
    (info,) = json.loads(_ip("-n", ns, "-j", "link", "show", NIC0).stdout)
    return dict(info)


def context(root: Path, make: Callable[[], Any]) -> Context:
    fs = LocalFileSystem(str(root))
    return Context(config=Config(), fs=fs, runner=SubprocessRunner(), users=PasswdFiles(fs), clock=SystemClock(),
                   netlink=make, root=str(root))


def ctx_for(tmp_path: Path, ns: str) -> Context:
    return context(tmp_path, lambda: Pyroute2Netlink(netns=ns))


def metadata(addrs: tuple[str, ...] = ("10.0.0.2/24", "2001:db8::2/64"), gateway: str | None = "10.0.0.1",
             gateway6: str | None = "fe80::1", mtu: int | None = 1400,
             extra: tuple[Route, ...] = ()) -> InstanceMetadata:
    nic = NetworkInterface(mac=MAC0, static=True, addresses=addrs, gateway=gateway, gateway6=gateway6, mtu=mtu,
                           routes=extra)
    return InstanceMetadata("digitalocean", "1", network_interfaces=(nic,), dns_servers=("10.0.0.53",),
                            dns_search=("example.com",))


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.1)


def test_static_nic_gets_addresses_mtu_routes_and_dns(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    ctx = ctx_for(tmp_path, netns)
    sub = NetworkSubsystem()
    md = metadata(extra=(Route("10.8.0.0/16", "10.0.0.254"), Route("192.168.50.0/24")))
    out = sub.reconcile(ctx, md)
    assert out.ok, out.failures
    info = link(netns)
    assert "UP" in info["flags"] and info["mtu"] == 1400
    assert address_set(netns) == {"10.0.0.2/24", "2001:db8::2/64"}
    assert ours(netns) == {("default", "10.0.0.1"), ("default", "fe80::1"), ("10.8.0.0/16", "10.0.0.254"),
                           ("192.168.50.0/24", None)}
    onlink = next(r for r in routes(netns) if r["dst"] == "192.168.50.0/24")
    assert onlink["scope"] == "link"
    state = json.loads((tmp_path / "run/guestagent/network.json").read_text())
    assert state["addresses"] == {MAC0: ["10.0.0.2/24", "2001:db8::2/64"]}
    resolv = (tmp_path / "etc/resolv.conf").read_text()
    assert "nameserver 10.0.0.53\nsearch example.com\n" in resolv
    assert out.wake_at is not None
    again = sub.reconcile(ctx, md)
    assert again.ok and again.actions == ()
    # Metadata drops the extra routes: only those go, each with its own kind of delete.
    out = sub.reconcile(ctx, metadata())
    assert out.ok, out.failures
    assert ours(netns) == {("default", "10.0.0.1"), ("default", "fe80::1")}


def test_gateway_outside_the_prefix_is_onlink(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    out = NetworkSubsystem().reconcile(ctx_for(tmp_path, netns),
                                       metadata(("203.0.113.7/32",), gateway="203.0.113.1", gateway6=None))
    assert out.ok, out.failures
    default = next(r for r in routes(netns) if r["dst"] == "default")
    assert default["gateway"] == "203.0.113.1" and "onlink" in default.get("flags", [])


def test_a_flush_by_another_program_is_healed_by_the_next_pass(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    ctx = ctx_for(tmp_path, netns)
    sub = NetworkSubsystem()
    md = metadata(extra=(Route("10.8.0.0/16", "10.0.0.254"),))
    first = sub.reconcile(ctx, md)
    assert first.ok
    assert first.wake_at is not None and first.wake_at <= ctx.clock.now() + HEAL_INTERVAL
    wanted = ours(netns)
    _ip("-n", netns, "route", "flush", "proto", "67")
    _ip("-n", netns, "-6", "route", "flush", "proto", "67")
    assert ours(netns) == set()
    healed = sub.reconcile(ctx, md)
    assert healed.ok, healed.failures
    assert ours(netns) == wanted
    # A DHCP client restart flushes the addresses too (and the kernel their routes).
    _ip("-n", netns, "addr", "flush", "dev", NIC0, "scope", "global")
    healed = sub.reconcile(ctx, md)
    assert healed.ok, healed.failures
    assert address_set(netns) == {"10.0.0.2/24", "2001:db8::2/64"}
    assert ours(netns) == wanted


class Sampled(Pyroute2Netlink):
    """After each change, what the kernel has on the NIC (read with `ip`, not with us)."""

    samples: list[tuple[set[str], set[tuple[str, str | None]]]]

    def _sample(self) -> None:
        v4 = {a for a in address_set(self.namespace() or "") if ":" not in a}
        self.samples.append((v4, {r for r in ours(self.namespace() or "") if ":" not in (r[1] or "")}))

    def add_address(self, interface: str, address: str) -> None:
        super().add_address(interface, address)
        self._sample()

    def delete_address(self, interface: str, address: str) -> None:
        super().delete_address(interface, address)
        self._sample()

    def add_route(self, route: StaticRoute) -> None:
        super().add_route(route)
        self._sample()

    def delete_route(self, route: StaticRoute) -> None:
        super().delete_route(route)
        self._sample()


def test_an_address_change_never_leaves_the_link_without_an_address(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    assert get_sysctl(netns, f"net/ipv4/conf/{NIC0}/promote_secondaries") == "0"
    samples: list[tuple[set[str], set[tuple[str, str | None]]]] = []

    def make() -> Sampled:
        handle = Sampled(netns=netns)
        handle.samples = samples
        return handle

    ctx = context(tmp_path, make)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, metadata(("10.0.0.2/24",), gateway6=None)).ok
    samples.clear()
    # Same subnet: the new address is a secondary of the old primary.
    out = sub.reconcile(ctx, metadata(("10.0.0.3/24",), gateway="10.0.0.254", gateway6=None))
    assert out.ok, out.failures
    assert out.actions[0].startswith("turn on promote_secondaries on gannic0")
    assert get_sysctl(netns, f"net/ipv4/conf/{NIC0}/promote_secondaries") == "1"
    assert samples and all(v4 for v4, _ in samples), samples
    assert all(defaults for _, defaults in samples), samples
    assert address_set(netns) == {"10.0.0.3/24"}
    assert ours(netns) == {("default", "10.0.0.254")}


def test_ipv6_default_route_switch_and_multipath_view(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    ctx = ctx_for(tmp_path, netns)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, metadata(gateway6="fe80::1")).ok
    # The kernel merges two IPv6 defaults of one metric into one multipath route: the
    # adapter must see both next hops to remove the old one.
    handle = Pyroute2Netlink(netns=netns)
    try:
        handle.add_route(StaticRoute("::/0", NIC0, "fe80::99"))
        seen = {(r.destination, r.gateway) for r in handle.main_routes() if r.protocol == domain.NETWORK_PROTO}
        assert {("::/0", "fe80::1"), ("::/0", "fe80::99")} <= seen
        handle.delete_route(StaticRoute("::/0", NIC0, "fe80::99"))
    finally:
        handle.close()
    out = sub.reconcile(ctx, metadata(gateway6="fe80::2"))
    assert out.ok, out.failures
    assert [a for a in out.actions if "route" in a] == [
        "add route default (IPv6) via fe80::2 dev gannic0 proto 67",
        "remove route default (IPv6) via fe80::1 dev gannic0 proto 67",
    ]
    assert ("default", "fe80::2") in ours(netns) and ("default", "fe80::1") not in ours(netns)


def test_old_ipv6_address_stays_until_the_new_one_passed_dad(netns: str, tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, netns)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, metadata(("10.0.0.2/24", "2001:db8::2/64"))).ok
    wait_until(lambda: not any("tentative" in a for a in addresses(netns, "-6")))
    out = sub.reconcile(ctx, metadata(("10.0.0.2/24", "2001:db8::3/64")))
    assert out.ok
    assert address_set(netns) >= {"2001:db8::2/64", "2001:db8::3/64"}
    assert out.wake_at is not None and (out.wake_at - ctx.clock.now()).total_seconds() <= 5
    wait_until(lambda: not any("tentative" in a for a in addresses(netns, "-6")))
    out = sub.reconcile(ctx, metadata(("10.0.0.2/24", "2001:db8::3/64")))
    assert out.actions == ("remove address 2001:db8::2/64 from gannic0",)
    assert address_set(netns) == {"10.0.0.2/24", "2001:db8::3/64"}


def test_what_someone_else_made_stays(netns: str, tmp_path: Path) -> None:
    no_dad(netns)
    _ip("-n", netns, "link", "set", NIC0, "up")
    _ip("-n", netns, "addr", "add", "10.0.0.50/24", "dev", NIC0)
    _ip("-n", netns, "route", "add", "10.99.0.0/16", "via", "10.0.0.1", "dev", NIC0, "proto", "static")
    ctx = ctx_for(tmp_path, netns)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, metadata(("10.0.0.2/24",), gateway6=None)).ok
    out = sub.reconcile(ctx, metadata(("10.0.0.7/24",), gateway=None, gateway6=None))
    assert out.ok, out.failures
    assert address_set(netns) == {"10.0.0.50/24", "10.0.0.7/24"}
    assert any(r["dst"] == "10.99.0.0/16" and r.get("protocol") == "static" for r in routes(netns))
    assert ours(netns) == set()


# ---- the daemon following a DigitalOcean droplet's metadata from the simulator

DAEMON = r"""
import sys
import guestagent.services.registry as registry
from guestagent.services.network import NetworkSubsystem

# Only this subsystem: the test is about static networking following metadata.
registry.all_subsystems = lambda: [NetworkSubsystem()]
from guestagent.entrypoints.cli import main
sys.exit(main(sys.argv[1:]))
"""


def droplet(public_ip: str) -> dict[str, Any]:
    return {"instance": {"id": "4242"}, "network": {
        "interfaces": [{"mac": MAC0, "public_ip": public_ip, "ipv6": ["2001:db8::10"],
                        "ipv6_gateway": "2001:db8::1"}],
        "dns": {"nameservers": ["10.0.0.53"]},
    }}


def test_daemon_follows_a_droplets_addresses(netns: str, tmp_path: Path) -> None:
    import signal
    import sys

    guestsim = pytest.importorskip("guestsim")
    no_dad(netns)
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "agent.cfg"
    config.write_text("[DigitalOcean]\npoll_interval = 1\nlink_local = false\n")
    log = tmp_path / "daemon.log"
    with guestsim.Simulator(droplet("203.0.113.10"), platforms=("digitalocean",)) as sim, open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "daemon", "--platform", "digitalocean", "--root", str(root),
             "--config", str(config), "--metadata-url", sim.url("digitalocean"), "--netns", netns,
             "--backoff-max", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: address_set(netns) == {"203.0.113.10/20", "2001:db8::10/64"})
            wait_until(lambda: ("default", "203.0.113.1") in ours(netns))
            assert "nameserver 10.0.0.53" in (root / "etc/resolv.conf").read_text()
            sim.apply(droplet("203.0.113.20"))
            wait_until(lambda: "203.0.113.20/20" in address_set(netns) and "203.0.113.10/20" not in address_set(netns))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
