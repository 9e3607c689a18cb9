"""Disks on loop devices: the resource disk formatted and mounted, a disk with data left
alone, a swap file made, and root grow, with the real tools (sfdisk, ntfsls, mkfs, mount,
growpart, xfs_growfs, resize2fs).

Every device is a loop device on an image file this test makes, and the agent sees only
those: it runs with a root directory whose sys/block and dev hold links to them alone, so
no real disk of this machine is ever in its view. Every pass runs in a child process
inside a private mount namespace (`unshare --mount`): the mounts it makes never appear on
this machine and vanish with the child. swapon (swap is not namespaced) is refused by the
child's runner. Loop devices are always detached, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

AZURE_LABEL = "Temporary Storage"
WARNING = "DATALOSS_WARNING_README.txt"

# The child: builds the agent's view of the machine under ROOT (inside the namespace),
# runs the disks subsystem with the real adapters, and reports what it saw as JSON.
PROGRAM = r"""
import json, logging, os, stat, subprocess, sys
from guestagent.adapters.block_devices import SysfsBlockDevices
from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config, ResourceDisk, RootGrow
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.disks import DisksSubsystem

spec = json.loads(sys.argv[1])
root = spec["root"]
os.makedirs(root, exist_ok=True)
if spec.get("mount_root"):
    source, fstype = spec["mount_root"]
    subprocess.run(["mount", "-t", fstype, source, root], check=True)
for name in spec["disks"]:
    os.makedirs(f"{root}/sys/block", exist_ok=True)
    os.symlink(f"/sys/block/{name}", f"{root}/sys/block/{name}")
    os.makedirs(f"{root}/dev", exist_ok=True)
    for dev in [name] + [f"{name}p{n}" for n in range(1, 5)]:
        os.symlink(f"/dev/{dev}", f"{root}/dev/{dev}")
if spec.get("link"):
    os.makedirs(f"{root}/dev/disk/azure", exist_ok=True)
    os.symlink(f"../../{spec['link']}", f"{root}/dev/disk/azure/resource")
os.makedirs(f"{root}/etc", exist_ok=True)
with open(f"{root}/etc/fstab", "w") as handle:
    handle.write("# <file system> <mount point> <type> <options> <dump> <pass>\nLABEL=rootfs / ext4 defaults 0 1\n")


class Runner:
    # The real runner; `hide` programs look absent, `refuse` ones are not run.
    def __init__(self, hide, refuse):
        self.inner, self.hide, self.refuse = SubprocessRunner(), set(hide), set(refuse)
        self.ran = []

    def which(self, program):
        return None if program in self.hide else self.inner.which(program)

    def run(self, argv, **kwargs):
        self.ran.append(argv[0])
        if argv[0] in self.refuse:
            return CommandResult(tuple(argv), 126, "", f"{argv[0]}: refused by the test")
        if argv[0] in self.hide:
            return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
        return self.inner.run(argv, **kwargs)


