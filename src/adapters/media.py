"""Labelled volumes (NoCloud's `cidata`, OpenStack's `config-2`): found and read without mounting.

Finding: a volume is looked for under a root directory (`/` on a VM, a tmp
tree in tests), first through udev's `ROOT/dev/disk/by-label/LABEL` links,
then by scanning `ROOT/sys/block/*` whole disks and their partitions and
reading each one's superblock from `ROOT/dev/NAME`. The label is always
checked on the superblock itself (a stale link proves nothing): ISO9660's
volume identifier in the primary volume descriptor at byte 0x8000, FAT's
label in the boot sector (or, when that says `NO NAME`, the root directory's
volume-label entry). Labels compare case-insensitively (`cidata` = `CIDATA`),
as cloud-init's lookup does. Floppy and RAM disks are not scanned (an empty
floppy drive can hold a read for seconds), nor devices whose size is 0.

Reading, without mounting anything (a guest agent should not need mount
rights, leave mounts behind, or have the kernel parse a hostile filesystem):

- ISO9660 through pycdlib (Debian: python3-pycdlib, 1.12 in bookworm has every
  call used here): it is the maintained pure-Python ISO reader, it already
  knows Rock Ridge and Joliet (the long lower-case names `meta-data`,
  `meta_data.json` only exist there), and the simulator builds its images with
  it. Names are looked up as Rock Ridge first, then Joliet, then plain ISO9660
  identifiers (version `;1` and a trailing dot dropped, case-insensitive).
- FAT12/16/32 through the small read-only reader below, rather than mtools'
  `mcopy`: a seed volume needs only a directory walk and cluster chains (a couple
  of hundred lines), and reading it in-process means no subprocess at boot, no
  extra package, no temp files, and every bound (file size, directory size,
  cluster-chain loops) enforced where the bytes are read. Long (VFAT) names
  are read and checked against their short entry's checksum.

Every failure is a MediaError with a reason safe to log; a file larger than
the caller's bound is a FileTooLarge (no byte of it is read).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Protocol

import attrs

from guestagent.domain.platforms.common import Unreadable

ISO_PVD_OFFSET = 0x8000
SUPERBLOCK_BYTES = ISO_PVD_OFFSET + 2048
MAX_CANDIDATES = 256
# Devices never scanned (still read when udev's by-label link names them).
_SKIPPED = ("fd", "ram", "zram")
# FAT directory bound: the format's own limit of 65536 entries.
_MAX_DIR_ENTRIES = 65536
_NO_LABEL = "NO NAME"


class MediaError(Exception):
    """A volume could not be read; str() is a reason safe to log."""


class FileTooLarge(MediaError):
    """A file larger than the caller's bound; nothing of it was read."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"{name} is larger than {limit} bytes ({size} bytes)")
        self.name = name
        self.size = size
        self.limit = limit


@attrs.frozen
class Volume:
    """A labelled filesystem found on a device (or an image file standing for one)."""

    device: str  # the path read (under the root it was found in)
    fs: str  # "iso9660" or "vfat"
    label: str

    def describe(self, root: str = "/") -> str:
        shown = self.device
        if root not in ("", "/"):
            rel = os.path.relpath(self.device, root)
            if not rel.startswith(".."):
                shown = "/" + rel
        return f"{self.fs} volume {self.label!r} at {shown}"


class VolumeReader(Protocol):
    """Files of one opened volume, by path ("meta-data", "openstack/latest/meta_data.json")."""

    def read(self, path: str, limit: int) -> bytes | None:
        """The file's bytes, None when absent (or a directory); FileTooLarge past `limit`."""
        ...


# ---------------------------------------------------------------- raw access


def _open_device(path: str) -> BinaryIO:
    # O_NONBLOCK: an optical drive without a disc fails at once instead of waiting.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise MediaError(f"{path} is not a block device or an image file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _pread(fp: BinaryIO, offset: int, size: int) -> bytes:
    fp.seek(offset)
    data = fp.read(size)
    if len(data) != size:
        raise MediaError(f"short read at byte {offset} (the volume ends early)")
    return data


