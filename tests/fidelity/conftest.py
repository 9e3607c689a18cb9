"""Fixtures for the fidelity tests: real peer agents, chrooted, against the simulator.

Every test here is marked ``fidelity``.  The tests need root, ``ip netns``, ``socat``,
``mmdebstrap`` (the first run builds a Debian rootfs, ~1 minute, cached afterwards) and
Debian's apt lists on the host; without them they skip and say which is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod

HERE = Path(__file__).parent

# Three real ed25519 public keys (private halves discarded); made once with ssh-keygen.
KEY_ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP81TfmrafmrSwm0WjAUGvvgAb8jFhtx3d9cWZObE6Hr alice@fid"
KEY_BOB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMbsHd1J3WbOwinTppc4CFgLUFMUEAgxCTD9cprzF9zB bob@fid"
KEY_CAROL = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1HHOVKA6+Z+URPuaT+vxkuQOniO4wmnOoEVgS9+N3r carol@fid"

GUEST_MAC = "42:01:0a:80:00:02"
INSTANCE_ID = "4520031799277581759"
HOSTNAME = "fidelity-vm.c.fidelity-proj.internal"


def scenario() -> dict[str, Any]:
    """The one VM every peer looks at, in the simulator's platform-neutral form."""
    return {
        "instance": {
            "name": "fidelity-vm",
            "id": INSTANCE_ID,
            "hostname": HOSTNAME,
            "zone": "us-central1-a",
        },
        "project": {"id": "fidelity-proj", "numeric_id": 123456789012},
        "users": [
            {"name": "alice", "keys": [KEY_ALICE]},
            {"name": "bob", "keys": [KEY_BOB], "scope": "project"},
        ],
        "network": {
            "interfaces": [
                {
                    "mac": GUEST_MAC,
                    "ip": "10.128.0.2/24",
                    "gateway": "10.128.0.1",
                    "forwarded_ips": ["10.128.0.100"],
                    "target_instance_ips": ["10.128.0.200"],
                    "ip_aliases": ["10.8.0.0/24"],
                }
            ]
        },
        "user_data": "#cloud-config\nfinal_message: fidelity\n",
    }


# -- prerequisites ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def fidelity_prereqs() -> None:
    if os.geteuid() != 0:
        pytest.skip("fidelity tests need root (network namespaces, chroot, mounts)")
    missing = chroot_mod.missing_tools() + netns_mod.missing_tools()
    if missing:
        pytest.skip(f"fidelity tests need these tools installed: {', '.join(missing)}")
    probe = f"gsf-probe-{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {proc.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], check=False)


@pytest.fixture(scope="session")
def rootfs_tar(fidelity_prereqs: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached Debian rootfs with the peers installed (built on first use)."""
    log = tmp_path_factory.mktemp("mmdebstrap") / "build.log"
    try:
        chroot_mod.candidate_versions(chroot_mod.DEFAULT_PACKAGES)
    except chroot_mod.ChrootError as err:
        pytest.skip(f"cannot resolve the peer packages: {err}")
    started = time.monotonic()
    tar = chroot_mod.ensure_rootfs_tar(log=log)
    took = time.monotonic() - started
    if took > 5:
        print(f"\nbuilt peer rootfs {tar.name} in {took:.0f}s")
    return tar


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fidelity")


@pytest.fixture(scope="module")
def peer_root(rootfs_tar: Path, workdir: Path) -> Iterator[chroot_mod.Chroot]:
    """A fresh, writable copy of the rootfs for one test module's peers."""
    with chroot_mod.unpacked(rootfs_tar, workdir, hostname="fidelity-vm") as root:
        hosts = root.read("/etc/hosts") if root.path("/etc/hosts").exists() else ""
        # How GCE images resolve the metadata server's name (cloud-init uses it).
        root.write("/etc/hosts", hosts + "169.254.169.254 metadata.google.internal\n")
        yield root


@pytest.fixture(scope="module")
def metadata_net(fidelity_prereqs: None, workdir: Path) -> Iterator[netns_mod.MetadataNetwork]:
    netns_mod.sweep_stale()  # namespaces of an earlier, killed run
    nic = netns_mod.GuestNic(mac=GUEST_MAC, cidr="10.128.0.2/24", gateway_cidr="10.128.0.1/24")
    with netns_mod.MetadataNetwork(workdir / "net", nic=nic) as net:
        yield net


def start_simulator(platforms: tuple[str, ...], scn: dict[str, Any] | None = None) -> Any:
    """A running ``guestsim.Simulator`` on the host's loopback, or a skip if it lacks one."""
    try:
        from guestsim.sim import Simulator
    except ImportError as err:  # the simulator is being built alongside these tests
        pytest.skip(f"guestsim.Simulator not importable: {err}")
    sim = Simulator(scn or scenario(), platforms=platforms, host="127.0.0.1", port=0)
    return sim.start()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def copy_into(root: chroot_mod.Chroot, src: Path, inside: str) -> None:
    dest = root.path(inside)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