class Notes(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


notes = Notes()
log = logging.getLogger("guestagent")
log.addHandler(notes)
log.setLevel(logging.INFO)
config = Config(ResourceDisk=ResourceDisk(**spec.get("resource", {})), RootGrow=RootGrow(**spec.get("rootgrow", {})))
fs = LocalFileSystem(root)
runner = Runner(spec.get("hide", ()), spec.get("refuse", ("swapon", "swapoff")))
block = SysfsBlockDevices(root, runner)
ctx = Context(config=config, fs=fs, runner=runner, users=PasswdFiles(fs), clock=SystemClock(),
              root=root, owns_machine=True, log=log)
subsystem = DisksSubsystem(block)
metadata = InstanceMetadata(spec.get("platform", "azure"), "vm-1")
passes = []
for step in spec.get("passes", [{}, {}]):
    for path in step.get("remove", ()):
        fs.remove(path)
    runner.ran = []
    outcome = subsystem.reconcile(ctx, metadata)
    passes.append({"actions": list(outcome.actions), "failures": list(outcome.failures), "ran": runner.ran})

mount_point = fs.host_path(config.ResourceDisk.mount_point)
found = subprocess.run(["findmnt", "-J", "-o", "SOURCE,TARGET,FSTYPE,OPTIONS", "--mountpoint", mount_point],
                       capture_output=True, text=True)
swapfile = os.path.join(mount_point, "swapfile")
swap = None
if os.path.exists(swapfile):
    st = os.lstat(swapfile)
    probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", swapfile], capture_output=True, text=True)
    swap = {"mode": stat.S_IMODE(st.st_mode), "size": st.st_size, "type": probe.stdout.strip()}
fsstat = os.statvfs(root)
print(json.dumps({
    "passes": passes,
    "mounted": json.loads(found.stdout)["filesystems"] if found.returncode == 0 else [],
    "fstab": fs.read_text("/etc/fstab"),
    "warning": os.path.exists(os.path.join(mount_point, "DATALOSS_WARNING_README.txt")),
    "swap": swap,
    "record": fs.read_text("/run/guestagent/rootgrow"),
    "root_fs_bytes": fsstat.f_blocks * fsstat.f_frsize,
    "log": notes.lines,
}))
"""


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=300, check=check)


def need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mkfs and mounts in a private mount namespace")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (./dev setup installs them)")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support (/dev/loop-control)")


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


class Loops:
    """Loop devices this test attached; detach_all() in a finally."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    def attach(self, image: Path, partitions: int) -> str:
        device = sh("losetup", "--find", "--show", "--partscan", str(image)).stdout.strip()
        self.devices.append(device)
        assert device.startswith("/dev/loop"), device
        if partitions:
            self.wait_partitions(device, partitions)
        return device

    def wait_partitions(self, device: str, count: int) -> None:
        """Some kernels do not scan a loop device's table at attach: partx adds the partitions."""
        name = os.path.basename(device)
        deadline = time.monotonic() + 30
        while not all(os.path.exists(f"/sys/block/{name}/{name}p{n}") and os.path.exists(f"{device}p{n}")
                      for n in range(1, count + 1)):
            sh("partx", "-a", device, check=False)
            assert time.monotonic() < deadline, f"partitions of {device} did not appear"
            time.sleep(0.2)

    def detach_all(self) -> None:
        for device in reversed(self.devices):
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60, check=False)


@pytest.fixture
def loops() -> Iterator[Loops]:
    attached = Loops()
    try:
        yield attached
    finally:
        attached.detach_all()


def run_agent(spec: dict[str, Any]) -> dict[str, Any]:
    """One child in its own mount namespace; its mounts die with it."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", PROGRAM, json.dumps(spec)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    # Nothing the child mounted is visible here.
    assert spec["root"] not in Path("/proc/self/mountinfo").read_text()
    return result


def azure_disk(tmp_path: Path, loops: Loops, *, size: str = "64M", files: dict[str, str] | None = None) -> str:
    """A disk as Azure hands it over: MBR, one NTFS partition 'Temporary Storage' holding
    the warning file (and whatever `files` adds). Written with ntfs-3g's tools, unmounted."""
    image = tmp_path / "resource.img"
    sh("truncate", "-s", size, str(image))
    sh("sfdisk", "--quiet", str(image), stdin="label: dos\n,,7\n")
    device = loops.attach(image, 1)
    part = device + "p1"
    sh("mkfs.ntfs", "-Q", "-q", "-L", AZURE_LABEL, part)
    content = {WARNING: "This is a temporary disk.\n", **(files or {})}
    for name, text in content.items():
        source = tmp_path / f"ntfs-{len(name)}-{abs(hash(name))}"
        source.write_text(text)
        sh("ntfscp", part, str(source), name)
    return device


