"""A private pair of network namespaces in which a guest can reach "the metadata server".

Layout (both namespaces are created here and deleted again by :meth:`MetadataNetwork.close`)::

    gsf-guest-XXXX                          gsf-meta-XXXX
    eth0 42:01:0a:80:00:02  <--- veth --->  gw0
    10.128.0.2/24                           10.128.0.1/24, 169.254.169.254/32
    169.254.169.254/32 dev eth0             socat TCP-LISTEN 169.254.169.254:80
                                              -> UNIX socket in the work dir
                                                 -> (host netns) socat -> 127.0.0.1:SIMPORT

Why this shape:

* The metadata addresses (169.254.169.254 and friends) must never be reached from the
  machine's own network namespace: the machine may itself run on a cloud whose real
  metadata server answers there.  They exist only on ``gw0`` inside the meta namespace,
  and neither namespace has a default route or forwarding, so nothing can leave.
* The simulator stays an ordinary in-process object of the test (``sim.set(...)``,
  ``sim.guest_attributes()``) listening on the host's loopback.  A UNIX socket is the
  bridge: the file system is shared across network namespaces, TCP is not.
* The guest NIC is a veth end with a GCE-style MAC, because the kernel here has no
  ``dummy`` module and the agents find their NIC by the MAC the metadata lists.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

#: Addresses that must only ever exist inside a namespace made here.
METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254", "168.63.129.16")

NS_PREFIX = "gsf-"

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class NetnsError(RuntimeError):
    """Setting up or using the private namespaces failed."""


def missing_tools() -> list[str]:
    """Names of the programs this module needs that are not installed."""
    return [tool for tool in ("ip", "socat") if shutil.which(tool) is None]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class GuestNic:
    """The guest's one NIC, as the GCE scenario describes it."""

    mac: str = "42:01:0a:80:00:02"
    cidr: str = "10.128.0.2/24"
    gateway_cidr: str = "10.128.0.1/24"
    name: str = "eth0"

    @property
    def ip(self) -> str:
        return self.cidr.split("/", 1)[0]


