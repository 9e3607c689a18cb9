"""DigitalOcean's link-local bootstrap through real rtnetlink, between two throwaway namespaces.

Layout (both namespaces made here, deleted after each test, also when it fails):

    gdo-guest-PID-XXXX                      gdo-meta-PID-XXXX
    eth0 04:01:2a:0f:2a:01  <--- veth --->  gw0  169.254.169.254/16, 192.0.2.1/24
    down, no address at all                 a small HTTP server on 169.254.169.254:80
                                            serving a fixed v1.json

The guest starts like a droplet at boot: no DHCP, no address, the link down.
The provider runs in the guest namespace (a child started with `ip netns exec`,
so its HTTP requests can only leave through eth0) with a Pyroute2Netlink for
that namespace. Nothing here has a default route or forwarding, so no packet
can leave the pair; the machine's own namespace is never used for a request.

The server is our own few lines rather than `guestsim serve`: the simulator
is meant to listen on loopback only, and here it would have to bind
169.254.169.254. It records each client address, which shows which source
address (the temporary one or the droplet's own) a request came from.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.domain.platforms.digitalocean import link_local_address

pytestmark = pytest.mark.root

MAC = "04:01:2a:0f:2a:01"
BOOT = link_local_address(MAC)
BOOT_IP = BOOT.split("/")[0]
OWN = "192.0.2.10/24"
REPO = Path(__file__).resolve().parents[2]

DOCUMENT = {
    "droplet_id": 2756294,
    "hostname": "sample-droplet",
    "public_keys": [],
    "region": "nyc3",
    "interfaces": {
        "public": [
            {
                "mac": MAC,
                "type": "public",
                "ipv4": {"ip_address": "192.0.2.10", "netmask": "255.255.255.0", "gateway": "192.0.2.1"},
            }
        ],
        "private": [],
    },
    "dns": {"nameservers": ["192.0.2.53"]},
    "features": {"dhcp_enabled": False},
}

SERVER = r"""
import http.server, sys
document, log = open(sys.argv[1], "rb").read(), sys.argv[2]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as out:
            out.write(f"{self.client_address[0]} {self.path}\n")
        if self.path != "/metadata/v1.json":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(document)))
        self.end_headers()
        self.wfile.write(document)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("169.254.169.254", 80), Handler)
print("ready", flush=True)
server.serve_forever()
"""

# Runs inside the guest namespace. Refuses to do anything unless it really is there.
CLIENT = r"""
import json, os, subprocess, sys
from guestagent.adapters.platforms.digitalocean import DigitalOceanMetadata
from guestagent.adapters.pyroute2_netlink import Pyroute2Netlink
from guestagent.ports.metadata import MetadataUnavailable

ns, scenario = sys.argv[1], sys.argv[2]
if os.stat("/proc/self/ns/net").st_ino != os.stat(f"/run/netns/{ns}").st_ino:
    sys.exit("not in the guest namespace: refusing to send anything")

def eth0():
    nl = Pyroute2Netlink(netns=ns)
    try:
        link = next(l for l in nl.links() if l.name == "eth0")
        return {"up": link.up, "ipv4": list(link.ipv4)}
    finally:
        nl.close()

out = {}
def source(**kwargs):
    return DigitalOceanMetadata(request_timeout=(5.0, 10.0), **kwargs)

if scenario == "lifecycle":
    # Without netlink (a sandbox root) nothing is added: the droplet cannot reach the service.
    bare = source()
    try:
        bare.get()
        out["without_netlink"] = "answered"
    except MetadataUnavailable as exc:
        out["without_netlink"] = str(exc)
    bare.close()

do = source(netlink=lambda: Pyroute2Netlink(netns=ns))
out["first"] = do.get().metadata.instance_id
out["after_first"] = eth0()
if scenario == "lifecycle":
    # What the static network configuration does: the droplet's own address, and its
    # network reaching the service (here a host route through the "gateway").
    subprocess.run(["ip", "addr", "add", sys.argv[3], "dev", "eth0"], check=True)
    subprocess.run(["ip", "route", "add", "169.254.169.254/32", "via", "192.0.2.1", "dev", "eth0"], check=True)
    out["second"] = do.get().metadata.hostname
    out["after_second"] = eth0()
    out["third"] = do.get().metadata.hostname