def probe(device: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", device, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# ---------------------------------------------------------------------------- resource disk


def test_the_platforms_resource_disk_is_formatted_and_mounted(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ntfs", "ntfscp", "ntfsls", "mkfs.ext4", "blkid", "findmnt")
    device = azure_disk(tmp_path, loops)
    name = os.path.basename(device)
    root = tmp_path / "root"
    result = run_agent({"root": str(root), "mount_root": ["tmpfs", "tmpfs"], "disks": [name], "link": name,
                        "rootgrow": {"enabled": False}})
    first, second = result["passes"]
    assert first["failures"] == [], result["log"]
    changes = [r for r in first["ran"] if r in ("sfdisk", "mkfs.ext4", "mount")]
    assert changes[0] == "sfdisk" and changes[-2:] == ["mkfs.ext4", "mount"], first["ran"]
    assert any("mkfs.ext4" in a for a in first["actions"])
    (mounted,) = result["mounted"]
    assert mounted["fstype"] == "ext4" and mounted["target"] == str(root / "mnt/resource")
    assert result["warning"] is True
    sig = probe(device + "p1")
    assert sig["TYPE"] == "ext4" and sig["LABEL"] == "ga-resource"
    assert sig["PART_ENTRY_NAME"] == "guestagent-resource" and probe(device)["PTTYPE"] == "gpt"
    fstab = result["fstab"]
    assert fstab.startswith("# <file system>")  # the file's own lines kept
    assert f"UUID={sig['UUID']} /mnt/resource ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2" in fstab
    # Idempotent: the second pass finds its own mounted disk and does nothing.
    assert second == {"actions": [], "failures": [], "ran": second["ran"]}
    assert not {"sfdisk", "mkfs.ext4", "mount"} & set(second["ran"])


def test_found_without_the_link_as_the_only_such_disk_and_remounted_later(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ntfs", "ntfscp", "ntfsls", "mkfs.xfs", "blkid", "findmnt")
    device = azure_disk(tmp_path, loops, size="320M")  # XFS needs 300 MB
    name = os.path.basename(device)
    spec = {"root": str(tmp_path / "root"), "mount_root": ["tmpfs", "tmpfs"], "disks": [name],
            "rootgrow": {"enabled": False},
            "resource": {"filesystem": "xfs", "mount_point": "/mnt", "mount_options": "nodev,nosuid"}}
    result = run_agent(spec)
    assert result["passes"][0]["failures"] == [], result["log"]
    (mounted,) = result["mounted"]
    assert mounted["fstype"] == "xfs" and {"nodev", "nosuid"} <= set(mounted["options"].split(","))
    assert "nodev,nosuid,nofail,x-systemd.device-timeout=30s" in result["fstab"]
    # Next boot (a new namespace: nothing mounted): the agent's disk is only mounted again.
    again = run_agent(spec)
    first = again["passes"][0]
    assert first["failures"] == [] and "mount" in first["ran"]
    assert not [r for r in first["ran"] if r.startswith(("mkfs", "sfdisk"))]
    assert again["mounted"][0]["fstype"] == "xfs"


def test_a_disk_holding_data_is_never_formatted(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ntfs", "ntfscp", "ntfsls", "mkfs.ext4", "blkid")
    device = azure_disk(tmp_path, loops, files={"notes.txt": "someone's work\n"})
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": ["tmpfs", "tmpfs"], "disks": [name],
                        "link": name, "rootgrow": {"enabled": False}})
    for one in result["passes"]:
        assert one["actions"] == [] and one["failures"] == []
        assert not {"sfdisk", "mkfs.ext4", "mount"} & set(one["ran"])
    assert any("never formatted" in line for line in result["log"])
    sig = probe(device + "p1")
    assert sig["TYPE"] == "ntfs" and sig["LABEL"] == "Temporary\\ Storage"
    assert "notes.txt" in sh("ntfsls", device + "p1").stdout


def test_without_ntfsls_the_disk_cannot_be_proven_empty(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ntfs", "ntfscp", "blkid")
    device = azure_disk(tmp_path, loops)
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": ["tmpfs", "tmpfs"], "disks": [name],
                        "link": name, "rootgrow": {"enabled": False}, "hide": ["ntfsls"], "passes": [{}]})
    assert result["passes"][0]["actions"] == []
    assert any("cannot prove" in line and "ntfs-3g" in line for line in result["log"])
    assert probe(device + "p1")["TYPE"] == "ntfs"


def test_another_filesystem_is_never_formatted(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ext4", "blkid")
    image = tmp_path / "data.img"
    sh("truncate", "-s", "64M", str(image))
    sh("sfdisk", "--quiet", str(image), stdin="label: dos\n,,83\n")
    device = loops.attach(image, 1)
    sh("mkfs.ext4", "-q", "-L", "data", device + "p1")
    uuid = probe(device + "p1")["UUID"]
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": ["tmpfs", "tmpfs"], "disks": [name],
                        "link": name, "rootgrow": {"enabled": False}, "passes": [{}]})
    assert result["passes"][0]["actions"] == [] and result["mounted"] == []
    assert any("never formatted" in line for line in result["log"])
    assert probe(device + "p1")["UUID"] == uuid