# ---------------------------------------------------------------- labels


def _iso_label(block: bytes) -> str | None:
    pvd = block[ISO_PVD_OFFSET : ISO_PVD_OFFSET + 2048]
    if len(pvd) < 72 or pvd[0] != 1 or pvd[1:6] != b"CD001":
        return None
    return pvd[40:72].decode("ascii", "replace").strip(" \0")


def _fat_label_field(boot: bytes) -> str:
    bpb = _Bpb.parse(boot)
    field = boot[71:82] if bpb.fat_size16 == 0 else boot[43:54]
    return field.decode("ascii", "replace").strip(" \0")


def probe(path: str) -> tuple[str, str] | None:
    """(filesystem, label) of the volume at `path`, or None when it is neither ISO9660 nor FAT.

    Raises OSError/MediaError when the device cannot be read."""
    with _open_device(path) as fp:
        fp.seek(0)
        block = fp.read(SUPERBLOCK_BYTES)
        label = _iso_label(block)
        if label is not None:
            return "iso9660", label
        if len(block) < 512:
            return None
        try:
            label = _fat_label_field(block[:512])
        except MediaError:
            return None
        if label.upper() in ("", _NO_LABEL):
            # The boot sector has none: the root directory's label entry is the other place.
            with contextlib.suppress(MediaError):
                label = _Fat(fp).root_label() or label
        return "vfat", label


def _probe_quietly(path: str) -> tuple[str, str] | None:
    try:
        return probe(path)
    except (OSError, MediaError):
        return None


def under(root: str, path: str) -> str:
    """A guest path as seen from the host when the guest's / is `root`."""
    return os.path.join(root, path.lstrip("/"))


def _by_label(root: str, labels: Iterable[str]) -> Iterator[str]:
    folder = under(root, "/dev/disk/by-label")
    for label in labels:
        link = os.path.join(folder, label)
        if os.path.islink(link):
            target = os.readlink(link)
            # udev's links are relative (../../sr0); an absolute one is re-rooted.
            path = under(root, target) if os.path.isabs(target) else os.path.join(folder, target)
            yield os.path.normpath(path)
        elif os.path.exists(link):
            yield link


def _device_size_zero(sys_dir: str) -> bool:
    try:
        with open(os.path.join(sys_dir, "size"), "rb") as f:
            return f.read(32).strip() == b"0"
    except OSError:
        return False  # no size file (a test tree): try the device


def _scanned(root: str) -> Iterator[str]:
    """Device nodes of every whole disk and partition sysfs lists, in name order."""
    sys_block = under(root, "/sys/block")
    try:
        disks = sorted(os.listdir(sys_block))
    except OSError:
        return
    for disk in disks:
        if disk.startswith(_SKIPPED):
            continue
        disk_dir = os.path.join(sys_block, disk)
        names = [(disk, disk_dir)]
        try:
            children = sorted(os.listdir(disk_dir))
        except OSError:
            children = []
        names += [
            (child, os.path.join(disk_dir, child))
            for child in children
            if child.startswith(disk) and os.path.isfile(os.path.join(disk_dir, child, "partition"))
        ]
        for name, sys_dir in names:
            if not _device_size_zero(sys_dir):
                # sysfs writes "/" in a device name as "!" (cciss!c0d0 is /dev/cciss/c0d0).
                yield under(root, "/dev/" + name.replace("!", "/"))


def _matching(root: str, labels: Iterable[str]) -> Iterator[Volume]:
    names = list(labels)
    wanted = {label.upper() for label in names}
    spellings = sorted({spelled for label in names for spelled in (label, label.upper(), label.lower())})
    seen: set[str] = set()
    for path in itertools.chain(_by_label(root, spellings), _scanned(root)):
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > MAX_CANDIDATES:
            return
        probed = _probe_quietly(path)
        if probed is not None and probed[1].upper() in wanted:
            yield Volume(device=path, fs=probed[0], label=probed[1])


