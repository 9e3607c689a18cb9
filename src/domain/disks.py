"""Disks: the platform's resource disk, a swap file on it, and growing the root filesystem.

Every decision here is made from observed values (what sysfs, blkid, sfdisk,
ntfsls, mountinfo and /proc/swaps said), so each one is a plain function a
test can feed; the service layer only gathers those values and carries out
the actions.

The resource disk (Azure). The platform hands it over as a disk with one
partition, formatted NTFS and labelled "Temporary Storage", holding only
DATALOSS_WARNING_README.txt (maybe also an empty "System Volume
Information"). It is found through udev's /dev/disk/azure/resource link, or,
without that link, as the one disk that is not the root filesystem's and
holds exactly such a partition (or one the agent made earlier). It is
reformatted only in that exact state, proven by listing the NTFS root
directory without mounting it (ntfsls from ntfs-3g): a disk that cannot be
listed, holds any other file, another filesystem, more or fewer partitions,
or is in use, is never formatted. The agent's own work is recognised by the
filesystem label `ga-resource` (a disk made earlier: just mounted) and by the
GPT partition name `guestagent-resource` (partitioned, then interrupted before
mkfs: the mkfs is done again).

Mounting: the agent mounts the disk itself and keeps one /etc/fstab entry for
it (by UUID, with `nofail` and `x-systemd.device-timeout`), rather than a
systemd mount unit: the administrator sees it where mounts are looked for,
`mount -a` and `findmnt --fstab` know it, no `systemctl daemon-reload` is
needed, and a disk the platform replaced (a redeploy hands over a fresh NTFS
disk with another UUID) never holds the boot. The entry is the line after the
agent's marker comment; every other fstab line is kept byte for byte.

Root grow (every platform, as the illumos agent grows its root pool): the
partition holding / is grown to the end of its disk (growpart, else sfdisk
`-N` with `, +` and partx), then the filesystem (resize2fs, xfs_growfs,
btrfs filesystem resize). A root on a whole disk without a partition table
only has its filesystem grown. It runs once per boot (a record under /run)
and only when at least GROW_MIN_BYTES would be gained.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping

import attrs

from guestagent.domain.config import ResourceDisk, RootGrow

RESOURCE_LINK = "/dev/disk/azure/resource"
AZURE_LABEL = "Temporary Storage"
WARNING_NAME = "DATALOSS_WARNING_README.txt"
# What the platform's NTFS volume may hold in its root directory (compared case-insensitively,
# as NTFS compares names) besides the NTFS metadata files.
ALLOWED_NTFS_NAMES = frozenset({WARNING_NAME.casefold(), "system volume information"})
NTFS_METAFILES = frozenset({
    "$mft", "$mftmirr", "$logfile", "$volume", "$attrdef", "$bitmap", "$boot", "$badclus",
    "$secure", "$quota", "$upcase", "$extend",
})
FS_LABEL = "ga-resource"  # XFS labels hold at most 12 characters
PART_NAME = "guestagent-resource"
SWAP_NAME = "swapfile"
FSTAB_PATH = "/etc/fstab"
FSTAB_MARKER = "# guestagent: resource disk (temporary: its data is lost when the VM moves)"
DEVICE_TIMEOUT = "30s"
ROOTGROW_RECORD = "/run/guestagent/rootgrow"
GROW_MIN_BYTES = 4 * 1024 * 1024
MIB = 1024 * 1024
GPT_TRAILER_SECTORS = 33  # the backup GPT header and its 128-entry array at the end of the disk
MBR_MAX_SECTORS = 2**32

# Filesystems the agent can make, grow and put a swap file on.
MKFS_FORCE = {"ext4": "-F", "ext3": "-F", "ext2": "-F", "xfs": "-f", "btrfs": "-f"}
RESIZE_TOOL = {"ext4": "resize2fs", "ext3": "resize2fs", "ext2": "resize2fs", "xfs": "xfs_growfs",
               "btrfs": "btrfs"}
SWAP_FILESYSTEMS = frozenset({"ext4", "ext3", "ext2", "xfs"})
NOCOW_SWAP_FILESYSTEMS = frozenset({"btrfs"})  # a swap file there must be NOCOW (chattr +C)
# Programs whose presence a plan depends on (the service asks the runner's `which`).
TOOLS = (
    "sfdisk", "partx", "growpart", "mkfs.ext4", "mkfs.ext3", "mkfs.ext2", "mkfs.xfs", "mkfs.btrfs",
    "mount", "mkswap", "swapon", "swapoff", "fallocate", "dd", "chattr", "resize2fs", "xfs_growfs",
    "btrfs", "ntfsls", "blkid",
)

WARNING_TEXT = """\
This disk is temporary storage.

