"""The illumos CPIO metadata device: a whole disk whose LBA 0 starts with a cpio archive.

Finding it: every whole disk sysfs lists under ROOT/sys/block (partitions are
not looked at: the archive is written to the raw disk), read from its node
ROOT/dev/NAME (a block device, or in tests a regular file standing for one).
Floppy and RAM disks are skipped, as are devices whose size is 0. The first
six bytes tell a cpio archive (newc, odc, binary in either byte order) from
anything else; only such a disk is read further, 64 KiB first and, when the
archive goes on, up to the most a well-formed archive can take
(guestagent.domain.cpio.read_bound: about 9 MiB), never more.

A malformed archive is logged once (per device and reason) and that device
is passed over; the first disk whose archive parses is used. The instance id
is the SMBIOS UUID (ROOT/sys/class/dmi/id/product_uuid, readable by root),
else a digest of the archive (guestagent.domain.platforms.cpio).

Media do not change while the guest runs: `watch` yields the device's
snapshot once (retrying with backoff until a device is found: udev may be
late at boot) and then waits for `close()`.

Detection: no DMI hint (the hypervisors that use it are plain QEMU/KVM);
the local hint is a whole disk starting with a cpio magic.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator

from guestagent.adapters.media import under
from guestagent.adapters.platforms.polling import content_tag, watch_snapshots
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain import cpio as archive
from guestagent.domain.platforms.cpio import (
    AUTHORIZED_KEYS,
    KEYS_USER,
    PLATFORM,
    CpioMetadataError,
    cpio,
    parse_cpio,
)
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

FIRST_READ = 64 * 1024
READ_MAX = archive.read_bound()
MAX_CANDIDATES = 256
PRODUCT_UUID = "sys/class/dmi/id/product_uuid"
_SKIPPED = ("fd", "ram", "zram")
_SMALL_READ = 4096


def _shown(root: str, path: str) -> str:
    """`path` as the guest names it (without the root a test or sandbox uses)."""
    if root in ("", "/"):
        return path
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else "/" + rel


def read_small(path: str, limit: int = _SMALL_READ) -> str | None:
    """A regular file's first bytes as text (sysfs attributes); None when it cannot be read.
    O_NONBLOCK and the regular-file check keep a FIFO planted in a test tree from blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_product_uuid(root: str) -> str | None:
    """ROOT/sys/class/dmi/id/product_uuid as read (root-only on most kernels), or None."""
    return read_small(under(root, PRODUCT_UUID))


def whole_disks(root: str) -> list[str]:
    """Device nodes (under `root`) of the whole disks sysfs lists, in name order."""
    sys_block = under(root, "/sys/block")
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    out: list[str] = []
    for name in names:
        if name.startswith(_SKIPPED):
            continue
        sys_dir = os.path.join(sys_block, name)
        if os.path.exists(os.path.join(sys_dir, "partition")):
            continue  # not a whole disk
        size = read_small(os.path.join(sys_dir, "size"), 32)
        if size is not None and size.strip() == "0":
            continue  # an empty drive or an unused loop device
        # sysfs writes "/" in a device name as "!" (cciss!c0d0 is /dev/cciss/c0d0).
        out.append(under(root, "/dev/" + name.replace("!", "/")))
        if len(out) >= MAX_CANDIDATES:
            break
    return out


class _Device:
    """One device node opened for reading: a block device or an image file."""

    def __init__(self, path: str) -> None:
        # O_NONBLOCK: an optical drive without a disc fails at once instead of waiting.
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
                raise OSError(f"{path} is not a block device or an image file")
        except BaseException:
            os.close(self.fd)
            raise

    def read(self, size: int) -> bytes:
        """Up to `size` bytes from the start (fewer only at the device's end)."""
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = os.pread(self.fd, min(size - got, 1024 * 1024), got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)