def find_volumes(root: str, labels: Iterable[str]) -> list[Volume]:
    """Every volume under `root` whose label is one of `labels` (case-insensitive),
    udev's by-label links first, then the sysfs scan; each device once."""
    return list(_matching(root, labels))


def find_volume(root: str, labels: Iterable[str]) -> Volume | None:
    """The first volume under `root` labelled one of `labels`, or None (stops at the first)."""
    return next(_matching(root, labels), None)


# ---------------------------------------------------------------- ISO9660 (pycdlib)


class _IsoReader:
    def __init__(self, fp: BinaryIO) -> None:
        try:
            import pycdlib  # only a guest with a seed ISO needs it
        except ImportError as exc:
            raise MediaError("reading ISO9660 needs pycdlib (Debian: python3-pycdlib)") from exc
        self._pycdlib = pycdlib
        self._iso = pycdlib.PyCdlib()
        try:
            self._iso.open_fp(fp)
            self._rr = bool(self._iso.has_rock_ridge())
            self._joliet = bool(self._iso.has_joliet())
        except Exception as exc:  # any failure on a hostile image is a refusal
            raise MediaError(f"not a readable ISO9660 volume ({exc.__class__.__name__})") from exc

    def _record(self, path: str) -> tuple[str, str, object] | None:
        """(pycdlib keyword, exact path in that namespace, record) of `path`, or None.

        Directories are listed and matched here rather than asking pycdlib to look a
        name up: pycdlib 1.12 (Debian bookworm) raises IndexError for a Rock Ridge
        name that sorts after every entry, i.e. for some absent files."""
        parts = [p for p in path.split("/") if p]
        kinds = [kind for kind, present in (("rr_path", self._rr), ("joliet_path", self._joliet)) if present]
        for kind in (*kinds, "iso_path"):
            found = self._walk(kind, parts)
            if found is not None:
                return found
        return None

    @staticmethod
    def _name(kind: str, record: Any) -> str | None:
        if kind == "rr_path":
            rock_ridge = record.rock_ridge
            return None if rock_ridge is None else bytes(rock_ridge.name()).decode("utf-8", "surrogateescape")
        ident = bytes(record.file_identifier())
        return ident.decode("utf-16-be", "replace") if kind == "joliet_path" else ident.decode("latin-1")

    @staticmethod
    def _same(kind: str, name: str, wanted: str) -> bool:
        if kind == "rr_path":
            return name == wanted  # POSIX names: exact
        bare = name.split(";")[0]  # the version (";1")
        if kind == "joliet_path":
            return bare == wanted
        # Plain ISO9660 (relaxed-name images): upper case, maybe a trailing dot.
        return bare.rstrip(".").casefold() == wanted.casefold()

    def _walk(self, kind: str, parts: list[str]) -> tuple[str, str, object] | None:
        current = ""
        record: Any = None
        for part in parts:
            if record is not None and not record.is_dir():
                return None
            for child in self._iso.list_children(**{kind: current or "/"}):
                if child.is_dot() or child.is_dotdot():
                    continue
                name = self._name(kind, child)
                if name is not None and self._same(kind, name, part):
                    record, current = child, f"{current}/{name}"
                    break
            else:
                return None
        return None if record is None else (kind, current, record)

    def read(self, path: str, limit: int) -> bytes | None:
        try:
            found = self._record(path)
            if found is None:
                return None
            kind, where, record = found
            if record.is_dir():  # type: ignore[attr-defined]
                return None
            size = int(record.get_data_length())  # type: ignore[attr-defined]
            if size > limit:
                raise FileTooLarge(path, size, limit)
            out = io.BytesIO()
            self._iso.get_file_from_iso_fp(out, **{kind: where})
        except MediaError:
            raise
        except Exception as exc:  # a hostile image refuses, never crashes
            raise MediaError(f"{path}: unreadable on the ISO9660 volume ({exc.__class__.__name__})") from exc
        data = out.getvalue()
        if len(data) > limit:
            raise FileTooLarge(path, len(data), limit)
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._iso.close()