class MetadataNetwork:
    """Two fresh network namespaces, a veth between them, and a forward to a simulator.

    Use as a context manager; everything it made is removed on exit, also after an error.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nic: GuestNic | None = None,
        metadata_ip: str = "169.254.169.254",
        metadata_port: int = 80,
    ) -> None:
        self.workdir = workdir
        self.nic = nic or GuestNic()
        self.metadata_ip = metadata_ip
        self.metadata_port = metadata_port
        # The creating PID is part of the name so that a later run can tell a namespace
        # left behind by a killed test run (its creator is gone) from a live one.
        suffix = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.meta_ns = f"{NS_PREFIX}meta-{suffix}"
        self.guest_ns = f"{NS_PREFIX}guest-{suffix}"
        self.socket_path = workdir / f"meta-{suffix}.sock"
        self._created: list[str] = []
        self._meta_proxy: subprocess.Popen[bytes] | None = None
        self._host_proxy: subprocess.Popen[bytes] | None = None
        self._target: tuple[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> MetadataNetwork:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        missing = missing_tools()
        if missing:
            raise NetnsError(f"missing tools: {', '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ns in (self.meta_ns, self.guest_ns):
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        nic = self.nic
        # Create the pair inside the guest namespace so the host namespace never holds
        # either end, not even for a moment, then move the peer to the meta namespace.
        _ip(
            "-n",
            self.guest_ns,
            "link",
            "add",
            nic.name,
            "address",
            nic.mac,
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
        )
        _ip("-n", self.guest_ns, "link", "set", "gw0", "netns", self.meta_ns)
        _ip("-n", self.meta_ns, "addr", "add", nic.gateway_cidr, "dev", "gw0")
        _ip("-n", self.meta_ns, "addr", "add", f"{self.metadata_ip}/32", "dev", "gw0")
        _ip("-n", self.meta_ns, "link", "set", "gw0", "up")
        _ip("-n", self.guest_ns, "addr", "add", nic.cidr, "dev", nic.name)
        _ip("-n", self.guest_ns, "link", "set", nic.name, "up")
        # An on-link host route, not a default route: the guest can reach the metadata
        # address and the gateway, and nothing else exists for it.
        _ip("-n", self.guest_ns, "route", "add", f"{self.metadata_ip}/32", "dev", nic.name)
        self._assert_isolated()
        self._start_meta_proxy()

    def close(self) -> None:
        for proc in (self._host_proxy, self._meta_proxy):
            if proc is not None:
                _stop(proc)
        self._host_proxy = self._meta_proxy = None
        for ns in reversed(self._created):
            # Deleting a namespace destroys the veth pair with it.
            _ip("netns", "delete", ns, check=False)
        self._created.clear()
        self.socket_path.unlink(missing_ok=True)

    # -- forwarding ------------------------------------------------------------------------

    def _start_meta_proxy(self) -> None:
        listen = f"TCP-LISTEN:{self.metadata_port},bind={self.metadata_ip},fork,reuseaddr"
        self._meta_proxy = subprocess.Popen(
            ["ip", "netns", "exec", self.meta_ns, "socat", listen, f"UNIX-CONNECT:{self.socket_path}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own process group: socat forks one child per connection, and stopping
            # the group stops those too, without touching anything we did not start.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._wait_listening(self.meta_ns, self.metadata_port)

    def forward_to(self, host: str, port: int) -> None:
        """(Re)point the metadata address at a simulator listening on the host's loopback."""
        if host not in ("127.0.0.1", "::1", "localhost"):
            # The bridge must only ever lead to our own simulator on loopback.
            raise NetnsError(f"refusing to forward to non-loopback host {host!r}")
        if self._target == (host, port) and self._host_proxy is not None:
            return
        if self._host_proxy is not None:
            _stop(self._host_proxy)
        self.socket_path.unlink(missing_ok=True)
        target = f"TCP6:[{host}]:{port}" if ":" in host else f"TCP4:{host}:{port}"
        self._host_proxy = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.socket_path},fork,mode=600", target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._target = (host, port)
        deadline = time.monotonic() + 5
        while not self.socket_path.exists():
            if time.monotonic() > deadline or self._host_proxy.poll() is not None:
                raise NetnsError("socat did not create the forwarding socket")
            time.sleep(0.02)

    def _wait_listening(self, ns: str, port: int) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = _ip("netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}", check=False)
            if out.stdout.strip():
                return
            time.sleep(0.05)
        raise NetnsError(f"nothing listens on port {port} in {ns}")

    # -- inspection ------------------------------------------------------------------------

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run in the guest namespace."""
        return ["ip", "netns", "exec", self.guest_ns, *argv]

    def guest_routes(self, *args: str) -> list[dict[str, Any]]:
        """``ip -j route show ARGS`` in the guest namespace, parsed."""
        out = _ip("-j", "-n", self.guest_ns, "route", "show", *args)
        text = out.stdout.strip()
        if not text:
            return []
        routes: list[dict[str, Any]] = json.loads(text)
        return routes

    def _assert_isolated(self) -> None:
        for ns in (self.meta_ns, self.guest_ns):
            for family in ("-4", "-6"):
                out = _ip(family, "-n", ns, "route", "show", "default")
                if out.stdout.strip():
                    raise NetnsError(f"{ns} unexpectedly has a default route: {out.stdout}")
        host = _ip("-j", "addr", "show").stdout
        for addr in METADATA_ADDRESSES:
            if f'"{addr}"' in host:
                raise NetnsError(f"{addr} is configured in the host namespace; refusing")


def die_with_parent() -> None:
    """In a child before exec: get SIGKILL if the test process dies.

    Fixtures clean up after failing tests, but not after a SIGKILLed pytest (a CI
    timeout); this makes the helpers we started go with it instead of lingering.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def sweep_stale() -> list[str]:
    """Delete namespaces made by this module in a process that no longer exists.

    Only names of the form ``gsf-meta-PID-XXXX`` / ``gsf-guest-PID-XXXX`` whose PID is
    gone are touched, so a concurrent test run's namespaces are left alone.
    """
    out = _ip("netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{NS_PREFIX}(?:meta|guest)-(\d+)-[0-9a-f]+", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """Stop a process group this module started (its leader is ``proc``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