def starts_with_cpio(path: str) -> str | None:
    """The cpio format at LBA 0 of `path`, or None (not cpio, or unreadable)."""
    try:
        device = _Device(path)
    except OSError:
        return None
    try:
        return archive.sniff(device.read(archive.MAGIC_BYTES))
    except OSError:
        return None
    finally:
        device.close()


class CpioMetadata:
    platform = PLATFORM

    def __init__(
        self, *, root: str = "/", backoff_max: float = 30.0, first_read: int = FIRST_READ,
        read_max: int = READ_MAX,
    ) -> None:  # fmt: skip
        self.root = root
        self.backoff_max = backoff_max
        self.first_read = first_read
        self.read_max = read_max
        self._stop = threading.Event()
        self._said: set[str] = set()

    def _once(self, level: int, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.log(level, "%s", message)

    def _read(self, path: str, product_uuid: str | None) -> Snapshot | None:
        """The device's snapshot; None when it holds no cpio archive. CpioMetadataError
        when it holds one this agent refuses; OSError when it cannot be read."""
        shown = _shown(self.root, path)
        device = _Device(path)
        try:
            if archive.sniff(device.read(archive.MAGIC_BYTES)) is None:
                return None  # the guest's own disks: six bytes read, nothing more
            data = device.read(min(self.first_read, self.read_max))
            try:
                metadata = parse_cpio(data, product_uuid=product_uuid, device=shown)
            except CpioMetadataError as exc:
                if not exc.truncated or len(data) < min(self.first_read, self.read_max):
                    raise  # the device itself ended, or the archive is bad: reading more won't help
                data = device.read(self.read_max)
                metadata = parse_cpio(data, product_uuid=product_uuid, device=shown)
        finally:
            device.close()
        extras = cpio(metadata)
        count = sum(1 for key in metadata.ssh_keys if key.user == KEYS_USER)
        if count:
            # The one platform whose keys are root's: said, never implied.
            said = f"CPIO device {shown}: {AUTHORIZED_KEYS} gives {count} key(s) to {KEYS_USER}"
            self._once(logging.INFO, said)
        return Snapshot(metadata, content_tag(extras.digest, product_uuid or ""))

    def get(self) -> Snapshot:
        product_uuid = read_product_uuid(self.root)
        refused: list[str] = []
        for path in whole_disks(self.root):
            shown = _shown(self.root, path)
            try:
                snapshot = self._read(path, product_uuid)
            except CpioMetadataError as exc:
                self._once(logging.WARNING, f"CPIO device {shown} ignored: its archive is refused: {exc}")
                refused.append(shown)
                continue
            except OSError:
                continue  # no medium, gone, not a device: not ours
            except Exception as exc:  # a parser crash must not kill the watcher
                self._once(
                    logging.ERROR, f"CPIO device {shown} ignored: unreadable ({exc.__class__.__name__})"
                )
                refused.append(shown)
                continue
            if snapshot is not None:
                return snapshot
        if refused:
            raise MetadataUnavailable(f"no usable CPIO metadata device ({', '.join(refused)} refused)")
        raise MetadataUnavailable("no CPIO metadata device: no whole disk starts with a cpio archive")

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        # Media do not change: once read, nothing more to say until close().
        return watch_snapshots(
            lambda: (self.get(), None), last_etag, self._stop, backoff_max=self.backoff_max, logger=log
        )

    def close(self) -> None:
        self._stop.set()


def _open(options: ProviderOptions) -> CpioMetadata:
    return CpioMetadata(root=options.root, backoff_max=options.backoff_max)


def _local(options: ProviderOptions) -> str | None:
    """A whole disk whose LBA 0 starts with a cpio archive."""
    for path in whole_disks(options.root):
        fmt = starts_with_cpio(path)
        if fmt is not None:
            return f"{fmt} cpio archive at LBA 0 of {_shown(options.root, path)}"
    return None


PROVIDER = ProviderSpec(name=PLATFORM, open=_open, local=_local, probe=None)
