"""Debian's cloud-init 22.4.2 SmartOS datasource reads the simulator's SmartOS host over a
serial line, and agrees with our provider on the same VM.

The line is what a KVM/bhyve guest has: a pty (socat, on this machine) joined to the
simulator's unix socket, so cloud-init's JoyentMetadataLegacySerialClient opens a real
terminal device with pyserial, locks it, flushes it with a newline, negotiates V2 and sends
CRC-checked frames. The chroot's /dev is private, so the pty is bind-mounted to a file in
the rootfs inside a mount namespace of the probe's own (gone when it ends) and named in
cloud-init's `serial_device` setting. DMI says `SmartDC HVM`, which is what makes cloud-init
believe it runs on SmartOS KVM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod
from guestsim.netns import die_with_parent

from .conftest import KEY_ALICE, KEY_BOB, scenario, start_simulator

pytestmark = [
    pytest.mark.fidelity,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.xdist_group("fidelity-cloud-init-smartos"),
]

PROBE = "/root/smartos_probe.py"
# Where the pty appears inside the chroot (a file in the rootfs, bind-mounted over).
SERIAL_INSIDE = "/var/lib/guestsim-ttyS1"
DMI = {"product_name": "SmartDC HVM", "sys_vendor": "Joyent", "bios_vendor": "Joyent"}
SCENARIO_KEYS = sorted(" ".join(k.split()[:2]) for k in (KEY_ALICE, KEY_BOB))

# Runs INSIDE the chroot with Debian's python3 and cloud-init: the datasource class as
# cloud-init's init stage makes it, pointed at the pty. Prints one JSON object.
PROBE_SOURCE = """
import json, logging, sys, traceback
from cloudinit import distros, helpers
from cloudinit.sources import DataSourceSmartOS as smartos

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
cfg = {"datasource": {"SmartOS": {"serial_device": sys.argv[1], "serial_timeout": 20}},
       "datasource_list": ["SmartOS", "None"]}
paths = helpers.Paths({"cloud_dir": "/var/lib/cloud", "run_dir": "/run/cloud-init"})
distro = distros.fetch("debian")("debian", {}, paths)
out = {}
try:
    ds = smartos.DataSourceSmartOS(cfg, distro, paths)
    out["client"] = repr(ds.md_client)
    out["found"] = bool(ds.get_data())
except Exception:
    out["found"] = False
    out["error"] = traceback.format_exc()
if out["found"]:
    out["instance_id"] = ds.get_instance_id()
    host = ds.get_hostname(fqdn=False)
    out["hostname"] = getattr(host, "hostname", host)
    out["keys"] = sorted({" ".join(k.split()[:2]) for k in ds.get_public_ssh_keys() or []})
    out["network_config"] = ds.network_config
    out["userdata"] = ds.get_userdata_raw()
json.dump(out, sys.stdout, default=str)
"""


@pytest.fixture(scope="module")
def smartos_root(request: pytest.FixtureRequest) -> chroot_mod.Chroot:
    """The fidelity chroot, or a skip saying why it cannot be had here."""
    try:
        root: chroot_mod.Chroot = request.getfixturevalue("peer_root")
    except chroot_mod.ChrootError as err:
        pytest.skip(f"the cloud-init chroot cannot be built here: {str(err)[:300]}")
    return root


@pytest.fixture(scope="module")
def host(smartos_root: chroot_mod.Chroot, metadata_net: netns_mod.MetadataNetwork) -> Iterator[Any]:
    if shutil.which("socat") is None:
        pytest.skip("needs socat (Debian package socat)")
    sim = start_simulator(("smartos",), scenario())
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def serial_line(host: Any, tmp_path: Path) -> Iterator[str]:
    """A pty joined to the simulator's socket; yields the pty's real path (/dev/pts/N)."""
    link = tmp_path / "ttyS1"
    proc = subprocess.Popen(
        ["socat", f"PTY,link={link},raw,echo=0", f"UNIX-CONNECT:{host.serial_socket('smartos')}"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    keep = -1
    try:
        deadline = time.monotonic() + 30
        while not link.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if not link.exists():
            pytest.fail(f"socat made no pty: {proc.stderr.read().decode() if proc.stderr else ''}")
        # Held open so the line stays up while cloud-init opens and closes it.
        keep = os.open(link, os.O_RDWR | os.O_NOCTTY)
        yield os.path.realpath(link)
    finally:
        if keep >= 0:
            os.close(keep)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_probe(
    root: chroot_mod.Chroot, net: netns_mod.MetadataNetwork, pty: str
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    root.write(PROBE, PROBE_SOURCE)
    target = root.path(SERIAL_INSIDE)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("")
    inner = root.command(["python3", PROBE, SERIAL_INSIDE], netns=net.guest_ns, dmi=DMI)
    # The bind mount exists only in this new mount namespace (and the ones made from it).
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$1" "$2" && shift 2 && exec "$@"',
        "gsf-serial",
        pty,
        str(target),
        *inner,
    ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result = {"found": False, "error": f"probe exited {proc.returncode}"}
    return result, proc


def _explain(result: dict[str, Any], proc: subprocess.CompletedProcess[str], sim: Any) -> str:
    asked = [f"{r['method']} {r['path']} -> {r['status']}" for r in sim.requests()]
    return (
        json.dumps(result, indent=1, default=str)
        + "\nhost saw:\n"
        + "\n".join(asked)
        + "\ncloud-init log (tail):\n"
        + proc.stderr[-4000:]
    )


def test_cloud_init_reads_the_vm_over_the_serial_line(
    smartos_root: chroot_mod.Chroot, metadata_net: netns_mod.MetadataNetwork, host: Any, serial_line: str
) -> None:
    host.clear_requests()
    result, proc = run_probe(smartos_root, metadata_net, serial_line)
    why = _explain(result, proc, host)
    assert result.get("found"), why
    assert "JoyentMetadataLegacySerialClient" in result["client"], why
    assert result["instance_id"] == host.get("sdc:uuid", platform="smartos"), why
    assert result["hostname"] == "fidelity-vm", why
    assert result["keys"] == SCENARIO_KEYS, why
    assert result["userdata"] is None, why  # cloud-init's user data is the cloud-init:user-data key
    nic = result["network_config"]["config"][0]
    assert (nic["mac_address"], nic["name"]) == ("42:01:0a:80:00:02", "net0"), why
    # cloud-init spoke the protocol as the host expects: reset, negotiate, V2 frames only.
    methods = [r["method"] for r in host.requests()]
    assert "NEWLINE" in methods and "NEGOTIATE" in methods, why
    assert {"GET", "KEYS"} <= set(methods), why
    assert all(r["status"] in (200, 400, 404) for r in host.requests()), why


def test_cloud_init_and_our_provider_agree(
    smartos_root: chroot_mod.Chroot, metadata_net: netns_mod.MetadataNetwork, host: Any, serial_line: str
) -> None:
    from guestagent.adapters.platforms.smartos import SmartOsMetadata

    result, proc = run_probe(smartos_root, metadata_net, serial_line)
    assert result.get("found"), _explain(result, proc, host)
    ours = SmartOsMetadata(serial_line).get().metadata
    assert ours.instance_id == result["instance_id"]
    assert ours.hostname == result["hostname"]
    assert sorted(" ".join(k.line.split()[:2]) for k in ours.ssh_keys) == result["keys"]
    assert {k.user for k in ours.ssh_keys} == {"root"}