The platform gives this virtual machine a local scratch disk. guestagent
formatted it and mounted it here. Whatever is written to it is lost, with no
way to get it back, when the VM is stopped (deallocated), resized, redeployed
or moved to another host, and also after some platform maintenance.

Keep nothing on it that you need: use it for caches, temporary files and swap.
"""


# ---------------------------------------------------------------------------
# Observed values


@attrs.frozen
class Partition:
    name: str  # kernel name: sdb1, nvme0n1p1, loop3p1
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    devno: str  # "major:minor"
    holders: tuple[str, ...] = ()  # device-mapper / RAID devices built on it


@attrs.frozen
class Disk:
    name: str  # kernel name under /sys/block
    size: int  # bytes
    devno: str
    partitions: tuple[Partition, ...] = ()
    readonly: bool = False
    holders: tuple[str, ...] = ()
    slaves: tuple[str, ...] = ()  # non-empty for dm-*/md* devices built on other disks


@attrs.frozen
class Signature:
    """What `blkid -p` found on one device; all empty when it found nothing."""

    fstype: str = ""  # TYPE
    label: str = ""
    uuid: str = ""
    pttype: str = ""  # PTTYPE, on a whole disk
    part_name: str = ""  # PART_ENTRY_NAME (GPT partition name)
    ambivalent: bool = False  # more than one signature: nothing is trusted

    @property
    def blank(self) -> bool:
        return not (self.fstype or self.pttype or self.ambivalent)


@attrs.frozen
class Mount:
    devno: str
    source: str
    mount_point: str  # a guest path
    fstype: str
    options: str = ""


@attrs.frozen
class TableEntry:
    start: int  # sectors
    size: int  # sectors
    type: str = ""
    name: str = ""


@attrs.frozen
class PartitionTable:
    label: str  # "gpt" or "dos"
    sector_size: int
    entries: tuple[TableEntry, ...] = ()
    last_lba: int | None = None  # GPT: the last usable sector the primary header records


# ---------------------------------------------------------------------------
# Parsers for the tools' output (pure: text in, values out)

_BLKID_LINE = re.compile(r"([A-Z_]+)=(.*)")


def _unescape_blkid(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_blkid_export(text: str) -> Signature:
    """`blkid -p -o export DEV` output (exit 2, nothing found, is an empty text)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _BLKID_LINE.fullmatch(line.strip())
        if match:
            fields[match.group(1)] = _unescape_blkid(match.group(2))
    return Signature(
        fstype=fields.get("TYPE", ""),
        label=fields.get("LABEL", ""),
        uuid=fields.get("UUID", ""),
        pttype=fields.get("PTTYPE", ""),
        part_name=fields.get("PART_ENTRY_NAME", ""),
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_sfdisk_json(text: str) -> PartitionTable | None:
    """`sfdisk --json DISK` output; None when it is not a table this module understands."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    table = document.get("partitiontable") if isinstance(document, dict) else None
    if not isinstance(table, dict):
        return None
    label = table.get("label")
    sector_size = _int(table.get("sectorsize", 512))
    if label not in ("gpt", "dos") or not sector_size:
        return None
    entries = []
    raw_entries = table.get("partitions", [])
    if not isinstance(raw_entries, list):
        return None
    for raw in raw_entries:
        if not isinstance(raw, dict):
            return None
        start, size = _int(raw.get("start")), _int(raw.get("size"))
        if start is None or size is None:
            return None
        entries.append(TableEntry(start, size, str(raw.get("type", "")), str(raw.get("name", ""))))
    return PartitionTable(str(label), sector_size, tuple(entries), _int(table.get("lastlba")))


def _unescape_octal(text: str) -> str:
    """Undo the kernel's \\ooo escapes (space, tab, newline, backslash) in mount tables."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


@attrs.frozen
class RawMount:
    """One line of /proc/self/mountinfo; the mount point is a path on this machine."""

    devno: str
    mount_point: str
    fstype: str
    source: str
    options: str


def parse_mountinfo(text: str) -> tuple[RawMount, ...]:
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        out.append(RawMount(
            devno=fields[2],
            mount_point=_unescape_octal(fields[4]),
            fstype=tail[0],
            source=_unescape_octal(tail[1]),
            options=fields[5] + ("," + tail[2] if len(tail) > 2 else ""),
        ))
    return tuple(out)


def parse_proc_swaps(text: str) -> tuple[str, ...]:
    """The active swap areas' paths (paths on this machine) from /proc/swaps."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields:
            out.append(_unescape_octal(fields[0]))
    return tuple(out)


def parse_dumpe2fs(text: str) -> int | None:
    """Filesystem size in bytes from `dumpe2fs -h`."""
    count = re.search(r"^Block count:\s+(\d+)\s*$", text, re.MULTILINE)
    size = re.search(r"^Block size:\s+(\d+)\s*$", text, re.MULTILINE)
    return int(count.group(1)) * int(size.group(1)) if count and size else None


def parse_xfs_info(text: str) -> int | None:
    """Data section size in bytes from `xfs_info MOUNTPOINT`."""
    match = re.search(r"^data\s+=\s+bsize=(\d+)\s+blocks=(\d+)", text, re.MULTILINE)
    return int(match.group(1)) * int(match.group(2)) if match else None


def parse_btrfs_show(text: str) -> int | None:
    """The device size btrfs uses, from `btrfs filesystem show --raw MOUNTPOINT`, when the
    filesystem has exactly one device (a root spread over several disks is not grown)."""
    sizes = re.findall(r"^\s*devid\s+\d+\s+size\s+(\d+)\s", text, re.MULTILINE)
    return int(sizes[0]) if len(sizes) == 1 else None


def parse_ntfsls(text: str) -> tuple[str, ...]:
    """Names in an NTFS root directory from `ntfsls -a -s`, less `.`, `..` and metadata files."""
    names = []
    for line in text.splitlines():
        name = line.rstrip("\r")
        if name in ("", ".", "..") or name.casefold() in NTFS_METAFILES:
            continue
        names.append(name)
    return tuple(names)


# ---------------------------------------------------------------------------
# Actions: each one printable; the service carries them out in order, and stops a
# chain at its first failure (every step needs the one before).


@attrs.frozen
class CreateTable:
    disk: str
    size: int

    def describe(self) -> str:
        return (f"partition /dev/{self.disk} ({human(self.size)}): a new GPT with one partition "
                f"'{PART_NAME}' over the whole disk")


@attrs.frozen
class MakeFilesystem:
    disk: str
    number: int
    fstype: str
    label: str = FS_LABEL

    def describe(self) -> str:
        return f"mkfs.{self.fstype} -L {self.label} on {partition_path(self.disk, self.number)}"


@attrs.frozen
class MountResource:
    disk: str
    number: int
    mount_point: str
    fstype: str
    options: str

    def describe(self) -> str:
        opts = f" -o {self.options}" if self.options else ""
        return f"mount -t {self.fstype}{opts} {partition_path(self.disk, self.number)} {self.mount_point}"


@attrs.frozen
class UpdateFstab:
    disk: str
    number: int
    uuid: str | None  # None: read from the filesystem made earlier in this pass
    mount_point: str
    fstype: str
    options: str

    def describe(self) -> str:
        device = partition_path(self.disk, self.number)
        what = f"UUID={self.uuid}" if self.uuid else f"the new filesystem on {device}"
        return f"write {FSTAB_PATH} entry: {what} on {self.mount_point}"


@attrs.frozen
class WriteWarning:
    path: str

    def describe(self) -> str:
        return f"write {self.path}"


@attrs.frozen
class SwapOff:
    path: str

    def describe(self) -> str:
        return f"swapoff {self.path}"


@attrs.frozen
class CreateSwapFile:
    path: str
    size: int  # bytes
    nocow: bool = False

    def describe(self) -> str:
        nocow = " (NOCOW)" if self.nocow else ""
        return f"make swap file {self.path} of {human(self.size)}{nocow}, mode 0600, mkswap"


@attrs.frozen
class SwapOn:
    path: str

    def describe(self) -> str:
        return f"swapon {self.path}"


@attrs.frozen
class GrowPartition:
    disk: str
    number: int
    label: str  # the table's: "gpt" or "dos"
    gain: int  # bytes
    relocate_backup: bool = False  # GPT backup header not at the end (the disk grew)

    def describe(self) -> str:
        return (f"grow partition {self.number} of /dev/{self.disk} to the end of the disk "
                f"(+{human(self.gain)})")


@attrs.frozen
class ResizeFilesystem:
    device: str  # kernel name of the partition or whole disk
    fstype: str
    mount_point: str
    gain: int | None  # bytes; None when the filesystem's size could not be read

    def describe(self) -> str:
        gain = f"+{human(self.gain)}" if self.gain is not None else "size not read"
        return f"grow the {self.fstype} filesystem on /dev/{self.device} ({self.mount_point}, {gain})"


@attrs.frozen
class RecordRootGrow:
    path: str = ROOTGROW_RECORD

    def describe(self) -> str:
        return f"record root grow done for this boot in {self.path}"


ResourceAction = CreateTable | MakeFilesystem | MountResource | UpdateFstab | WriteWarning
SwapAction = SwapOff | CreateSwapFile | SwapOn
GrowAction = GrowPartition | ResizeFilesystem | RecordRootGrow
Action = ResourceAction | SwapAction | GrowAction


@attrs.frozen
class DisksPlan:
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()  # refusals: worth one warning each
    info: tuple[str, ...] = ()  # normal absences (no resource disk, root not on a disk)

    def __add__(self, other: DisksPlan) -> DisksPlan:
        return DisksPlan(self.actions + other.actions, self.notes + other.notes, self.info + other.info)


# ---------------------------------------------------------------------------
# Small helpers


def human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.1f} {unit}" if value < 10 and value != int(value) else f"{int(value)} {unit}"
    return f"{size} B"


def partition_name(disk: str, number: int) -> str:
    """The kernel's name for partition `number` of `disk`: sdb1, but nvme0n1p1, loop3p1, mmcblk0p1."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def partition_path(disk: str, number: int) -> str:
    return f"/dev/{partition_name(disk, number)}"


def locate(devno: str, disks: Iterable[Disk]) -> tuple[Disk, Partition | None] | None:
    """The disk (and partition, None for the whole disk) whose device number is `devno`."""
    for disk in disks:
        if disk.devno == devno:
            return disk, None
        for part in disk.partitions:
            if part.devno == devno:
                return disk, part
    return None


def locate_name(name: str, disks: Iterable[Disk]) -> tuple[Disk, Partition | None] | None:
    for disk in disks:
        if disk.name == name:
            return disk, None
        for part in disk.partitions:
            if part.name == name:
                return disk, part
    return None


def root_mount(mounts: Iterable[Mount]) -> Mount | None:
    """The filesystem mounted at / (the last one, when mounts are stacked)."""
    found = None
    for mount in mounts:
        if mount.mount_point == "/":
            found = mount
    return found


def root_location(mount: Mount, disks: Iterable[Disk]) -> tuple[Disk, Partition | None] | None:
    """Where the root filesystem lives. btrfs reports an anonymous device number (0:NN),
    so the mount's source (/dev/vda2) is used when the number names no block device."""
    disks = tuple(disks)
    found = locate(mount.devno, disks)
    if found is None and mount.source.startswith("/dev/"):
        found = locate_name(posixpath.basename(mount.source), disks)
    return found


def _mounted(devno: str, mounts: Iterable[Mount]) -> tuple[str, ...]:
    return tuple(m.mount_point for m in mounts if m.devno == devno)


def _occupant(mount_point: str, mounts: Iterable[Mount]) -> Mount | None:
    found = None
    for mount in mounts:
        if mount.mount_point == mount_point:
            found = mount
    return found


# ---------------------------------------------------------------------------
# The resource disk


def resource_wanted(config: ResourceDisk, platform: str) -> bool:
    return config.format and platform in config.platforms


def is_platform_ntfs(sig: Signature) -> bool:
    return sig.fstype == "ntfs" and sig.label == AZURE_LABEL and not sig.ambivalent


def is_ours(sig: Signature) -> bool:
    """A filesystem the agent made (label), or a partition it made and had not formatted yet."""
    if sig.ambivalent:
        return False
    if sig.label == FS_LABEL and sig.fstype in MKFS_FORCE:
        return True
    return sig.part_name == PART_NAME and not sig.fstype


@attrs.frozen
class ResourceCandidate:
    disk: Disk
    found_by: str


def choose_resource_disk(
    disks: Iterable[Disk],
    *,
    link: str | None,
    root_disk: str | None,
    root_known: bool,
    signatures: Mapping[str, Signature],
    mounts: Iterable[Mount] = (),
) -> tuple[ResourceCandidate | None, DisksPlan]:
    """Which disk is the platform's resource disk, and (as a plan's notes) why none is.

    `link` is the kernel name /dev/disk/azure/resource points to (udev's rule on Azure
    images), trusted to name the disk; what is done to it is still decided by its
    contents. Without it, the disk is guessed only when the root's disk is known: the one
    disk, not the root's, not read-only, in use by nothing, with exactly one partition
    that is the platform's NTFS volume or the agent's own. Two such disks: none is chosen.
    """
    disks = tuple(disks)
    mounts = tuple(mounts)
    if link is not None:
        found = [d for d in disks if d.name == link]
        if not found:
            return None, DisksPlan(notes=(f"{RESOURCE_LINK} points to {link}, which is not a whole disk: "
                                          "nothing done",))
        if link == root_disk:
            return None, DisksPlan(notes=(f"{RESOURCE_LINK} points to {link}, the root filesystem's disk: "
                                          "left alone",))
        return ResourceCandidate(found[0], f"udev link {RESOURCE_LINK}"), DisksPlan()
    if not root_known:
        return None, DisksPlan(info=("the root filesystem's device is unknown, so no disk is taken for the "
                                     "resource disk without the /dev/disk/azure/resource link",))
    candidates = []
    for disk in disks:
        if disk.name == root_disk or disk.readonly or disk.holders or disk.slaves:
            continue
        if len(disk.partitions) != 1:
            continue
        part = disk.partitions[0]
        sig = signatures.get(part.name)
        if sig is None or part.holders:
            continue
        if (is_platform_ntfs(sig) and not _mounted(part.devno, mounts)) or is_ours(sig):
            candidates.append(disk)
    if len(candidates) > 1:
        names = ", ".join(f"/dev/{d.name}" for d in candidates)
        return None, DisksPlan(notes=(f"more than one disk looks like the resource disk ({names}): "
                                      "none is used",))
    if not candidates:
        return None, DisksPlan(info=("no resource disk found (no /dev/disk/azure/resource link, and no "
                                     "other disk with one NTFS 'Temporary Storage' partition)",))
    return ResourceCandidate(candidates[0], "the one other disk with the platform's layout"), DisksPlan()


@attrs.frozen
class ResourceSeen:
    """What was observed about the chosen disk."""

    disk_signature: Signature | None  # None: blkid could not be run
    partition_signature: Signature | None
    ntfs_files: tuple[str, ...] | None = None  # None: not listed (see ntfs_error)
    ntfs_error: str = ""
    mounts: tuple[Mount, ...] = ()
    fstab: str | None = None
    warning_present: bool = False
    swaps: tuple[str, ...] = ()  # active swap areas (guest paths)
    swap_file_size: int | None = None  # bytes; None when there is no swap file
    free_bytes: int | None = None  # available on the mounted resource filesystem
    tools: frozenset[str] = frozenset()


_MOUNT_OPTION = re.compile(r"[A-Za-z0-9_.:=+/@-]+")


def check_resource_config(config: ResourceDisk) -> tuple[str, str, str] | str:
    """(filesystem, mount point, mount options) to use, or the reason the config is refused."""
    fstype = config.filesystem.strip().lower()
    if fstype not in MKFS_FORCE and fstype != "ntfs":
        known = ", ".join(sorted(MKFS_FORCE))
        return f"[ResourceDisk] filesystem = {config.filesystem!r} is not one of {known} (or ntfs)"
    mount_point = config.mount_point.strip()
    if (not mount_point.startswith("/") or posixpath.normpath(mount_point) != mount_point
            or mount_point == "/" or any(c.isspace() or not c.isprintable() for c in mount_point)):
        return (f"[ResourceDisk] mount_point = {config.mount_point!r} must be an absolute, normalised "
                "path other than / without spaces")
    options = config.mount_options.strip()
    if options.lower() == "none":  # waagent.conf's spelling of "no options"
        options = ""
    if options and not all(_MOUNT_OPTION.fullmatch(o) for o in options.split(",")):
        return f"[ResourceDisk] mount_options = {config.mount_options!r} is not a comma-separated list"
    return fstype, mount_point, options


def fstab_options(options: str) -> str:
    extra = ["nofail", f"x-systemd.device-timeout={DEVICE_TIMEOUT}"]
    given = [o for o in options.split(",") if o] if options else ["defaults"]
    return ",".join(given + [o for o in extra if o not in given])


def fstab_line(uuid: str, mount_point: str, fstype: str, options: str) -> str:
    return f"UUID={uuid} {mount_point} {fstype} {fstab_options(options)} 0 2"


def _fstab_fields(line: str) -> list[str]:
    stripped = line.strip()
    return [] if not stripped or stripped.startswith("#") else stripped.split()


def fstab_ours(text: str | None) -> str | None:
    """The agent's entry (the line after its marker), or None."""
    lines = (text or "").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == FSTAB_MARKER:
            return lines[i + 1].strip()
    return None


def fstab_conflict(text: str | None, mount_point: str) -> str | None:
    """Another entry (not the agent's) for `mount_point`, which the agent leaves alone."""
    lines = (text or "").splitlines()
    for i, line in enumerate(lines):
        if i > 0 and lines[i - 1].strip() == FSTAB_MARKER:
            continue
        fields = _fstab_fields(line)
        if len(fields) >= 2 and _unescape_octal(fields[1]) == mount_point:
            return line.strip()
    return None


def fstab_with_entry(text: str | None, line: str) -> str:
    """fstab with the agent's entry set to `line`; every other line kept as it was."""
    lines = (text or "").splitlines(keepends=True)
    for i, existing in enumerate(lines[:-1]):
        if existing.strip() == FSTAB_MARKER:
            ending = "\r\n" if lines[i + 1].endswith("\r\n") else "\n"
            lines[i + 1] = line + ending
            return "".join(lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines) + f"{FSTAB_MARKER}\n{line}\n"


def plan_resource(config: ResourceDisk, candidate: ResourceCandidate, seen: ResourceSeen) -> DisksPlan:
    """What to do with the chosen disk: format it only in the platform's exact state,
    mount the agent's own, and leave everything else alone with a reason."""
    checked = check_resource_config(config)
    if isinstance(checked, str):
        return DisksPlan(notes=(checked + ": resource disk left alone",))
    fstype, mount_point, options = checked
    disk = candidate.disk
    where = f"resource disk /dev/{disk.name} ({candidate.found_by})"
    if len(disk.partitions) != 1:
        return DisksPlan(notes=(f"{where} has {len(disk.partitions)} partitions, not the platform's one: "
                                "never formatted",))
    part = disk.partitions[0]
    sig = seen.partition_signature
    if sig is None or seen.disk_signature is None:
        return DisksPlan(notes=(f"{where}: its signatures could not be read (blkid): left alone",))
    if sig.ambivalent:
        return DisksPlan(notes=(f"{where}: /dev/{part.name} holds more than one signature: never formatted",))
    if part.holders or disk.holders:
        users = ", ".join(part.holders + disk.holders)
        return DisksPlan(notes=(f"{where} is in use by {users}: left alone",))
    if is_ours(sig):
        made = not sig.fstype
        plan = DisksPlan()
        if made:  # partitioned by the agent, interrupted before mkfs
            if fstype == "ntfs":
                return DisksPlan(notes=(f"{where}: filesystem = ntfs: the agent's empty partition is "
                                        "left unformatted",))
            if f"mkfs.{fstype}" not in seen.tools:
                return DisksPlan(notes=(f"{where}: mkfs.{fstype} is not installed: not formatted",))
            plan = DisksPlan((MakeFilesystem(disk.name, part.number, fstype),))
        elif sig.fstype != fstype and fstype != "ntfs":
            plan = DisksPlan(notes=(f"{where} was formatted {sig.fstype} earlier; filesystem = {fstype} "
                                    "applies to a fresh resource disk only",))
        fs_now = fstype if made else sig.fstype
        return plan + _plan_mount(config, disk, part, sig.uuid or None, fs_now, mount_point, options,
                                  seen, fresh=made)
    if not is_platform_ntfs(sig):
        what = f"a {sig.fstype} filesystem" if sig.fstype else "no filesystem the agent knows"
        label = f" labelled {sig.label!r}" if sig.label else ""
        return DisksPlan(notes=(f"{where}: /dev/{part.name} holds {what}{label}, not the platform's empty "
                                "NTFS volume: never formatted",))
    if fstype == "ntfs":
        return DisksPlan(notes=(f"{where}: filesystem = ntfs: left as the platform made it",))
    if seen.ntfs_files is None:
        reason = seen.ntfs_error or "its files could not be listed"
        return DisksPlan(notes=(f"{where}: cannot prove the NTFS volume is empty ({reason}): "
                                "never formatted",))
    extra = [n for n in seen.ntfs_files if n.casefold() not in ALLOWED_NTFS_NAMES]
    if extra:
        return DisksPlan(notes=(f"{where}: the NTFS volume holds {len(extra)} file(s) besides "
                                f"{WARNING_NAME}: never formatted",))
    in_use = _mounted(part.devno, seen.mounts) + _mounted(disk.devno, seen.mounts)
    if in_use:
        return DisksPlan(notes=(f"{where} is mounted at {', '.join(in_use)}: never formatted",))
    if seen.disk_signature.pttype not in ("dos", "gpt"):
        return DisksPlan(notes=(f"{where}: no partition table blkid recognises: never formatted",))
    missing = [t for t in ("sfdisk", "partx", f"mkfs.{fstype}") if t not in seen.tools]
    if missing:
        return DisksPlan(notes=(f"{where}: {', '.join(missing)} not installed: not formatted",))
    made_here = DisksPlan((CreateTable(disk.name, disk.size), MakeFilesystem(disk.name, 1, fstype)))
    new_part = attrs.evolve(part, name=partition_name(disk.name, 1), number=1)
    return made_here + _plan_mount(config, disk, new_part, None, fstype, mount_point, options, seen,
                                   fresh=True)


def _plan_mount(
    config: ResourceDisk,
    disk: Disk,
    part: Partition,
    uuid: str | None,
    fstype: str,
    mount_point: str,
    options: str,
    seen: ResourceSeen,
    *,
    fresh: bool,
) -> DisksPlan:
    """Mount, fstab entry, warning file and swap for the agent's filesystem.

    `fresh`: the filesystem is made in this pass (nothing about it could be observed)."""
    mounted_at = () if fresh else _mounted(part.devno, seen.mounts)
    actions: list[Action] = []
    notes: list[str] = []
    if mounted_at and mount_point not in mounted_at:
        return DisksPlan(notes=(f"the resource disk is mounted at {', '.join(mounted_at)}, not "
                                f"{mount_point}: left there",))
    if not mounted_at:
        occupant = _occupant(mount_point, seen.mounts)
        if occupant is not None:
            return DisksPlan(notes=(f"{occupant.source} is already mounted at {mount_point}: the resource "
                                    "disk is not mounted over it",))
        if "mount" not in seen.tools:
            return DisksPlan(notes=("mount is not installed: the resource disk is not mounted",))
        actions.append(MountResource(disk.name, part.number, mount_point, fstype, options))
    conflict = fstab_conflict(seen.fstab, mount_point)
    if conflict is not None:
        notes.append(f"{FSTAB_PATH} already has an entry for {mount_point} ({conflict[:120]}): left as is")
    elif uuid is None or fstab_ours(seen.fstab) != fstab_line(uuid, mount_point, fstype, options):
        actions.append(UpdateFstab(disk.name, part.number, uuid, mount_point, fstype, options))
    if not mounted_at or not seen.warning_present:
        actions.append(WriteWarning(posixpath.join(mount_point, WARNING_NAME)))
    swap = plan_swap(config, fstype, mount_point, seen, part.size, mounted=bool(mounted_at))
    return DisksPlan(tuple(actions), tuple(notes)) + swap


def plan_swap(
    config: ResourceDisk, fstype: str, mount_point: str, seen: ResourceSeen, part_size: int, *, mounted: bool
) -> DisksPlan:
    """A swap file of swap_size_mb at MOUNT_POINT/swapfile, when enable_swap is set.

    An existing active one of the right size is left alone; any other is remade. A
    filesystem that cannot hold a swap file (anything but ext2/3/4, xfs, or btrfs with a
    NOCOW file) is refused, as is a size that does not fit. `mounted`: the resource
    filesystem is mounted now (otherwise what is at the path now is not on it)."""
    if not config.enable_swap:
        return DisksPlan()
    if config.swap_size_mb <= 0:
        return DisksPlan(notes=(f"enable_swap is set but swap_size_mb is {config.swap_size_mb}: "
                                "no swap file",))
    if fstype not in SWAP_FILESYSTEMS | NOCOW_SWAP_FILESYSTEMS:
        return DisksPlan(notes=(f"a {fstype} filesystem cannot hold a swap file: no swap",))
    path = posixpath.join(mount_point, SWAP_NAME)
    size = config.swap_size_mb * MIB
    active = mounted and path in seen.swaps
    existing = (seen.swap_file_size or 0) if mounted else 0
    if active and existing == size:
        return DisksPlan()
    available = (seen.free_bytes + existing) if (seen.free_bytes is not None and mounted) else part_size
    if size >= available:
        return DisksPlan(notes=(f"a swap file of {human(size)} does not fit on the resource disk "
                                f"({human(available)} free): no swap",))
    needed = ["mkswap", "swapon"] + (["chattr"] if fstype in NOCOW_SWAP_FILESYSTEMS else [])
    if active:
        needed.append("swapoff")
    missing = [t for t in needed if t not in seen.tools]
    if "fallocate" not in seen.tools and "dd" not in seen.tools:
        missing.append("fallocate or dd")
    if missing:
        return DisksPlan(notes=(f"{', '.join(missing)} not installed: no swap",))
    actions: list[Action] = [SwapOff(path)] if active else []
    actions += [CreateSwapFile(path, size, nocow=fstype in NOCOW_SWAP_FILESYSTEMS), SwapOn(path)]
    return DisksPlan(tuple(actions))


# ---------------------------------------------------------------------------
# Root grow


@attrs.frozen
class RootSeen:
    recorded: bool  # the record under /run says it was done this boot
    mount: Mount | None = None
    disk: Disk | None = None
    partition: Partition | None = None  # None: the root filesystem is on the whole disk
    table: PartitionTable | None = None
    fs_size: int | None = None  # bytes; None when it could not be read
    tools: frozenset[str] = frozenset()


def usable_end(disk_size: int, table: PartitionTable) -> int:
    """The byte offset past the last sector a partition may use."""
    sectors = disk_size // table.sector_size
    if table.label == "gpt":
        return (sectors - GPT_TRAILER_SECTORS) * table.sector_size
    return min(sectors, MBR_MAX_SECTORS) * table.sector_size


def plan_root_grow(config: RootGrow, seen: RootSeen) -> DisksPlan:
    """Grow the root's partition to the end of its disk and its filesystem to its device.

    Every outcome that looked at a disk ends with the record, so a root that cannot be
    grown (LVM, a tool missing) is looked at once per boot, not on every pass; a root on
    no disk at all (tmpfs, overlay, a sandbox directory) costs nothing to look at and
    records nothing. A failed step leaves no record, so the next pass tries again."""
    if not config.enabled or seen.recorded:
        return DisksPlan()
    record = DisksPlan((RecordRootGrow(),))
    mount = seen.mount
    if mount is None:
        return DisksPlan(info=("no filesystem is mounted at /: root not grown",))
    if mount.fstype not in RESIZE_TOOL:
        return DisksPlan(info=(f"the root filesystem is {mount.fstype}: not grown (ext2/3/4, xfs and "
                               "btrfs are)",))
    disk = seen.disk
    if disk is None:
        return DisksPlan(info=(f"the root filesystem ({mount.source}) is on no disk listed in /sys/block: "
                               "not grown",))
    if disk.slaves:
        return DisksPlan(notes=(f"the root filesystem is on /dev/{disk.name}, built on "
                                f"{', '.join(disk.slaves)} (LVM, RAID or encryption): not grown",)) + record
    if disk.readonly:
        return DisksPlan(notes=(f"/dev/{disk.name} is read-only: root not grown",)) + record
    tool = RESIZE_TOOL[mount.fstype]
    if tool not in seen.tools:
        return DisksPlan(notes=(f"{tool} is not installed: root not grown",)) + record
    part = seen.partition
    notes: list[str] = []
    actions: list[Action] = []
    device = part.name if part is not None else disk.name
    device_size = part.size if part is not None else disk.size
    if part is not None:
        grow = _plan_partition_grow(disk, part, seen, notes)
        if grow is not None:
            actions.append(grow)
            actions.append(ResizeFilesystem(device, mount.fstype, "/", None if seen.fs_size is None
                                            else max(0, device_size + grow.gain - seen.fs_size)))
            return DisksPlan(tuple(actions), tuple(notes)) + record
    if seen.fs_size is None:
        actions.append(ResizeFilesystem(device, mount.fstype, "/", None))
    elif device_size - seen.fs_size >= GROW_MIN_BYTES:
        actions.append(ResizeFilesystem(device, mount.fstype, "/", device_size - seen.fs_size))
    return DisksPlan(tuple(actions), tuple(notes)) + record


def _plan_partition_grow(
    disk: Disk, part: Partition, seen: RootSeen, notes: list[str]
) -> GrowPartition | None:
    table = seen.table
    where = f"root partition /dev/{part.name}"
    if table is None:
        notes.append(f"the partition table of /dev/{disk.name} could not be read (sfdisk): "
                     f"{where} not grown")
        return None
    ss = table.sector_size
    entry = next((e for e in table.entries if e.start * ss == part.start), None)
    if entry is None:
        notes.append(f"{where} is not in the partition table of /dev/{disk.name} as the kernel sees it "
                     "(changed since boot?): not grown")
        return None
    if table.label == "dos" and part.number > 4:
        notes.append(f"{where} is a logical partition: not grown")
        return None
    if any(e.start > entry.start for e in table.entries):
        notes.append(f"{where} is followed by another partition: not grown")
        return None
    gain = usable_end(disk.size, table) - (entry.start + entry.size) * ss
    if gain < GROW_MIN_BYTES:
        return None
    if "growpart" not in seen.tools and not {"sfdisk", "partx"} <= seen.tools:
        notes.append(f"neither growpart nor sfdisk and partx are installed: {where} not grown")
        return None
    sectors = disk.size // ss
    relocate = (table.label == "gpt" and table.last_lba is not None
                and table.last_lba < sectors - GPT_TRAILER_SECTORS - 1)
    return GrowPartition(disk.name, part.number, table.label, gain, relocate)