do.close()
out["after_close"] = eth0()
print(json.dumps(out))
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class DropletNet:
    def __init__(self, workdir: Path) -> None:
        suffix = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.guest = f"gdo-guest-{suffix}"
        self.meta = f"gdo-meta-{suffix}"
        self.workdir = workdir
        self.log = workdir / "requests.log"
        self.created: list[str] = []
        self.server: subprocess.Popen[str] | None = None

    def create(self) -> None:
        for ns in (self.meta, self.guest):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # Made inside the guest namespace, so the machine's own never holds either end.
        _ip("-n", self.guest, "link", "add", "eth0", "address", MAC, "type", "veth", "peer", "name", "gw0")
        _ip("-n", self.guest, "link", "set", "gw0", "netns", self.meta)
        _ip("-n", self.meta, "addr", "add", "169.254.169.254/16", "dev", "gw0")
        _ip("-n", self.meta, "addr", "add", "192.0.2.1/24", "dev", "gw0")
        _ip("-n", self.meta, "link", "set", "gw0", "up")
        self._assert_isolated()
        document = self.workdir / "v1.json"
        document.write_text(json.dumps(DOCUMENT))
        self.log.write_text("")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.meta, sys.executable, "-c", SERVER, str(document), str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own group: stopped by its PID, nothing else touched
        )
        assert self.server.stdout is not None
        ready, _, _ = select.select([self.server.stdout], [], [], 60)
        if not ready or self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("the metadata server in the meta namespace did not start")

    def _assert_isolated(self) -> None:
        for ns in (self.meta, self.guest):
            for family in ("-4", "-6"):
                assert not _ip(family, "-n", ns, "route", "show", "default").stdout.strip()
        assert '"169.254.169.254"' not in _ip("-j", "addr", "show").stdout, "metadata address on the host"

    def close(self) -> None:
        if self.server is not None:
            if self.server.poll() is None:
                os.killpg(self.server.pid, signal.SIGTERM)
                try:
                    self.server.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.server.pid, signal.SIGKILL)
                    self.server.wait()
            if self.server.stdout is not None:
                self.server.stdout.close()
            self.server = None
        for ns in reversed(self.created):
            _ip("netns", "delete", ns, check=False)  # takes the veth pair with it
        self.created.clear()

    def run_client(self, scenario: str) -> dict[str, Any]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.guest, sys.executable, "-c", CLIENT, self.guest, scenario, OWN],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def clients(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines()]

    def guest_ipv4(self) -> list[str]:
        # `ip -4` leaves out a link without IPv4 addresses altogether.
        links = json.loads(_ip("-n", self.guest, "-j", "-4", "addr", "show", "dev", "eth0").stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for info in links for a in info.get("addr_info", [])]


@pytest.fixture
def droplet(tmp_path: Path) -> Iterator[DropletNet]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not installed")
    net = DropletNet(tmp_path)
    try:
        try:
            net.create()
        except subprocess.CalledProcessError as exc:
            if "netns add" in " ".join(exc.cmd) and not net.created:
                pytest.skip(f"ip netns add is not available here: {exc.stderr}")
            raise
        yield net
    finally:
        net.close()


def test_the_temporary_address_reaches_the_service_until_the_own_one_is_up(droplet: DropletNet) -> None:
    assert droplet.guest_ipv4() == []
    result = droplet.run_client("lifecycle")
    # Without the bootstrap a droplet has no way to the service at all.
    assert "unreachable" in result["without_netlink"]
    # The provider brought eth0 up and put the MAC-derived link-local address on it.
    assert result["first"] == "2756294"
    assert result["after_first"] == {"up": True, "ipv4": [BOOT_IP]}
    # Once the droplet's own address is up, the next answer removes the temporary one...
    assert result["second"] == "sample-droplet"
    assert result["after_second"] == {"up": True, "ipv4": ["192.0.2.10"]}
    # ... and the service is still reached, now from the droplet's own address.
    assert result["third"] == "sample-droplet"
    assert droplet.clients() == [BOOT_IP, "192.0.2.10", "192.0.2.10"]
    assert droplet.guest_ipv4() == [OWN]


def test_close_removes_the_temporary_address(droplet: DropletNet) -> None:
    result = droplet.run_client("close")
    assert result["after_first"] == {"up": True, "ipv4": [BOOT_IP]}
    assert result["after_close"] == {"up": True, "ipv4": []}
    assert droplet.clients() == [BOOT_IP]
    assert droplet.guest_ipv4() == []
