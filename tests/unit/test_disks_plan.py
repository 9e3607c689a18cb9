"""Disks: every decision from observed values (resource disk, swap, root grow), the tools'
output parsers, the fstab edit, and the subsystem over fakes (dry run, sandbox, apply order)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain import disks as d
from guestagent.domain.config import Config, ResourceDisk, RootGrow
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.disks import Apply, DisksSubsystem
from guestagent.services.journal import ApplyJournal
from tests.fakes import FixedClock, InMemoryFileSystem, InMemoryUsers, RecordingRunner

GIB = 1024**3
MIB = d.MIB
NTFS = d.Signature(fstype="ntfs", label=d.AZURE_LABEL, uuid="6751D90630E3D08E")
DOS = d.Signature(pttype="dos")
OURS = d.Signature(fstype="ext4", label=d.FS_LABEL, uuid="1111-2222", part_name=d.PART_NAME)
ALL_TOOLS = frozenset(d.TOOLS)

# sda holds the root; sdb is the platform's resource disk as handed over.
ROOT_PART = d.Partition("sda1", 1, MIB, 30 * GIB, "8:1")
SDA = d.Disk("sda", 30 * GIB + 2 * MIB, "8:0", (ROOT_PART,))
RES_PART = d.Partition("sdb1", 1, MIB, 16 * GIB - MIB, "8:17")
SDB = d.Disk("sdb", 16 * GIB, "8:16", (RES_PART,))
ROOT_MOUNT = d.Mount("8:1", "/dev/sda1", "/", "ext4")


def seen(**changes: object) -> d.ResourceSeen:
    base = d.ResourceSeen(disk_signature=DOS, partition_signature=NTFS, ntfs_files=(d.WARNING_NAME,),
                          mounts=(ROOT_MOUNT,), fstab="", tools=ALL_TOOLS)
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def plan(config: ResourceDisk | None = None, disk: d.Disk = SDB, **changes: object) -> d.DisksPlan:
    candidate = d.ResourceCandidate(disk, "test")
    return d.plan_resource(config or ResourceDisk(), candidate, seen(**changes))


def kinds(p: d.DisksPlan) -> list[str]:
    return [type(a).__name__ for a in p.actions]


# ---------------------------------------------------------------------------- parsers


def test_blkid_export_unescapes_the_label() -> None:
    text = ("DEVNAME=/dev/sdb1\nLABEL=Temporary\\ Storage\nBLOCK_SIZE=512\nUUID=6751D90630E3D08E\n"
            "TYPE=ntfs\nPART_ENTRY_SCHEME=dos\nPART_ENTRY_NUMBER=1\n")
    assert d.parse_blkid_export(text) == d.Signature(fstype="ntfs", label="Temporary Storage",
                                                     uuid="6751D90630E3D08E")
    assert d.parse_blkid_export("DEVNAME=/dev/sdb\nPTUUID=78360399\nPTTYPE=dos\n").pttype == "dos"
    assert d.parse_blkid_export("").blank


def test_sfdisk_json() -> None:
    text = json.dumps({"partitiontable": {
        "label": "gpt", "device": "/dev/vda", "unit": "sectors", "firstlba": 2048, "lastlba": 131038,
        "sectorsize": 512, "partitions": [
            {"node": "/dev/vda1", "start": 2048, "size": 65536, "type": "0FC63DAF", "name": "root"}]}})
    table = d.parse_sfdisk_json(text)
    assert table == d.PartitionTable("gpt", 512, (d.TableEntry(2048, 65536, "0FC63DAF", "root"),), 131038)
    assert d.parse_sfdisk_json("not json") is None
    assert d.parse_sfdisk_json(json.dumps({"partitiontable": {"label": "sun"}})) is None
    assert d.parse_sfdisk_json(json.dumps({"partitiontable": {"label": "dos", "partitions": [{}]}})) is None


@given(st.text(max_size=300))
def test_parsers_never_raise(text: str) -> None:
    d.parse_sfdisk_json(text)
    d.parse_blkid_export(text)
    d.parse_mountinfo(text)
    d.parse_proc_swaps(text)
    d.parse_dumpe2fs(text)
    d.parse_xfs_info(text)
    d.parse_btrfs_show(text)
    d.parse_ntfsls(text)


def test_mountinfo_unescapes_and_keeps_the_device_number() -> None:
    text = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "90 68 8:17 / /mnt/my\\040disk rw,relatime - ext4 /dev/sdb1 rw,discard\n"
            "garbage line\n")
    mounts = d.parse_mountinfo(text)
    assert [(m.devno, m.mount_point, m.fstype, m.source) for m in mounts] == [
        ("8:1", "/", "ext4", "/dev/sda1"), ("8:17", "/mnt/my disk", "ext4", "/dev/sdb1")]


def test_proc_swaps_and_fs_sizes() -> None:
    swaps = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
             "/mnt/resource/swapfile                  file\t\t2097148\t\t0\t\t-2\n")
    assert d.parse_proc_swaps(swaps) == ("/mnt/resource/swapfile",)
    assert d.parse_dumpe2fs("Block count:              32768\nBlock size:               1024\n") == 32 * MIB
    xfs = ("meta-data=/dev/loop0p1 isize=512 agcount=8, agsize=20480 blks\n"
           "data     =                       bsize=4096   blocks=153339, imaxpct=25\n")
    assert d.parse_xfs_info(xfs) == 153339 * 4096
    one = "Label: none  uuid: x\n\tTotal devices 1 FS bytes used 1\n\tdevid    1 size 1073741824 used 2 path /dev/vda2\n"
    assert d.parse_btrfs_show(one) == GIB
    two = one + "\tdevid    2 size 1073741824 used 2 path /dev/vdb\n"
    assert d.parse_btrfs_show(two) is None  # a root over two disks is not grown


def test_ntfsls_drops_metadata_files_but_nothing_else() -> None:
    text = ".\n..\n$AttrDef\n$MFT\n$Extend\nDATALOSS_WARNING_README.txt\n$mydata\nhidden.txt\n"
    assert d.parse_ntfsls(text) == ("DATALOSS_WARNING_README.txt", "$mydata", "hidden.txt")


# ---------------------------------------------------------------------------- choosing the disk


def choose(disks: Sequence[d.Disk], sigs: dict[str, d.Signature], *, link: str | None = None,
           root_disk: str | None = "sda", root_known: bool = True,
           mounts: Sequence[d.Mount] = (ROOT_MOUNT,)) -> tuple[d.ResourceCandidate | None, d.DisksPlan]:
    return d.choose_resource_disk(disks, link=link, root_disk=root_disk, root_known=root_known,
                                  signatures=sigs, mounts=mounts)


def test_the_udev_link_names_the_disk() -> None:
    found, why = choose([SDA, SDB], {}, link="sdb")
    assert found is not None and found.disk == SDB and "azure/resource" in found.found_by
    assert why == d.DisksPlan()


def test_a_link_to_the_root_disk_or_to_nothing_is_refused() -> None:
    found, why = choose([SDA, SDB], {}, link="sda")
    assert found is None and "root filesystem's disk" in why.notes[0]
    found, why = choose([SDA, SDB], {}, link="sdb1")
    assert found is None and "not a whole disk" in why.notes[0]


def test_without_the_link_the_one_other_ntfs_disk_is_taken() -> None:
    data = d.Disk("sdc", 64 * GIB, "8:32", (d.Partition("sdc1", 1, MIB, 64 * GIB - MIB, "8:33"),))
    found, _ = choose([SDA, SDB, data], {"sdb1": NTFS, "sdc1": d.Signature(fstype="ext4", label="data")})
    assert found is not None and found.disk == SDB


def test_the_root_disk_is_never_taken_even_if_it_looks_right() -> None:
    found, why = choose([SDA], {"sda1": NTFS})
    assert found is None and why.info and not why.notes


def test_two_lookalikes_mean_none() -> None:
    sdc = d.Disk("sdc", 16 * GIB, "8:32", (d.Partition("sdc1", 1, MIB, 16 * GIB - MIB, "8:33"),))
    found, why = choose([SDA, SDB, sdc], {"sdb1": NTFS, "sdc1": NTFS})
    assert found is None and "more than one" in why.notes[0]


def test_no_guess_when_the_root_device_is_unknown() -> None:
    found, why = choose([SDA, SDB], {"sdb1": NTFS}, root_known=False, root_disk=None)
    assert found is None and "unknown" in why.info[0]


@pytest.mark.parametrize("disk", [
    attrs.evolve(SDB, readonly=True),
    attrs.evolve(SDB, holders=("dm-0",)),
    attrs.evolve(SDB, partitions=(attrs.evolve(RES_PART, holders=("md0",)),)),
    attrs.evolve(SDB, partitions=(RES_PART, d.Partition("sdb2", 2, 9 * GIB, GIB, "8:18"))),
    attrs.evolve(SDB, partitions=()),
])
def test_disks_in_use_or_of_another_shape_are_not_guessed(disk: d.Disk) -> None:
    found, _ = choose([SDA, disk], {"sdb1": NTFS, "sdb2": d.Signature()})
    assert found is None


def test_a_mounted_ntfs_is_not_guessed() -> None:
    found, _ = choose([SDA, SDB], {"sdb1": NTFS}, mounts=(ROOT_MOUNT, d.Mount("8:17", "/dev/sdb1", "/w", "ntfs")))
    assert found is None


def test_the_agents_own_disk_is_found_again() -> None:
    found, _ = choose([SDA, SDB], {"sdb1": OURS}, mounts=(ROOT_MOUNT, d.Mount("8:17", "/dev/sdb1", "/mnt/resource", "ext4")))
    assert found is not None and found.disk == SDB


# ---------------------------------------------------------------------------- the resource disk plan


def test_the_platforms_empty_ntfs_disk_is_formatted_and_mounted() -> None:
    p = plan()
    assert kinds(p) == ["CreateTable", "MakeFilesystem", "MountResource", "UpdateFstab", "WriteWarning"]
    assert p.notes == ()
    table, mkfs, mount, fstab, warning = p.actions
    assert table == d.CreateTable("sdb", 16 * GIB)
    assert mkfs == d.MakeFilesystem("sdb", 1, "ext4", d.FS_LABEL)
    assert mount == d.MountResource("sdb", 1, "/mnt/resource", "ext4", "")
    assert isinstance(fstab, d.UpdateFstab) and fstab.uuid is None
    assert warning == d.WriteWarning("/mnt/resource/DATALOSS_WARNING_README.txt")
    assert "sdb1" in mkfs.describe() and "GPT" in table.describe()


def test_nvme_and_loop_partition_names() -> None:
    assert d.partition_name("nvme0n1", 1) == "nvme0n1p1"
    assert d.partition_name("loop3", 1) == "loop3p1"
    assert d.partition_name("sdb", 1) == "sdb1"


@pytest.mark.parametrize("files", [
    (),
    ("DATALOSS_WARNING_README.txt", "System Volume Information"),
    ("dataloss_warning_readme.txt",),
])
def test_empty_means_nothing_but_the_warning_and_system_volume_information(files: tuple[str, ...]) -> None:
    assert kinds(plan(ntfs_files=files))[:2] == ["CreateTable", "MakeFilesystem"]


def test_an_ntfs_disk_holding_anyones_file_is_never_formatted() -> None:
    p = plan(ntfs_files=(d.WARNING_NAME, "backup.tar"))
    assert p.actions == () and "1 file(s)" in p.notes[0] and "never formatted" in p.notes[0]
    assert "backup.tar" not in p.notes[0]  # file names may be private: only counted


def test_a_disk_that_cannot_be_listed_is_never_formatted() -> None:
    p = plan(ntfs_files=None, ntfs_error="ntfsls (ntfs-3g) is not installed")
    assert p.actions == ()
    assert "cannot prove" in p.notes[0] and "ntfs-3g" in p.notes[0]


@pytest.mark.parametrize(("sig", "words"), [
    (d.Signature(fstype="ext4", label="data", uuid="u"), "a ext4 filesystem labelled 'data'"),
    (d.Signature(fstype="ntfs", label="Backup"), "a ntfs filesystem labelled 'Backup'"),
    (d.Signature(), "no filesystem the agent knows"),
    (d.Signature(fstype="xfs"), "a xfs filesystem"),
])
def test_another_filesystem_is_never_formatted(sig: d.Signature, words: str) -> None:
    p = plan(partition_signature=sig)
    assert p.actions == () and words in p.notes[0] and "never formatted" in p.notes[0]


def test_ambivalent_signatures_are_never_trusted() -> None:
    p = plan(partition_signature=d.Signature(ambivalent=True))
    assert p.actions == () and "more than one signature" in p.notes[0]


def test_a_mounted_platform_ntfs_is_never_formatted() -> None:
    mounts = (ROOT_MOUNT, d.Mount("8:17", "/dev/sdb1", "/media/x", "ntfs3"))
    p = plan(mounts=mounts)
    assert p.actions == () and "mounted at /media/x" in p.notes[0]


def test_unprobed_signatures_and_other_layouts_are_refused() -> None:
    assert plan(partition_signature=None).actions == ()
    assert plan(disk_signature=None).actions == ()
    two = attrs.evolve(SDB, partitions=(RES_PART, d.Partition("sdb2", 2, 9 * GIB, GIB, "8:18")))
    p = plan(disk=two)
    assert p.actions == () and "2 partitions" in p.notes[0]
    p = plan(disk_signature=d.Signature())
    assert p.actions == () and "partition table" in p.notes[0]


def test_missing_tools_refuse_before_anything_is_destroyed() -> None:
    p = plan(ResourceDisk(filesystem="xfs"), tools=ALL_TOOLS - {"mkfs.xfs"})
    assert p.actions == () and "mkfs.xfs" in p.notes[0]
    p = plan(tools=ALL_TOOLS - {"sfdisk"})
    assert p.actions == () and "sfdisk" in p.notes[0]


def test_filesystem_ntfs_leaves_the_disk_as_the_platform_made_it() -> None:
    p = plan(ResourceDisk(filesystem="ntfs"))
    assert p.actions == () and "left as the platform made it" in p.notes[0]


@pytest.mark.parametrize("config", [
    ResourceDisk(filesystem="zfs"),
    ResourceDisk(mount_point="mnt/resource"),
    ResourceDisk(mount_point="/mnt/../etc"),
    ResourceDisk(mount_point="/"),
    ResourceDisk(mount_point="/mnt/my disk"),
    ResourceDisk(mount_options="noatime, nodev"),
    ResourceDisk(mount_options="ro\n/dev/sda1 / ext4"),
])
def test_bad_config_leaves_the_disk_alone(config: ResourceDisk) -> None:
    p = plan(config)
    assert p.actions == () and "[ResourceDisk]" in p.notes[0]


def test_waagent_none_means_no_options() -> None:
    assert d.check_resource_config(ResourceDisk(mount_options="None")) == ("ext4", "/mnt/resource", "")


def test_xfs_and_options_reach_mkfs_mount_and_fstab() -> None:
    p = plan(ResourceDisk(filesystem="xfs", mount_point="/mnt", mount_options="nodev,nosuid"))
    mount = p.actions[2]
    assert mount == d.MountResource("sdb", 1, "/mnt", "xfs", "nodev,nosuid")
    assert mount.describe() == "mount -t xfs -o nodev,nosuid /dev/sdb1 /mnt"


def mounted_ours(**changes: object) -> d.DisksPlan:
    fstab = "/dev/sda1 / ext4 defaults 0 1\n" + d.FSTAB_MARKER + "\n" + d.fstab_line(
        "1111-2222", "/mnt/resource", "ext4", "") + "\n"
    base: dict[str, object] = {
        "partition_signature": OURS,
        "ntfs_files": None,
        "mounts": (ROOT_MOUNT, d.Mount("8:17", "/dev/sdb1", "/mnt/resource", "ext4")),
        "fstab": fstab,
        "warning_present": True,
    }
    base.update(changes)
    config = base.pop("config", None)
    assert config is None or isinstance(config, ResourceDisk)
    return plan(config, SDB, **base)


def test_already_formatted_and_mounted_is_a_no_op() -> None:
    assert mounted_ours() == d.DisksPlan()


def test_already_formatted_but_not_mounted_is_just_mounted() -> None:
    p = mounted_ours(mounts=(ROOT_MOUNT,), warning_present=False)
    assert kinds(p) == ["MountResource", "WriteWarning"]


def test_a_lost_fstab_entry_or_warning_file_comes_back() -> None:
    p = mounted_ours(fstab="", warning_present=False)
    assert kinds(p) == ["UpdateFstab", "WriteWarning"]
    assert p.actions[0] == d.UpdateFstab("sdb", 1, "1111-2222", "/mnt/resource", "ext4", "")


def test_formatted_earlier_with_another_filesystem_is_kept() -> None:
    p = mounted_ours(config=ResourceDisk(filesystem="xfs"))
    assert p.actions == () and "formatted ext4 earlier" in p.notes[0]


def test_interrupted_after_partitioning_is_formatted_again() -> None:
    p = plan(partition_signature=d.Signature(part_name=d.PART_NAME), ntfs_files=None)
    assert kinds(p) == ["MakeFilesystem", "MountResource", "UpdateFstab", "WriteWarning"]


def test_interrupted_with_filesystem_ntfs_is_left_unformatted() -> None:
    p = plan(ResourceDisk(filesystem="ntfs"), partition_signature=d.Signature(part_name=d.PART_NAME))
    assert p.actions == () and "left unformatted" in p.notes[0]


def test_mounted_somewhere_else_is_left_there() -> None:
    p = mounted_ours(mounts=(ROOT_MOUNT, d.Mount("8:17", "/dev/sdb1", "/mnt", "ext4")))
    assert p.actions == () and "mounted at /mnt" in p.notes[0]


def test_never_mounted_over_something_else() -> None:
    other = d.Mount("0:52", "tmpfs", "/mnt/resource", "tmpfs")
    p = mounted_ours(mounts=(ROOT_MOUNT, other))
    assert p.actions == () and "tmpfs is already mounted at /mnt/resource" in p.notes[0]


def test_someone_elses_fstab_entry_is_left_alone() -> None:
    fstab = "/dev/sda1 / ext4 defaults 0 1\n/dev/sdb1 /mnt/resource auto defaults,nofail 0 2\n"
    p = plan(fstab=fstab)
    assert "UpdateFstab" not in kinds(p) and "already has an entry" in p.notes[0]


# ---------------------------------------------------------------------------- fstab text


def test_fstab_entry_is_appended_then_replaced_and_other_lines_kept() -> None:
    original = "# static file system information\r\nUUID=abc / ext4 errors=remount-ro 0 1"
    line = d.fstab_line("u1", "/mnt/resource", "ext4", "")
    once = d.fstab_with_entry(original, line)
    assert once.startswith(original + "\n")
    assert once.endswith(f"{d.FSTAB_MARKER}\n{line}\n")
    assert "nofail" in line and "x-systemd.device-timeout=" in line and line.startswith("UUID=u1 ")
    assert d.fstab_ours(once) == line
    line2 = d.fstab_line("u2", "/mnt/resource", "xfs", "nodev")
    twice = d.fstab_with_entry(once, line2)
    assert twice == once.replace(line, line2)
    assert d.fstab_conflict(twice, "/mnt/resource") is None
    assert d.fstab_with_entry(twice, line2) == twice


def test_fstab_options_keep_the_users_and_add_nofail_once() -> None:
    assert d.fstab_options("") == "defaults,nofail,x-systemd.device-timeout=30s"
    assert d.fstab_options("nodev,nofail") == "nodev,nofail,x-systemd.device-timeout=30s"


def test_fstab_conflict_ignores_comments() -> None:
    assert d.fstab_conflict("#/dev/sdb1 /mnt/resource ext4 defaults 0 0\n", "/mnt/resource") is None
    assert d.fstab_conflict("LABEL=x /mnt/resource ext4 defaults 0 0\n", "/mnt/resource") is not None


# ---------------------------------------------------------------------------- swap


SWAP = ResourceDisk(enable_swap=True, swap_size_mb=2048)
SWAP_PATH = "/mnt/resource/swapfile"


def test_swap_file_is_made_on_a_fresh_disk() -> None:
    p = plan(SWAP)
    assert kinds(p)[-2:] == ["CreateSwapFile", "SwapOn"]
    assert p.actions[-2] == d.CreateSwapFile(SWAP_PATH, 2 * GIB, nocow=False)


def test_active_swap_of_the_right_size_is_left_alone() -> None:
    assert mounted_ours(config=SWAP, swaps=(SWAP_PATH,), swap_file_size=2 * GIB, free_bytes=10 * GIB) == d.DisksPlan()


def test_swap_of_another_size_is_remade() -> None:
    p = mounted_ours(config=SWAP, swaps=(SWAP_PATH,), swap_file_size=GIB, free_bytes=10 * GIB)
    assert kinds(p) == ["SwapOff", "CreateSwapFile", "SwapOn"]


def test_an_inactive_swap_file_is_remade_and_turned_on() -> None:
    p = mounted_ours(config=SWAP, swap_file_size=2 * GIB, free_bytes=10 * GIB)
    assert kinds(p) == ["CreateSwapFile", "SwapOn"]


def test_swap_that_does_not_fit_is_refused() -> None:
    p = mounted_ours(config=attrs.evolve(SWAP, swap_size_mb=20 * 1024), free_bytes=10 * GIB)
    assert p.actions == () and "does not fit" in p.notes[0]
    p = plan(attrs.evolve(SWAP, swap_size_mb=17 * 1024))  # bigger than the fresh partition
    assert "CreateSwapFile" not in kinds(p) and "does not fit" in p.notes[-1]


def test_swap_size_zero_is_a_note_not_a_file() -> None:
    p = plan(attrs.evolve(SWAP, swap_size_mb=0))
    assert "CreateSwapFile" not in kinds(p) and "swap_size_mb is 0" in p.notes[-1]


@pytest.mark.parametrize("fstype", ["tmpfs", "nfs", "ntfs", "vfat", "zfs"])
def test_filesystems_that_cannot_hold_swap_are_refused(fstype: str) -> None:
    p = d.plan_swap(SWAP, fstype, "/mnt/resource", seen(), 16 * GIB, mounted=True)
    assert p.actions == () and f"a {fstype} filesystem cannot hold a swap file" in p.notes[0]


def test_btrfs_swap_file_is_nocow() -> None:
    p = d.plan_swap(SWAP, "btrfs", "/mnt/resource", seen(), 16 * GIB, mounted=False)
    assert p.actions[0] == d.CreateSwapFile(SWAP_PATH, 2 * GIB, nocow=True)
    p = d.plan_swap(SWAP, "btrfs", "/mnt/resource", seen(tools=ALL_TOOLS - {"chattr"}), 16 * GIB, mounted=False)
    assert p.actions == () and "chattr" in p.notes[0]


def test_swap_disabled_plans_nothing() -> None:
    assert d.plan_swap(ResourceDisk(), "ext4", "/mnt/resource", seen(), GIB, mounted=True) == d.DisksPlan()


# ---------------------------------------------------------------------------- root grow

SECTORS_16G = 16 * GIB // 512
GPT_ROOT = d.Partition("vda1", 1, MIB, 2 * GIB, "254:1")
VDA = d.Disk("vda", 16 * GIB, "254:0", (GPT_ROOT,))


def table(label: str = "gpt", *entries: d.TableEntry, last_lba: int | None = None) -> d.PartitionTable:
    entries = entries or (d.TableEntry(2048, 2 * GIB // 512),)
    if last_lba is None and label == "gpt":
        last_lba = SECTORS_16G - 34
    return d.PartitionTable(label, 512, entries, last_lba)


def root_seen(**changes: object) -> d.RootSeen:
    base = d.RootSeen(recorded=False, mount=d.Mount("254:1", "/dev/vda1", "/", "ext4"), disk=VDA,
                      partition=GPT_ROOT, table=table(), fs_size=2 * GIB, tools=ALL_TOOLS)
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def grow(**changes: object) -> d.DisksPlan:
    return d.plan_root_grow(RootGrow(), root_seen(**changes))


def test_a_small_root_partition_is_grown_with_its_filesystem() -> None:
    p = grow()
    assert kinds(p) == ["GrowPartition", "ResizeFilesystem", "RecordRootGrow"]
    part, fs, _ = p.actions
    gain = (SECTORS_16G - 33) * 512 - (2048 * 512 + 2 * GIB)
    assert part == d.GrowPartition("vda", 1, "gpt", gain, relocate_backup=False)
    assert fs == d.ResizeFilesystem("vda1", "ext4", "/", gain)


def test_a_disk_grown_after_the_gpt_was_written_needs_its_backup_header_moved() -> None:
    p = grow(table=table("gpt", last_lba=8 * GIB // 512 - 34))
    assert isinstance(p.actions[0], d.GrowPartition) and p.actions[0].relocate_backup


def test_already_full_size_is_a_no_op() -> None:
    full = d.TableEntry(2048, SECTORS_16G - 33 - 2048)
    part = attrs.evolve(GPT_ROOT, size=full.size * 512)
    p = grow(partition=part, table=table("gpt", full), fs_size=part.size - 3 * 1024)
    assert kinds(p) == ["RecordRootGrow"] and p.notes == ()


def test_free_space_below_the_threshold_is_not_worth_a_grow() -> None:
    almost = d.TableEntry(2048, SECTORS_16G - 33 - 2048 - (d.GROW_MIN_BYTES // 512 - 1))
    part = attrs.evolve(GPT_ROOT, size=almost.size * 512)
    assert kinds(grow(partition=part, table=table("gpt", almost), fs_size=part.size)) == ["RecordRootGrow"]
    enough = d.TableEntry(2048, SECTORS_16G - 33 - 2048 - d.GROW_MIN_BYTES // 512)
    part = attrs.evolve(GPT_ROOT, size=enough.size * 512)
    assert kinds(grow(partition=part, table=table("gpt", enough), fs_size=part.size))[0] == "GrowPartition"


def test_a_full_partition_with_a_small_filesystem_gets_only_the_resize() -> None:
    full = d.TableEntry(2048, SECTORS_16G - 33 - 2048)
    part = attrs.evolve(GPT_ROOT, size=full.size * 512)
    p = grow(partition=part, table=table("gpt", full), fs_size=GIB)
    assert kinds(p) == ["ResizeFilesystem", "RecordRootGrow"]


def test_a_whole_disk_root_gets_only_its_filesystem_grown() -> None:
    disk = d.Disk("vda", 4 * GIB, "254:0")
    mount = d.Mount("254:0", "/dev/root", "/", "ext4")
    p = grow(disk=disk, partition=None, table=None, mount=mount, fs_size=GIB)
    assert kinds(p) == ["ResizeFilesystem", "RecordRootGrow"]
    assert p.actions[0] == d.ResizeFilesystem("vda", "ext4", "/", 3 * GIB)
    assert kinds(grow(disk=disk, partition=None, table=None, mount=mount, fs_size=4 * GIB)) == ["RecordRootGrow"]


def test_an_unreadable_filesystem_size_still_resizes() -> None:
    disk = d.Disk("vda", 4 * GIB, "254:0")
    p = grow(disk=disk, partition=None, table=None, fs_size=None)
    assert p.actions[0] == d.ResizeFilesystem("vda", "ext4", "/", None)


def test_mbr_stops_at_two_tebibytes() -> None:
    big = d.Disk("vda", 4 * 1024 * GIB, "254:0", (GPT_ROOT,))
    p = grow(disk=big, table=table("dos"))
    assert isinstance(p.actions[0], d.GrowPartition)
    assert p.actions[0].gain == 2**32 * 512 - (MIB + 2 * GIB)


@pytest.mark.parametrize(("changes", "words"), [
    ({"table": table("gpt", d.TableEntry(2048, 2 * GIB // 512), d.TableEntry(8 * GIB // 512, 2048))},
     "followed by another partition"),
    ({"partition": attrs.evolve(GPT_ROOT, number=5), "table": table("dos")}, "logical partition"),
    ({"table": None}, "could not be read"),
    ({"table": table("gpt", d.TableEntry(4096, 100))}, "not in the partition table"),
    ({"tools": ALL_TOOLS - {"growpart", "sfdisk"}}, "neither growpart nor sfdisk"),
])
def test_partitions_that_cannot_be_grown_say_why(changes: dict[str, object], words: str) -> None:
    p = grow(**changes)
    assert "GrowPartition" not in kinds(p) and words in p.notes[0] and kinds(p)[-1] == "RecordRootGrow"


def test_sfdisk_and_partx_do_without_growpart() -> None:
    assert kinds(grow(tools=ALL_TOOLS - {"growpart"}))[0] == "GrowPartition"


@pytest.mark.parametrize(("changes", "where"), [
    ({"disk": attrs.evolve(VDA, slaves=("vda2",))}, "notes"),
    ({"disk": attrs.evolve(VDA, readonly=True)}, "notes"),
    ({"tools": ALL_TOOLS - {"resize2fs"}}, "notes"),
    ({"mount": d.Mount("0:31", "overlay", "/", "overlay")}, "info"),
    ({"mount": None}, "info"),
    ({"disk": None, "partition": None}, "info"),
])
def test_roots_that_cannot_be_grown_say_why(changes: dict[str, object], where: str) -> None:
    p = grow(**changes)
    assert getattr(p, where)
    # A disk looked at is recorded (not looked at again this boot); no disk costs nothing.
    assert kinds(p) == (["RecordRootGrow"] if where == "notes" else [])


def test_disabled_or_done_this_boot_plans_nothing() -> None:
    assert d.plan_root_grow(RootGrow(enabled=False), root_seen()) == d.DisksPlan()
    assert grow(recorded=True) == d.DisksPlan()


def test_btrfs_root_is_found_by_its_source() -> None:
    mount = d.Mount("0:33", "/dev/vda1", "/", "btrfs")
    assert d.root_location(mount, [VDA]) == (VDA, GPT_ROOT)
    assert d.root_location(d.Mount("254:1", "/dev/root", "/", "ext4"), [VDA]) == (VDA, GPT_ROOT)
    assert d.root_location(d.Mount("0:20", "tmpfs", "/", "tmpfs"), [VDA]) is None


def test_human_sizes() -> None:
    assert d.human(2 * GIB) == "2 GiB"
    assert d.human(1536 * MIB) == "1.5 GiB"
    assert d.human(100) == "100 B"


# ---------------------------------------------------------------------------- the subsystem over fakes


@attrs.define
class FakeBlock:
    """The BlockDevices port from fixed values; sdb turns into the agent's disk once mkfs ran."""

    disk_list: list[d.Disk]
    sigs: dict[str, d.Signature]
    mount_list: list[d.Mount]
    link: str | None = None
    files: tuple[str, ...] | None = (d.WARNING_NAME,)
    swap_list: tuple[str, ...] = ()
    table: d.PartitionTable | None = None
    fs_size: int | None = None
    asked: list[str] = attrs.Factory(list)

    def disks(self) -> tuple[d.Disk, ...]:
        return tuple(self.disk_list)

    def device_path(self, name: str) -> str:
        return f"/host/dev/{name}"

    def resource_link(self) -> str | None:
        return self.link

    def signature(self, name: str) -> d.Signature | None:
        self.asked.append(f"signature {name}")
        return self.sigs.get(name, d.Signature())

    def partition_table(self, disk: str) -> d.PartitionTable | None:
        return self.table

    def ntfs_files(self, name: str) -> tuple[tuple[str, ...] | None, str]:
        self.asked.append(f"ntfs {name}")
        return self.files, "" if self.files is not None else "no ntfsls"

    def mounts(self) -> tuple[d.Mount, ...]:
        return tuple(self.mount_list)

    def swaps(self) -> tuple[str, ...]:
        return self.swap_list

    def filesystem_size(self, name: str, fstype: str, mount_point: str) -> int | None:
        return self.fs_size

    def free_bytes(self, path: str) -> int | None:
        return None

    def file_size(self, path: str) -> int | None:
        return None

    def wait_for_partition(self, disk: str, number: int, timeout: float) -> str | None:
        return d.partition_name(disk, number)


