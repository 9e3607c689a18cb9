"""Routes and NICs through real rtnetlink, inside a throwaway network namespace.

Each test gets its own namespace `gat-XXXX` with two veth NICs carrying
GCE-style MACs (the kernel here has no `dummy` module). Nothing is changed
in the machine's own namespace; the namespace is deleted after each test,
also when it fails. The kernel's view is read back with `ip -j`, not with the
adapter under test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
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
from guestagent.domain.config import Config, IpForwarding, NetworkInterfaces
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.domain.platforms.gce import GceNic
from guestagent.services.context import Context
from guestagent.services.nics import NicsSubsystem
from guestagent.services.routes import RoutesSubsystem
from tests.gce_metadata import gce_md

pytestmark = pytest.mark.root

MAC0, MAC1 = "42:01:0a:80:00:02", "42:01:0a:81:00:03"
# Names no real machine uses: if a command ever escaped the namespace it would find no such NIC.
NIC0, NIC1 = "gatnic0", "gatnic1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not installed")
    name = f"gat-{secrets.token_hex(4)}"
    if _ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("ip netns add is not available here")
    try:
        _ip("-n", name, "link", "add", NIC0, "address", MAC0, "type", "veth", "peer", "name", "gatpeer0")
        _ip("-n", name, "link", "add", NIC1, "address", MAC1, "type", "veth", "peer", "name", "gatpeer1")
        _ip("-n", name, "addr", "add", "10.128.0.2/24", "dev", NIC0)
        # The primary NIC is up on a booted VM (and the kernel refuses IPv6 routes on a down link).
        _ip("-n", name, "link", "set", NIC0, "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


def local_routes(ns: str) -> list[dict[str, Any]]:
    out = []
    for family in ("-4", "-6"):
        text = _ip("-n", ns, "-j", family, "route", "show", "table", "local").stdout
        out += json.loads(text or "[]")
    return out


def route(ns: str, dst: str) -> dict[str, Any] | None:
    plain = dst.removesuffix("/32").removesuffix("/128")
    return next((r for r in local_routes(ns) if r["dst"] in (dst, plain)), None)


def proto(ns: str, dst: str) -> str | None:
    found = route(ns, dst)
    # `ip -j` leaves out the protocol when it is "boot", the default of `ip route add`.
    return None if found is None else str(found.get("protocol", "boot"))


def link_is_up(ns: str, dev: str) -> bool:
    (info,) = json.loads(_ip("-n", ns, "-j", "link", "show", dev).stdout)
    return "UP" in info["flags"]


def context(tmp_path: Path, ns: str, config: Config | None = None) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    return Context(
        config=config or Config(), fs=fs, runner=SubprocessRunner(), users=PasswdFiles(fs),
        clock=SystemClock(), netlink=lambda: Pyroute2Netlink(netns=ns), root=str(tmp_path),
    )


def metadata(fwd: tuple[str, ...] = (), fwd6: tuple[str, ...] = (), aliases: tuple[str, ...] = (),
             targets: tuple[str, ...] = ()) -> InstanceMetadata:
    return gce_md("1", network_interfaces=(
        NetworkInterface(mac=MAC0, ip="10.128.0.2"), NetworkInterface(mac=MAC1, ip="10.129.0.3"),
    ), nics=(GceNic(MAC0, forwarded_ips=fwd, forwarded_ipv6s=fwd6, ip_aliases=aliases, target_instance_ips=targets),
             GceNic(MAC1)))


def test_forwarded_routes_appear_as_local_proto_66_scope_host(netns: str, tmp_path: Path) -> None:
    out = RoutesSubsystem().reconcile(
        context(tmp_path, netns),
        metadata(fwd=("10.128.0.100",), fwd6=("2600:1900:4000::5",), aliases=("10.8.0.0/24",),
                 targets=("10.128.0.200",)),
    )
    assert out.ok, out.failures
    for dst in ("10.128.0.100", "10.8.0.0/24", "10.128.0.200"):
        found = route(netns, dst)
        assert found is not None, dst
        assert (found["type"], found["dev"], found["protocol"], found["scope"]) == ("local", NIC0, "66", "host")
    v6 = route(netns, "2600:1900:4000::5")
    assert v6 is not None
    assert (v6["type"], v6["dev"], v6["protocol"]) == ("local", NIC0, "66")


def test_routes_follow_metadata_and_foreign_ones_survive(netns: str, tmp_path: Path) -> None:
    _ip("-n", netns, "route", "add", "local", "10.9.9.9/32", "dev", NIC0, "table", "local", "proto", "static")
    _ip("-n", netns, "route", "add", "local", "10.10.0.0/24", "dev", NIC0, "table", "local", "proto", "boot")
    ctx = context(tmp_path, netns)
    sub = RoutesSubsystem()
    assert sub.reconcile(ctx, metadata(fwd=("10.128.0.100", "10.128.0.101"), fwd6=("2600:1900::5",))).ok
    assert sub.reconcile(ctx, metadata(fwd=("10.128.0.100", "10.128.0.101"), fwd6=("2600:1900::5",))).actions == ()

    out = sub.reconcile(ctx, metadata(fwd=("10.128.0.101",)))
    assert out.ok, out.failures
    assert route(netns, "10.128.0.100") is None
    assert route(netns, "2600:1900::5") is None
    assert route(netns, "10.128.0.101") is not None
    assert proto(netns, "10.9.9.9") == "static"
    assert proto(netns, "10.10.0.0/24") == "boot"
    assert proto(netns, "10.128.0.2") == "kernel"


def test_a_foreign_route_for_a_wanted_address_is_kept_not_clobbered(netns: str, tmp_path: Path) -> None:
    _ip("-n", netns, "route", "add", "local", "10.9.9.9/32", "dev", NIC0, "table", "local", "proto", "static")
    out = RoutesSubsystem().reconcile(context(tmp_path, netns), metadata(fwd=("10.9.9.9",)))
    assert out.ok, out.failures
    assert proto(netns, "10.9.9.9") == "static"


def test_custom_protocol_id(netns: str, tmp_path: Path) -> None:
    config = Config(IpForwarding=IpForwarding(ethernet_proto_id=77))
    assert RoutesSubsystem().reconcile(context(tmp_path, netns, config), metadata(fwd=("10.128.0.100",))).ok
    assert proto(netns, "10.128.0.100") == "77"


def test_secondary_nic_comes_up_and_its_dhcp_runs_in_the_namespace(netns: str, tmp_path: Path) -> None:
    # A stand-in DHCP client: it assigns an address to the interface it is given. If it
    # ran in the machine's own namespace it would fail (no gatnic1 there) and the test too.
    fake_dhcp = "ip addr add 10.129.0.3/24 dev {interface}"
    config = Config(NetworkInterfaces=NetworkInterfaces(dhcp_command=fake_dhcp))
    ctx = context(tmp_path, netns, config)
    _ip("-n", netns, "link", "set", NIC0, "down")
    sub = NicsSubsystem()
    out = sub.reconcile(ctx, metadata())
    assert out.ok, out.failures
    assert link_is_up(netns, NIC1)
    assert not link_is_up(netns, NIC0)  # the primary NIC belongs to the OS: untouched
    addrs = json.loads(_ip("-n", netns, "-j", "-4", "addr", "show", "dev", NIC1).stdout)
    assert [a["local"] for a in addrs[0]["addr_info"]] == ["10.129.0.3"]
    assert sub.reconcile(ctx, metadata()).actions == ()  # addressed and up: DHCP not run again


def test_missing_namespace_is_a_failure_and_is_not_created(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"gat-absent-{secrets.token_hex(3)}"
    out = RoutesSubsystem().reconcile(context(tmp_path, name), metadata(fwd=("10.128.0.100",)))
    assert not out.ok
    assert name in out.failures[0]
    assert not os.path.exists(f"/run/netns/{name}")


# ---- the daemon following metadata changes from the simulator

DAEMON = r"""
import sys
import guestagent.services.registry as registry
from guestagent.services.nics import NicsSubsystem
from guestagent.services.routes import RoutesSubsystem