def test_swap_file_on_the_resource_disk(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.ntfs", "ntfscp", "ntfsls", "mkfs.ext4", "blkid",
         "mkswap", "fallocate")
    device = azure_disk(tmp_path, loops)
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": ["tmpfs", "tmpfs"], "disks": [name],
                        "link": name, "rootgrow": {"enabled": False}, "passes": [{}],
                        "resource": {"enable_swap": True, "swap_size_mb": 16}})
    (one,) = result["passes"]
    # swapon would change this machine's swap (not namespaced): the test's runner refuses
    # it, so exactly that step fails, after the file was made.
    assert len(one["failures"]) == 1 and "swapon" in one["failures"][0] and "refused by the test" in one["failures"][0]
    assert result["swap"] == {"mode": 0o600, "size": 16 * 1024 * 1024, "type": "swap"}
    assert "Filename" in Path("/proc/swaps").read_text()  # (nothing of ours in it)
    assert str(tmp_path) not in Path("/proc/swaps").read_text()


# ---------------------------------------------------------------------------- root grow


def grown_root_image(tmp_path: Path, loops: Loops, fstype: str, *, table: bool = True) -> str:
    """A disk image whose root filesystem (on partition 1, or on the whole disk) is smaller
    than the disk: made small, then the image file is enlarged and the loop device told."""
    image = tmp_path / "root.img"
    sh("truncate", "-s", "400M", str(image))
    if table:
        sh("sfdisk", "--quiet", str(image), stdin="label: gpt\n,320M,L\n")
        device = loops.attach(image, 1)
        target = device + "p1"
    else:
        device = loops.attach(image, 0)
        target = device
    if fstype == "xfs":
        sh("mkfs.xfs", "-q", target)
    else:
        sh("mkfs.ext4", "-q", "-F", target)
    sh("truncate", "-s", "600M", str(image))
    sh("losetup", "--set-capacity", device)
    return device


@pytest.mark.parametrize("hide", [[], ["growpart"]], ids=["growpart", "sfdisk-fallback"])
def test_root_partition_and_xfs_grow_to_the_end_of_the_disk(tmp_path: Path, loops: Loops, hide: list[str]) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "mkfs.xfs", "xfs_growfs", "xfs_info", *([] if hide else ["growpart"]))
    device = grown_root_image(tmp_path, loops, "xfs")
    name = os.path.basename(device)
    before = int(Path(f"/sys/block/{name}/{name}p1/size").read_text()) * 512
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": [device + "p1", "xfs"], "disks": [name],
                        "platform": "gce", "hide": hide,
                        "passes": [{}, {}, {"remove": ["/run/guestagent/rootgrow"]}]})
    first, second, third = result["passes"]
    assert first["failures"] == [], result["log"]
    assert [a.split(" ")[0] for a in first["actions"]] == ["grow", "grow", "record"]
    assert ("growpart" in first["ran"]) != bool(hide)
    after = int(Path(f"/sys/block/{name}/{name}p1/size").read_text()) * 512
    assert after > before + 250 * 1024 * 1024
    assert result["root_fs_bytes"] > 500 * 1024 * 1024
    # Once per boot: the record stops the second pass; without it, the full-size root is a no-op.
    assert second["actions"] == [] and second["ran"] == []
    assert third["failures"] == [] and [a.split(" ")[0] for a in third["actions"]] == ["record"]
    assert "xfs_growfs" not in third["ran"] and "growpart" not in third["ran"]


def test_a_whole_disk_root_only_grows_its_filesystem(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "mkfs.xfs", "xfs_growfs", "xfs_info")
    device = grown_root_image(tmp_path, loops, "xfs", table=False)
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": [device, "xfs"], "disks": [name],
                        "platform": "gce", "passes": [{}]})
    (one,) = result["passes"]
    assert one["failures"] == [], result["log"]
    assert "growpart" not in one["ran"] and "xfs_growfs" in one["ran"]
    assert result["root_fs_bytes"] > 450 * 1024 * 1024  # was under 400 MiB


def test_ext4_root_grows_online(tmp_path: Path, loops: Loops) -> None:
    need("losetup", "unshare", "sfdisk", "partx", "growpart", "mkfs.ext4", "resize2fs", "dumpe2fs")
    if not has_cap_sys_resource():
        pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this machine's root lacks")
    device = grown_root_image(tmp_path, loops, "ext4")
    name = os.path.basename(device)
    result = run_agent({"root": str(tmp_path / "root"), "mount_root": [device + "p1", "ext4"], "disks": [name],
                        "platform": "gce", "passes": [{}]})
    assert result["passes"][0]["failures"] == [], result["log"]
    assert result["root_fs_bytes"] > 500 * 1024 * 1024