def azure() -> InstanceMetadata:
    return InstanceMetadata("azure", "vm-1")


def make(config: Config | None = None, *, root: str = "/", dry_run: bool = False,
         respond: object = None) -> tuple[Context, RecordingRunner, InMemoryFileSystem]:
    fs = InMemoryFileSystem("/host")
    runner = RecordingRunner(respond=respond)  # type: ignore[arg-type]
    ctx = Context(config=config or Config(), fs=fs, runner=runner, users=InMemoryUsers(),
                  clock=FixedClock(), root=root, dry_run=dry_run)
    return ctx, runner, fs


def fresh_block() -> FakeBlock:
    full = d.TableEntry(2048, (SDA.size // 512) - 33 - 2048)
    root_part = attrs.evolve(ROOT_PART, size=full.size * 512)
    sda = attrs.evolve(SDA, partitions=(root_part,))
    return FakeBlock([sda, SDB], {"sdb": DOS, "sdb1": NTFS}, [ROOT_MOUNT], link="sdb",
                     table=d.PartitionTable("gpt", 512, (full,), SDA.size // 512 - 34), fs_size=root_part.size)


def test_apply_formats_mounts_and_writes_fstab_and_warning_in_order() -> None:
    block = fresh_block()

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "mkfs.ext4":
            block.sigs["sdb1"] = OURS
        return None

    ctx, runner, fs = make(respond=respond)
    outcome = DisksSubsystem(block).reconcile(ctx, azure())
    assert outcome.failures == ()
    programs = [c[0] for c in runner.calls]
    assert programs == ["sfdisk", "mkfs.ext4", "mount"]
    assert runner.calls[0] == ("sfdisk", "--wipe", "always", "--wipe-partitions", "always", "--quiet", "/host/dev/sdb")
    assert runner.calls[1] == ("mkfs.ext4", "-F", "-q", "-L", d.FS_LABEL, "/host/dev/sdb1")
    assert runner.calls[2] == ("mount", "-t", "ext4", "/host/dev/sdb1", "/host/mnt/resource")
    fstab = fs.read_text("/etc/fstab") or ""
    assert f"{d.FSTAB_MARKER}\nUUID=1111-2222 /mnt/resource ext4 defaults,nofail," in fstab
    assert "temporary storage" in (fs.read_text("/mnt/resource/DATALOSS_WARNING_README.txt") or "")
    assert fs.read_text(d.ROOTGROW_RECORD) is not None
    assert outcome.actions[0].startswith("record root grow")


def test_a_failed_step_stops_its_chain_and_records_nothing() -> None:
    block = fresh_block()

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "mkfs.ext4":
            return CommandResult(argv, 1, "", "mkfs.ext4: no space")
        return None

    ctx, runner, fs = make(respond=respond)
    outcome = DisksSubsystem(block).reconcile(ctx, azure())
    assert [c[0] for c in runner.calls] == ["sfdisk", "mkfs.ext4"]
    assert len(outcome.failures) == 1 and "no space" in outcome.failures[0]
    assert fs.read_text("/etc/fstab") is None


def test_the_destructive_step_looks_again_first() -> None:
    block = fresh_block()
    ctx, runner, _ = make()
    sub = DisksSubsystem(block)
    planned = sub.plan(ctx, azure())
    assert "CreateTable" in kinds(planned)
    block.sigs["sdb1"] = d.Signature(fstype="ext4", label="someone")  # changed behind the plan's back
    journal = ApplyJournal(ctx.log)
    Apply(ctx, block).chain([a for a in planned.actions if not isinstance(a, d.RecordRootGrow)], journal)
    assert runner.calls == [] and "changed since" in journal.failures[0]


def test_dry_run_and_sandbox_change_nothing_but_print_the_plan() -> None:
    for kwargs in ({"dry_run": True}, {"root": "/tmp/sandbox"}):
        block = fresh_block()
        ctx, runner, fs = make(**kwargs)
        outcome = DisksSubsystem(block).reconcile(ctx, azure())
        assert runner.calls == [] and fs.writes == {}
        assert any("mkfs.ext4" in a for a in outcome.actions)
        if "root" in kwargs:
            assert all(a.endswith("(not run: sandbox root)") for a in outcome.actions)


def test_off_azure_the_resource_disk_is_not_even_looked_at() -> None:
    block = fresh_block()
    ctx, runner, _ = make()
    outcome = DisksSubsystem(block).reconcile(ctx, InstanceMetadata("gce", "1"))
    assert block.asked == [] and runner.calls == []
    assert [a for a in outcome.actions if "mkfs" in a] == []


def test_config_can_ask_for_it_on_another_platform() -> None:
    block = fresh_block()
    ctx, _, _ = make(Config(ResourceDisk=ResourceDisk(platforms=("nocloud",))), dry_run=True)
    outcome = DisksSubsystem(block).reconcile(ctx, InstanceMetadata("nocloud", "1"))
    assert any("mkfs.ext4" in a for a in outcome.actions)


def test_enabled_follows_config_and_platform() -> None:
    sub = DisksSubsystem(fresh_block())
    off = Config(RootGrow=RootGrow(enabled=False))
    ctx, _, _ = make(off)
    assert not sub.enabled(ctx, InstanceMetadata("gce", "1"))
    assert sub.enabled(ctx, azure())
    ctx, _, _ = make(attrs.evolve(off, ResourceDisk=ResourceDisk(format=False)))
    assert not sub.enabled(ctx, azure())


def test_second_pass_after_success_does_nothing() -> None:
    block = fresh_block()

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "mkfs.ext4":
            block.sigs["sdb1"] = OURS
        if argv[0] == "mount":
            block.mount_list.append(d.Mount("8:17", "/dev/sdb1", "/mnt/resource", "ext4"))
        return None

    ctx, runner, _ = make(respond=respond)
    sub = DisksSubsystem(block)
    assert sub.reconcile(ctx, azure()).failures == ()
    runner.calls.clear()
    again = sub.reconcile(ctx, azure())
    assert again.actions == () and again.failures == () and runner.calls == []


def test_root_grow_runs_growpart_then_the_resizer() -> None:
    block = FakeBlock([VDA], {}, [d.Mount("254:1", "/dev/vda1", "/", "xfs")], table=table(), fs_size=2 * GIB)

    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "growpart":  # the kernel now sees the grown partition
            block.disk_list = [attrs.evolve(VDA, partitions=(attrs.evolve(GPT_ROOT, size=15 * GIB),))]
        return None

    ctx, runner, fs = make(respond=respond)
    planned = DisksSubsystem(block).plan(ctx, InstanceMetadata("gce", "1"))
    assert kinds(planned) == ["GrowPartition", "ResizeFilesystem", "RecordRootGrow"]
    journal = ApplyJournal(ctx.log)
    Apply(ctx, block).chain(planned.actions, journal)
    assert journal.failures == []
    assert runner.calls == [("growpart", "/host/dev/vda", "1"), ("xfs_growfs", "/host")]
    assert fs.read_text(d.ROOTGROW_RECORD) is not None


def test_growpart_nochange_is_not_a_failure_but_a_kernel_that_did_not_notice_is() -> None:
    block = FakeBlock([VDA], {}, [])
    action = d.GrowPartition("vda", 1, "gpt", GIB)
    nochange = CommandResult(("growpart",), 1, "NOCHANGE: partition 1 is size 100. it cannot be grown\n", "")
    ctx, _, _ = make(respond=lambda argv: nochange)
    journal = ApplyJournal(ctx.log)
    Apply(ctx, block).chain([action], journal)
    assert journal.failures == []
    ctx, _, _ = make()
    journal = ApplyJournal(ctx.log)
    Apply(ctx, block).chain([action], journal)
    assert "old size" in journal.failures[0]


def test_sfdisk_fallback_without_growpart() -> None:
    block = FakeBlock([VDA], {}, [])
    ctx, runner, _ = make()
    runner._which = lambda p: None if p == "growpart" else f"/usr/bin/{p}"
    journal = ApplyJournal(ctx.log)
    Apply(ctx, block).chain([d.GrowPartition("vda", 1, "gpt", GIB, relocate_backup=True)], journal)
    assert runner.calls[:3] == [
        ("sfdisk", "--no-reread", "--relocate", "gpt-bak-std", "/host/dev/vda"),
        ("sfdisk", "--no-reread", "-N", "1", "/host/dev/vda"),
        ("partx", "-u", "--nr", "1", "/host/dev/vda"),
    ]
    assert runner.last_run is not None


def test_swap_file_steps() -> None:
    def respond(argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "fallocate":
            return CommandResult(argv, 1, "", "fallocate: Operation not supported")
        return None

    ctx, runner, fs = make(respond=respond)
    journal = ApplyJournal(ctx.log)
    actions: list[d.Action] = [d.CreateSwapFile(SWAP_PATH, 2 * GIB, nocow=True), d.SwapOn(SWAP_PATH)]
    Apply(ctx, FakeBlock([], {}, [])).chain(actions, journal)
    assert journal.failures == []
    host = "/host/mnt/resource/swapfile"
    assert runner.calls == [
        ("chattr", "+C", host), ("fallocate", "-l", str(2 * GIB), host),
        ("dd", "if=/dev/zero", f"of={host}", "bs=1M", "count=2048", "status=none"),
        ("mkswap", host), ("swapon", host),
    ]
    entry = fs.entry(SWAP_PATH)
    assert entry is not None and entry.mode == 0o600


def test_without_a_block_port_it_fails_plainly() -> None:
    ctx, _, _ = make()
    outcome = DisksSubsystem().reconcile(ctx, azure())
    assert outcome.failures and "no block-device reader" in outcome.failures[0]