# Only the network subsystems: this test is about routes following metadata, and must not
# depend on which other subsystems the agent registers.
registry.all_subsystems = lambda: [NicsSubsystem(), RoutesSubsystem()]
from guestagent.entrypoints.cli import main
sys.exit(main(sys.argv[1:]))
"""


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_daemon_updates_routes_when_metadata_changes(netns: str, tmp_path: Path) -> None:
    guestsim = pytest.importorskip("guestsim")
    scenario = {"network": {"interfaces": [
        {"mac": MAC0, "ip": "10.128.0.2/24", "forwarded_ips": ["10.128.0.100"], "ip_aliases": ["10.8.0.0/24"]},
        {"mac": MAC1, "ip": "10.129.0.3/24"},
    ]}}
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "daemon.log"
    with guestsim.Simulator(scenario, platforms=("gce",)) as sim, open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "daemon", "--root", str(root), "--metadata-url", sim.url("gce"),
             "--netns", netns, "--backoff-max", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: proto(netns, "10.128.0.100") == "66" and proto(netns, "10.8.0.0/24") == "66")
            assert link_is_up(netns, NIC1)
            sim.set("instance/network-interfaces/0/forwarded-ips", ["10.128.0.101"])
            wait_until(lambda: route(netns, "10.128.0.100") is None and proto(netns, "10.128.0.101") == "66")
            assert proto(netns, "10.8.0.0/24") == "66"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
