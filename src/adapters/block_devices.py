"""Block devices through sysfs under a root, blkid, sfdisk, ntfsls and this process's mount table.

Disks are those listed under ROOT/sys/block ("/" on a VM). A test builds a
root whose sys/block holds links to the loop devices it made (and dev/ links
to their nodes), so the adapter never sees any other disk of the machine:
every device path comes from the root. The mount table and the swap list are
the kernel's for this process (/proc/self/mountinfo, /proc/swaps, never under
the root); only entries under the root are kept, as guest paths.

Programs run through the CommandRunner given (the context's: a sandbox
root's ConfinedRunner refuses them, and the values read as unknown). Every
tool's text is parsed by the pure functions of guestagent.domain.disks.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import time

from guestagent.domain import disks as domain
from guestagent.ports.commands import CommandRunner

PROBE_TIMEOUT = 60.0
_SKIPPED = ("ram", "zram", "fd")
MAX_DISKS = 256
C_LOCALE = {"LC_ALL": "C"}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(4096).strip()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _sectors(path: str) -> int | None:
    """A sysfs size/start value (always in 512-byte units) as bytes."""
    text = _read(path)
    return int(text) * 512 if text is not None and text.isdigit() else None


class SysfsBlockDevices:
    def __init__(self, root: str, runner: CommandRunner, *, proc: str = "/proc") -> None:
        self.root = os.path.abspath(root)
        self._runner = runner
        self._proc = proc

    # -- paths ------------------------------------------------------------------

    def _host(self, path: str) -> str:
        clean = posixpath.normpath("/" + path.lstrip("/"))
        if self.root == "/":
            return clean
        return self.root + clean if clean != "/" else self.root

    def _guest(self, host_path: str) -> str | None:
        """The guest path of a path on this machine, or None when it is outside the root."""
        if self.root == "/":
            return host_path
        if host_path == self.root:
            return "/"
        if host_path.startswith(self.root + "/"):
            return host_path[len(self.root):]
        return None

    def device_path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a device name: {name!r}")
        return self._host(f"/dev/{name}")

    # -- sysfs --------------------------------------------------------------------

    def disks(self) -> tuple[domain.Disk, ...]:
        sys_block = self._host("/sys/block")
        out = []
        for name in _listdir(sys_block)[:MAX_DISKS]:
            if name.startswith(_SKIPPED):
                continue
            disk = self._disk(os.path.join(sys_block, name), name)
            if disk is not None:
                out.append(disk)
        return tuple(out)

    def _disk(self, path: str, name: str) -> domain.Disk | None:
        size = _sectors(os.path.join(path, "size"))
        devno = _read(os.path.join(path, "dev"))
        if not size or devno is None:
            return None
        partitions = []
        for entry in _listdir(path):
            part_dir = os.path.join(path, entry)
            number = _read(os.path.join(part_dir, "partition"))
            if number is None or not number.isdigit():
                continue
            start = _sectors(os.path.join(part_dir, "start"))
            part_size = _sectors(os.path.join(part_dir, "size"))
            part_devno = _read(os.path.join(part_dir, "dev"))
            if start is None or part_size is None or part_devno is None:
                continue
            holders = tuple(_listdir(os.path.join(part_dir, "holders")))
            partitions.append(domain.Partition(entry, int(number), start, part_size, part_devno, holders))
        partitions.sort(key=lambda p: p.number)
        return domain.Disk(
            name=name,
            size=size,
            devno=devno,
            partitions=tuple(partitions),
            readonly=_read(os.path.join(path, "ro")) == "1",
            holders=tuple(_listdir(os.path.join(path, "holders"))),
            slaves=tuple(_listdir(os.path.join(path, "slaves"))),
        )

    def resource_link(self) -> str | None:
        link = self._host(domain.RESOURCE_LINK)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        # udev's links are relative (../../sdb); an absolute one is a guest path.
        guest = posixpath.normpath(posixpath.join(posixpath.dirname(domain.RESOURCE_LINK), target))
        name = posixpath.basename(guest)
        return name if posixpath.dirname(guest) == "/dev" and name else None

    # -- probes through the runner --------------------------------------------------

    def _is_block(self, name: str) -> bool:
        try:
            return stat.S_ISBLK(os.stat(self.device_path(name)).st_mode)
        except (OSError, ValueError):
            return False

    def signature(self, name: str) -> domain.Signature | None:
        if not self._is_block(name):
            return None
        result = self._runner.run(
            ["blkid", "-p", "-o", "export", self.device_path(name)], timeout=PROBE_TIMEOUT, env=C_LOCALE
        )
        if result.returncode == 0:
            return domain.parse_blkid_export(result.stdout)
        if result.returncode == 2:  # nothing found
            return domain.Signature()
        if result.returncode == 8:  # ambivalent: more than one signature
            return domain.Signature(ambivalent=True)
        return None

    def partition_table(self, disk: str) -> domain.PartitionTable | None:
        if not self._is_block(disk):
            return None
        result = self._runner.run(
            ["sfdisk", "--json", self.device_path(disk)], timeout=PROBE_TIMEOUT, env=C_LOCALE
        )
        return domain.parse_sfdisk_json(result.stdout) if result.ok else None

    def ntfs_files(self, name: str) -> tuple[tuple[str, ...] | None, str]:
        if self._runner.which("ntfsls") is None:
            return None, "ntfsls (ntfs-3g) is not installed"
        if not self._is_block(name):
            return None, f"/dev/{name} is not a block device"
        # -a: every name; -s: system files too, so nothing is hidden from the check
        # (NTFS's own metadata files are dropped by name afterwards).
        result = self._runner.run(
            ["ntfsls", "-a", "-s", self.device_path(name)], timeout=PROBE_TIMEOUT,
            env={"LC_ALL": "C.UTF-8"},
        )
        if not result.ok:
            first = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[0]
            return None, f"ntfsls failed: {first[:200]}"
        return domain.parse_ntfsls(result.stdout), ""

    def filesystem_size(self, name: str, fstype: str, mount_point: str) -> int | None:
        host_mount = self._host(mount_point)
        if fstype in ("ext2", "ext3", "ext4"):
            argv = ["dumpe2fs", "-h", self.device_path(name)]
            parse = domain.parse_dumpe2fs
        elif fstype == "xfs":
            argv, parse = ["xfs_info", host_mount], domain.parse_xfs_info
        elif fstype == "btrfs":
            argv, parse = ["btrfs", "filesystem", "show", "--raw", host_mount], domain.parse_btrfs_show
        else:
            return None
        result = self._runner.run(argv, timeout=PROBE_TIMEOUT, env=C_LOCALE)
        return parse(result.stdout) if result.ok else None

    # -- kernel tables ----------------------------------------------------------------

    def mounts(self) -> tuple[domain.Mount, ...]:
        text = _read_all(os.path.join(self._proc, "self/mountinfo"))
        out = []
        for raw in domain.parse_mountinfo(text or ""):
            guest = self._guest(raw.mount_point)
            if guest is not None:
                out.append(domain.Mount(raw.devno, raw.source, guest, raw.fstype, raw.options))
        return tuple(out)

    def swaps(self) -> tuple[str, ...]:
        text = _read_all(os.path.join(self._proc, "swaps"))
        found = (self._guest(p) for p in domain.parse_proc_swaps(text or ""))
        return tuple(p for p in found if p is not None)

    def free_bytes(self, path: str) -> int | None:
        try:
            st = os.statvfs(self._host(path))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def file_size(self, path: str) -> int | None:
        try:
            st = os.lstat(self._host(path))
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    # -- after a partition table was written -----------------------------------------------

    def _partition_matches(self, disk: str, number: int, want: domain.TableEntry | None,
                           sector_size: int) -> str | None:
        for found_disk in self.disks():
            if found_disk.name != disk:
                continue
            for part in found_disk.partitions:
                if part.number != number:
                    continue
                if want is None or (part.start == want.start * sector_size
                                    and part.size == want.size * sector_size):
                    return part.name
        return None

    def wait_for_partition(self, disk: str, number: int, timeout: float) -> str | None:
        if self._runner.which("udevadm") is not None:
            self._runner.run(["udevadm", "settle", f"--timeout={int(timeout)}"], timeout=timeout + 5)
        table = self.partition_table(disk)
        want = None
        sector_size = 512
        if table is not None:
            sector_size = table.sector_size
            # sfdisk lists a fresh table's entries in partition-number order.
            want = table.entries[number - 1] if 0 < number <= len(table.entries) else None
        deadline = time.monotonic() + timeout
        told = False
        while True:
            name = self._partition_matches(disk, number, want, sector_size)
            if name is not None and self._is_block(name):
                return name
            if not told:
                # The kernel kept the old partitions (the re-read failed or is not done for
                # this kind of disk): tell it with BLKPG, changed ones first, then new ones.
                told = True
                self._runner.run(["partx", "-u", self.device_path(disk)], timeout=PROBE_TIMEOUT)
                self._runner.run(["partx", "-a", self.device_path(disk)], timeout=PROBE_TIMEOUT)
                continue
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


def _read_all(path: str) -> str | None:
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()
    return None
