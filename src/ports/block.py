"""Block devices as the disks subsystem sees them: read-only observation.

Everything that changes a disk (sfdisk, mkfs, mount, growpart, swapon...)
goes through the CommandRunner, so a sandbox root's ConfinedRunner refuses
it; this port only looks. Device names are kernel names (`sdb`, `sdb1`,
`nvme0n1p1`) as listed under ROOT/sys/block; paths given to and returned
by it are guest paths (`/mnt/resource`), mapped under the adapter's root.
"""

from __future__ import annotations

from typing import Protocol

from guestagent.domain.disks import Disk, Mount, PartitionTable, Signature


class BlockDevices(Protocol):
    def disks(self) -> tuple[Disk, ...]:
        """Whole disks listed under ROOT/sys/block, with their partitions (no RAM disks,
        floppies or devices of size 0)."""
        ...

    def device_path(self, name: str) -> str:
        """The path of /dev/NAME on this machine (under the root), for commands."""
        ...

    def resource_link(self) -> str | None:
        """The kernel name ROOT/dev/disk/azure/resource points to, or None without that link."""
        ...

    def signature(self, name: str) -> Signature | None:
        """What `blkid -p` finds on /dev/NAME (an empty Signature: nothing); None when blkid
        could not be run (missing, refused)."""
        ...

    def partition_table(self, disk: str) -> PartitionTable | None:
        """`sfdisk --json` of the disk; None without a table or without sfdisk."""
        ...

    def ntfs_files(self, name: str) -> tuple[tuple[str, ...] | None, str]:
        """The names in the root directory of the NTFS volume on /dev/NAME, read without
        mounting it, less NTFS's own metadata files; (None, reason) when they cannot be
        listed (ntfsls missing, a damaged volume)."""
        ...

    def mounts(self) -> tuple[Mount, ...]:
        """This process's mounts that lie under the root, mount points as guest paths."""
        ...

    def swaps(self) -> tuple[str, ...]:
        """Active swap areas under the root, as guest paths."""
        ...

    def filesystem_size(self, name: str, fstype: str, mount_point: str) -> int | None:
        """The size in bytes the filesystem on /dev/NAME (mounted at the guest path
        `mount_point`) has; None when it cannot be read."""
        ...

    def free_bytes(self, path: str) -> int | None:
        """Bytes available to root on the filesystem holding the guest path, or None."""
        ...

    def file_size(self, path: str) -> int | None:
        """Size of the regular file at the guest path (not followed if a link); None if absent."""
        ...

    def wait_for_partition(self, disk: str, number: int, timeout: float) -> str | None:
        """After a partition table was written: wait (udev settle, partx when the kernel
        did not re-read it) until partition `number` of `disk` appears in sysfs with the
        start and size the table gives it. Its kernel name, or None after `timeout` s."""
        ...