# ---------------------------------------------------------------- FAT


@attrs.frozen
class _Bpb:
    """The BIOS parameter block fields a reader needs, checked for sanity."""

    sector: int
    cluster_sectors: int
    reserved: int
    fats: int
    root_entries: int
    total_sectors: int
    fat_size16: int
    fat_size: int
    root_cluster: int

    @classmethod
    def parse(cls, boot: bytes) -> _Bpb:
        if len(boot) < 512 or boot[0] not in (0xEB, 0xE9):
            raise MediaError("no FAT boot sector")
        sector, cluster_sectors, reserved, fats, root_entries, total16 = struct.unpack_from(
            "<HBHBHH", boot, 11
        )
        (fat_size16,) = struct.unpack_from("<H", boot, 22)
        total32, fat_size32 = struct.unpack_from("<II", boot, 32)
        (root_cluster,) = struct.unpack_from("<I", boot, 44)
        bpb = cls(
            sector=sector,
            cluster_sectors=cluster_sectors,
            reserved=reserved,
            fats=fats,
            root_entries=root_entries,
            total_sectors=total16 or total32,
            fat_size16=fat_size16,
            fat_size=fat_size16 or fat_size32,
            root_cluster=root_cluster,
        )
        bpb._check()
        return bpb

    def _check(self) -> None:
        if self.sector not in (512, 1024, 2048, 4096):
            raise MediaError("FAT boot sector: bad bytes per sector")
        if self.cluster_sectors not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise MediaError("FAT boot sector: bad sectors per cluster")
        if self.reserved < 1 or not 1 <= self.fats <= 4 or self.fat_size < 1:
            raise MediaError("FAT boot sector: bad layout")
        if self.total_sectors <= self.first_data_sector:
            raise MediaError("FAT boot sector: no data area")

    @property
    def root_dir_sectors(self) -> int:
        return (self.root_entries * 32 + self.sector - 1) // self.sector

    @property
    def first_data_sector(self) -> int:
        return self.reserved + self.fats * self.fat_size + self.root_dir_sectors

    @property
    def clusters(self) -> int:
        return (self.total_sectors - self.first_data_sector) // self.cluster_sectors

    @property
    def bits(self) -> int:
        # Microsoft's rule: the FAT type follows from the cluster count alone.
        if self.clusters < 4085:
            return 12
        if self.clusters < 65525:
            return 16
        return 32


@attrs.frozen
class _Entry:
    name: str  # the long name where there is one, else the 8.3 name
    short: str
    attributes: int
    cluster: int
    size: int

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & 0x10)


def _lfn_checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _short_name(raw: bytes) -> str:
    base, ext = bytearray(raw[0:8]), raw[8:11]
    if base[0] == 0x05:  # a real 0xE5 first byte, escaped
        base[0] = 0xE5
    flags = raw[12]
    stem = bytes(base).decode("cp437").rstrip(" ")
    suffix = ext.decode("cp437").rstrip(" ")
    # Windows NT case bits: lower-case base (0x08) and extension (0x10).
    if flags & 0x08:
        stem = stem.lower()
    if flags & 0x10:
        suffix = suffix.lower()
    return f"{stem}.{suffix}" if suffix else stem


class _Fat:
    """A read-only FAT12/16/32 volume: directory walk and cluster chains, every step bounded."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.bpb = _Bpb.parse(_pread(fp, 0, 512))
        self._cluster_bytes = self.bpb.sector * self.bpb.cluster_sectors
        self._fat_cache: dict[int, bytes] = {}

    # -- FAT chains

    def _fat_sector(self, index: int) -> bytes:
        if index not in self._fat_cache:
            if len(self._fat_cache) > 4096:
                self._fat_cache.clear()
            offset = (self.bpb.reserved + index) * self.bpb.sector
            self._fat_cache[index] = _pread(self._fp, offset, self.bpb.sector)
        return self._fat_cache[index]

    def _fat_bytes(self, offset: int, size: int) -> bytes:
        sector, within = divmod(offset, self.bpb.sector)
        data = self._fat_sector(sector)[within : within + size]
        if len(data) < size:  # a FAT12 entry may straddle two sectors
            data += self._fat_sector(sector + 1)[: size - len(data)]
        return data

    def _next(self, cluster: int) -> int | None:
        bits = self.bpb.bits
        if bits == 12:
            value = int.from_bytes(self._fat_bytes(cluster + cluster // 2, 2), "little")
            value = value >> 4 if cluster & 1 else value & 0xFFF
            end = 0xFF8
        elif bits == 16:
            value = int.from_bytes(self._fat_bytes(cluster * 2, 2), "little")
            end = 0xFFF8
        else:
            value = int.from_bytes(self._fat_bytes(cluster * 4, 4), "little") & 0x0FFFFFFF
            end = 0x0FFFFFF8
        return None if value >= end else value

    def _valid(self, cluster: int) -> bool:
        return 2 <= cluster < self.bpb.clusters + 2

    def _chain(self, first: int, max_clusters: int) -> Iterator[int]:
        """The clusters of a chain, at most `max_clusters`; loops and bad links are errors."""
        seen: set[int] = set()
        cluster: int | None = first
        while cluster is not None and len(seen) < max_clusters:
            if not self._valid(cluster):
                raise MediaError(f"FAT chain points outside the volume (cluster {cluster})")
            if cluster in seen:
                raise MediaError("FAT chain loops")
            seen.add(cluster)
            yield cluster
            cluster = self._next(cluster)

    def _cluster(self, cluster: int) -> bytes:
        sector = self.bpb.first_data_sector + (cluster - 2) * self.bpb.cluster_sectors
        return _pread(self._fp, sector * self.bpb.sector, self._cluster_bytes)

    # -- directories

    def _dir_blocks(self, cluster: int | None) -> Iterator[bytes]:
        """The raw blocks of a directory; None is the root."""
        if cluster is None and self.bpb.bits != 32:
            start = (self.bpb.reserved + self.bpb.fats * self.bpb.fat_size) * self.bpb.sector
            yield _pread(self._fp, start, self.bpb.root_entries * 32)
            return
        first = self.bpb.root_cluster if cluster is None else cluster
        max_clusters = max(1, _MAX_DIR_ENTRIES * 32 // self._cluster_bytes)
        for c in self._chain(first, max_clusters):
            yield self._cluster(c)

    def _entries(self, cluster: int | None) -> Iterator[_Entry | str]:
        """Directory entries; a volume-label entry is yielded as its text."""
        parts: dict[int, str] = {}
        expected = checksum = 0
        for block in self._dir_blocks(cluster):
            for offset in range(0, len(block) - 31, 32):
                raw = block[offset : offset + 32]
                if raw[0] == 0x00:
                    return
                if raw[0] == 0xE5:
                    parts.clear()
                    continue
                attributes = raw[11]
                if attributes & 0x3F == 0x0F:
                    order = raw[0] & 0x1F
                    if raw[0] & 0x40:
                        parts, expected, checksum = {}, order, raw[13]
                    if raw[13] != checksum or order < 1:
                        parts.clear()
                        continue
                    chars = raw[1:11] + raw[14:26] + raw[28:32]
                    parts[order] = chars.decode("utf-16-le", "replace")
                    continue
                if attributes & 0x08 and not attributes & 0x10:
                    parts.clear()
                    yield raw[0:11].decode("cp437").rstrip(" ")
                    continue
                name = short = _short_name(raw)
                complete = expected and sorted(parts) == list(range(1, expected + 1))
                if complete and _lfn_checksum(raw[0:11]) == checksum:
                    long = "".join(parts[i] for i in range(1, expected + 1))
                    name = long.split("\0", 1)[0]  # NUL-terminated, then 0xFFFF padding
                parts.clear()
                expected = 0
                if short in (".", ".."):
                    continue
                high = int.from_bytes(raw[20:22], "little") if self.bpb.bits == 32 else 0
                low = int.from_bytes(raw[26:28], "little")
                size = int.from_bytes(raw[28:32], "little")
                yield _Entry(name, short, attributes, (high << 16) | low, size)

    def root_label(self) -> str | None:
        for entry in self._entries(None):
            if isinstance(entry, str):
                return entry
        return None

    def _lookup(self, path: str) -> _Entry | None:
        cluster: int | None = None
        parts = [p for p in path.split("/") if p]
        entry: _Entry | None = None
        for index, part in enumerate(parts):
            wanted = part.casefold()
            entry = next(
                (
                    e
                    for e in self._entries(cluster)
                    if isinstance(e, _Entry) and wanted in (e.name.casefold(), e.short.casefold())
                ),
                None,
            )
            if entry is None:
                return None
            if index < len(parts) - 1:
                if not entry.is_dir:
                    return None
                # 0 is FAT's way of pointing at the root directory.
                cluster = entry.cluster or None
        return entry

    def read(self, path: str, limit: int) -> bytes | None:
        try:
            entry = self._lookup(path)
            if entry is None or entry.is_dir:
                return None
            if entry.size > limit:
                raise FileTooLarge(path, entry.size, limit)
            if entry.size == 0:
                return b""
            needed = -(-entry.size // self._cluster_bytes)
            data = bytearray()
            for cluster in self._chain(entry.cluster, needed):
                data += self._cluster(cluster)
        except OSError as exc:
            raise MediaError(f"{path}: read failed ({exc.strerror or exc.__class__.__name__})") from exc
        if len(data) < entry.size:
            raise MediaError(f"{path}: its cluster chain ends before its size")
        return bytes(data[: entry.size])

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- opening


@contextlib.contextmanager
def open_volume(volume: Volume) -> Iterator[VolumeReader]:
    """The volume's files, readable until the block ends; MediaError when it cannot be opened."""
    try:
        fp = _open_device(volume.device)
    except OSError as exc:
        raise MediaError(f"{volume.device}: {exc.strerror or exc.__class__.__name__}") from exc
    with fp:
        reader: _IsoReader | _Fat
        if volume.fs == "iso9660":
            reader = _IsoReader(fp)
        elif volume.fs == "vfat":
            try:
                reader = _Fat(fp)
            except OSError as exc:
                raise MediaError(f"{volume.device}: {exc.strerror or exc.__class__.__name__}") from exc
        else:
            raise MediaError(f"unsupported filesystem {volume.fs!r}")
        try:
            yield reader
        finally:
            reader.close()


def labelled_volume(root: str, labels: Iterable[str]) -> Volume | None:
    """The first volume under `root` labelled one of `labels`; None also when the scan fails."""
    try:
        return find_volume(root, labels)
    except OSError:
        return None


def read_files(
    names: Iterable[str], read: Callable[[str], bytes | None]
) -> dict[str, bytes | Unreadable | None]:
    """Each named file as `read` gives it (None: absent), in the order named; a file
    larger than its bound (media.FileTooLarge) is Unreadable: only what it feeds holds."""
    files: dict[str, bytes | Unreadable | None] = {}
    for name in names:
        try:
            files[name] = read(name)
        except FileTooLarge as exc:
            files[name] = Unreadable(str(exc))
    return files
