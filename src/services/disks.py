"""Disks: the resource disk (format, mount, fstab, warning file), a swap file on it, and root grow.

Observation goes through the BlockDevices port (sysfs under the root, blkid,
sfdisk --json, ntfsls, the mount table); every decision is a pure function
of guestagent.domain.disks; every change runs through the CommandRunner
(sfdisk, partx, mkfs, mount, growpart, resize2fs, xfs_growfs, mkswap,
swapon) or the FileSystem (/etc/fstab, the warning file, the record under
/run). So a sandbox root (ctx.owns_machine False) lists the plan and changes
nothing, and --dry-run prints it.

Two chains run one after the other, each stopping at its first failure
(every step needs the one before): root grow, then the resource disk with its
swap file. Nothing failed is recorded, so the scheduler's retry runs the
chain again; each step is safe to repeat (the plan is made afresh from what
the disks show then).

The subsystem runs after READY (`after_ready`): sshd never waits for a
mkfs on a large resource disk.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Sequence

from guestagent.domain import disks as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.block import BlockDevices
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

PARTITION_TIMEOUT = 60.0
MKFS_TIMEOUT = 1800.0  # mkfs discards the whole disk first; large disks take a while
MOUNT_TIMEOUT = 120.0
GROW_TIMEOUT = 300.0
SWAP_FILE_TIMEOUT = 3600.0  # dd of many GiB when fallocate cannot be used
SWAP_TIMEOUT = 300.0


class StepFailed(Exception):
    """One step of a chain did not work; the message is safe to log."""


def available_tools(ctx: Context) -> frozenset[str]:
    return frozenset(t for t in domain.TOOLS if ctx.runner.which(t) is not None)


def _recorded(ctx: Context) -> bool:
    try:
        return ctx.fs.read_text(domain.ROOTGROW_RECORD) is not None
    except (OSError, UnsafePath, UnicodeError):
        return False


def observe_root(
    ctx: Context, block: BlockDevices, disks: Sequence[domain.Disk], mounts: Sequence[domain.Mount],
    tools: frozenset[str],
) -> domain.RootSeen:
    if not ctx.config.RootGrow.enabled:
        return domain.RootSeen(recorded=False, tools=tools)
    if _recorded(ctx):
        return domain.RootSeen(recorded=True, tools=tools)
    mount = domain.root_mount(mounts)
    if mount is None:
        return domain.RootSeen(recorded=False, tools=tools)
    found = domain.root_location(mount, disks)
    if found is None:
        return domain.RootSeen(recorded=False, mount=mount, tools=tools)
    disk, part = found
    table = block.partition_table(disk.name) if part is not None else None
    device = part.name if part is not None else disk.name
    fs_size = block.filesystem_size(device, mount.fstype, "/")
    return domain.RootSeen(False, mount, disk, part, table, fs_size, tools)


def observe_resource(
    ctx: Context, block: BlockDevices, disks: Sequence[domain.Disk], mounts: Sequence[domain.Mount],
    tools: frozenset[str],
) -> tuple[domain.ResourceCandidate | None, domain.ResourceSeen | None, domain.DisksPlan]:
    """The chosen disk and what it holds, or None and the reason as a plan's notes."""
    root = domain.root_mount(mounts)
    where = domain.root_location(root, disks) if root is not None else None
    link = block.resource_link()
    signatures: dict[str, domain.Signature] = {}
    if link is None and root is not None:
        root_disk = where[0].name if where is not None else None
        for disk in disks:
            if disk.name != root_disk and len(disk.partitions) == 1:
                sig = block.signature(disk.partitions[0].name)
                if sig is not None:
                    signatures[disk.partitions[0].name] = sig
    candidate, why = domain.choose_resource_disk(
        disks,
        link=link,
        root_disk=where[0].name if where is not None else None,
        root_known=root is not None,
        signatures=signatures,
        mounts=mounts,
    )
    if candidate is None:
        return None, None, why
    disk = candidate.disk
    part_sig = None
    ntfs_files: tuple[str, ...] | None = None
    ntfs_error = ""
    if len(disk.partitions) == 1:
        name = disk.partitions[0].name
        part_sig = signatures.get(name) or block.signature(name)
        if part_sig is not None and domain.is_platform_ntfs(part_sig):
            ntfs_files, ntfs_error = block.ntfs_files(name)
    config = ctx.config.ResourceDisk
    checked = domain.check_resource_config(config)
    mount_point = checked[1] if not isinstance(checked, str) else None
    warning_present = False
    swap_size = free = None
    if mount_point is not None:
        with contextlib.suppress(OSError, UnsafePath):
            warning_present = ctx.fs.stat(posixpath.join(mount_point, domain.WARNING_NAME)) is not None
        swap_size = block.file_size(posixpath.join(mount_point, domain.SWAP_NAME))
        free = block.free_bytes(mount_point)
    seen = domain.ResourceSeen(
        disk_signature=block.signature(disk.name),
        partition_signature=part_sig,
        ntfs_files=ntfs_files,
        ntfs_error=ntfs_error,
        mounts=tuple(mounts),
        fstab=ctx.fs.read_text(domain.FSTAB_PATH),
        warning_present=warning_present,
        swaps=block.swaps(),
        swap_file_size=swap_size,
        free_bytes=free,
        tools=tools,
    )
    return candidate, seen, why


class DisksSubsystem:
    name = "disks"
    # A mkfs on a large resource disk must not hold sshd back.
    after_ready = True

    def __init__(self, block: BlockDevices | None = None) -> None:
        self._block = block
        self._warnings = WarnOnce("disks: ")
        self._said: set[str] = set()

    def block(self, ctx: Context) -> BlockDevices | None:
        """The port given to the constructor, else the composition root's (ctx.block)."""
        if self._block is not None:
            return self._block
        return ctx.block

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return ctx.config.RootGrow.enabled or domain.resource_wanted(ctx.config.ResourceDisk,
                                                                     metadata.platform)

    def inputs(self, metadata: InstanceMetadata) -> object:
        return (metadata.platform, metadata.instance_id)

    def plans(
        self, ctx: Context, metadata: InstanceMetadata, block: BlockDevices
    ) -> tuple[domain.DisksPlan, domain.DisksPlan]:
        """(root grow, resource disk + swap), from what the disks show now."""
        disks = block.disks()
        mounts = block.mounts()
        tools = available_tools(ctx)
        root = domain.plan_root_grow(ctx.config.RootGrow, observe_root(ctx, block, disks, mounts, tools))
        resource = domain.DisksPlan()
        if domain.resource_wanted(ctx.config.ResourceDisk, metadata.platform):
            candidate, seen, why = observe_resource(ctx, block, disks, mounts, tools)
            resource = why
            if candidate is not None and seen is not None:
                resource = why + domain.plan_resource(ctx.config.ResourceDisk, candidate, seen)
        return root, resource

    def plan(self, ctx: Context, metadata: InstanceMetadata) -> domain.DisksPlan:
        block = self.block(ctx)
        if block is None:
            return domain.DisksPlan(notes=("no block-device reader is wired",))
        root, resource = self.plans(ctx, metadata, block)
        return root + resource

    def _log_notes(self, ctx: Context, plan: domain.DisksPlan) -> None:
        for note in plan.notes:
            self._warnings.warn(ctx.log, note)
        for info in plan.info:
            if info not in self._said:
                self._said.add(info)
                ctx.log.info("disks: %s", info)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        block = self.block(ctx)
        if block is None:
            message = "no block-device reader is wired: disks cannot be looked at"
            ctx.log.error("disks: %s", message)
            return Outcome(self.name, failures=(message,))
        try:
            chains = self.plans(ctx, metadata, block)
        except (OSError, UnsafePath, UnicodeError, ValueError) as exc:
            message = f"cannot look at the disks: {exc}"
            ctx.log.error("disks: %s", message)
            return Outcome(self.name, failures=(message,))
        for chain in chains:
            self._log_notes(ctx, chain)
        actions = [a for chain in chains for a in chain.actions]
        if not actions:
            return Outcome(self.name)
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in actions))
        if not ctx.owns_machine:
            listed = []
            for action in actions:
                ctx.log.info("disks: sandbox root %s: not run (it would change this machine): %s",
                             ctx.root, action.describe())
                listed.append(f"{action.describe()} (not run: sandbox root)")
            return Outcome(self.name, tuple(listed))
        journal = ApplyJournal(ctx.log, "disks: ")
        for chain in chains:
            Apply(ctx, block).chain(chain.actions, journal)
        done, failures = journal.result()
        return Outcome(self.name, tuple(done), tuple(failures))


class Apply:
    """Carries out one pass's actions through the runner and the filesystem."""

    def __init__(self, ctx: Context, block: BlockDevices) -> None:
        self.ctx = ctx
        self.block = block
        # The partition made in this pass, per disk (its kernel name as sysfs shows it).
        self.made: dict[str, str] = {}

    def chain(self, actions: Sequence[domain.Action], journal: ApplyJournal) -> None:
        for action in actions:
            try:
                self.one(action)
            except (StepFailed, OSError, UnsafePath, ValueError) as exc:
                journal.failed(f"{action.describe()} failed: {exc}")
                return
            journal.did(action)

    def run(self, argv: Sequence[str], timeout: float, stdin: str | None = None) -> str:
        result = self.ctx.runner.run(argv, timeout=timeout, stdin=stdin)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip())[-300:]
            raise StepFailed(f"{argv[0]} exit {result.returncode}: {detail}")
        return result.stdout

    def partition(self, disk: str, number: int) -> str:
        return self.made.get(disk) or domain.partition_name(disk, number)

    def host(self, path: str) -> str:
        return self.ctx.fs.host_path(path)

    def one(self, action: domain.Action) -> None:
        if isinstance(action, domain.CreateTable):
            self.create_table(action)
        elif isinstance(action, domain.MakeFilesystem):
            device = self.block.device_path(self.partition(action.disk, action.number))
            self.run([f"mkfs.{action.fstype}", domain.MKFS_FORCE[action.fstype], "-q", "-L", action.label,
                      device], MKFS_TIMEOUT)
        elif isinstance(action, domain.MountResource):
            self.ctx.fs.makedirs(action.mount_point, 0o755)
            device = self.block.device_path(self.partition(action.disk, action.number))
            options = ["-o", action.options] if action.options else []
            self.run(["mount", "-t", action.fstype, *options, device, self.host(action.mount_point)],
                     MOUNT_TIMEOUT)
        elif isinstance(action, domain.UpdateFstab):
            self.update_fstab(action)
        elif isinstance(action, domain.WriteWarning):
            if self.ctx.fs.stat(action.path) is None:
                self.ctx.fs.write_atomic(action.path, domain.WARNING_TEXT, mode=0o644)
        elif isinstance(action, domain.SwapOff):
            self.run(["swapoff", self.host(action.path)], SWAP_TIMEOUT)
        elif isinstance(action, domain.CreateSwapFile):
            self.create_swap_file(action)
        elif isinstance(action, domain.SwapOn):
            self.run(["swapon", self.host(action.path)], SWAP_TIMEOUT)
        elif isinstance(action, domain.GrowPartition):
            self.grow_partition(action)
        elif isinstance(action, domain.ResizeFilesystem):
            self.resize(action)
        else:
            self.ctx.fs.makedirs(posixpath.dirname(action.path), 0o755)
            self.ctx.fs.write_atomic(action.path, "root grow done for this boot\n", mode=0o644)

    def create_table(self, action: domain.CreateTable) -> None:
        # The plan was made from what the disk showed a moment ago; the one step that
        # destroys data looks once more that it still holds the platform's NTFS volume.
        disk = next((d for d in self.block.disks() if d.name == action.disk), None)
        if disk is None or len(disk.partitions) != 1:
            raise StepFailed(f"/dev/{action.disk} changed since it was looked at: not partitioned")
        sig = self.block.signature(disk.partitions[0].name)
        files, _ = self.block.ntfs_files(disk.partitions[0].name)
        if (sig is None or not domain.is_platform_ntfs(sig) or files is None
                or any(n.casefold() not in domain.ALLOWED_NTFS_NAMES for n in files)):
            raise StepFailed(f"/dev/{action.disk} changed since it was looked at: not partitioned")
        script = f'label: gpt\ntype=L, name="{domain.PART_NAME}"\n'
        self.run(["sfdisk", "--wipe", "always", "--wipe-partitions", "always", "--quiet",
                  self.block.device_path(action.disk)], PARTITION_TIMEOUT, stdin=script)
        name = self.block.wait_for_partition(action.disk, 1, PARTITION_TIMEOUT)
        if name is None:
            raise StepFailed(f"the new partition of /dev/{action.disk} did not appear")
        self.made[action.disk] = name

    def update_fstab(self, action: domain.UpdateFstab) -> None:
        uuid = action.uuid
        if uuid is None:
            sig = self.block.signature(self.partition(action.disk, action.number))
            uuid = sig.uuid if sig is not None else ""
            if not uuid:
                raise StepFailed("the new filesystem's UUID could not be read (blkid)")
        line = domain.fstab_line(uuid, action.mount_point, action.fstype, action.options)
        text = self.ctx.fs.read_text(domain.FSTAB_PATH)
        new = domain.fstab_with_entry(text, line)
        if new != text:
            self.ctx.fs.write_atomic(domain.FSTAB_PATH, new, mode=0o644)

    def create_swap_file(self, action: domain.CreateSwapFile) -> None:
        host = self.host(action.path)
        self.ctx.fs.remove(action.path)
        # Made empty with mode 0600 first: no moment where another user could read swap.
        self.ctx.fs.write_atomic(action.path, "", mode=0o600)
        if action.nocow:
            self.run(["chattr", "+C", host], SWAP_TIMEOUT)
        result = self.ctx.runner.run(["fallocate", "-l", str(action.size), host], timeout=SWAP_FILE_TIMEOUT)
        if not result.ok:
            self.ctx.log.info("disks: fallocate failed (%s); writing the swap file with dd",
                              result.stderr.strip()[:200])
            self.run(["dd", "if=/dev/zero", f"of={host}", "bs=1M", f"count={action.size // domain.MIB}",
                      "status=none"], SWAP_FILE_TIMEOUT)
        self.run(["mkswap", host], SWAP_TIMEOUT)

    def grow_partition(self, action: domain.GrowPartition) -> None:
        disk = self.block.device_path(action.disk)
        before = self._partition_size(action.disk, action.number)
        if self.ctx.runner.which("growpart") is not None:
            result = self.ctx.runner.run(["growpart", disk, str(action.number)], timeout=GROW_TIMEOUT)
            if result.returncode == 1 and "NOCHANGE" in result.stdout:
                return  # nothing to grow: someone grew it meanwhile
            if not result.ok:
                detail = (result.stderr.strip() or result.stdout.strip())[-300:]
                raise StepFailed(f"growpart exit {result.returncode}: {detail}")
        else:
            if action.relocate_backup:
                self.run(["sfdisk", "--no-reread", "--relocate", "gpt-bak-std", disk], GROW_TIMEOUT)
            self.run(["sfdisk", "--no-reread", "-N", str(action.number), disk], GROW_TIMEOUT, stdin=", +\n")
            self.run(["partx", "-u", "--nr", str(action.number), disk], GROW_TIMEOUT)
        after = self._partition_size(action.disk, action.number)
        if before is not None and after is not None and after <= before:
            raise StepFailed("the kernel still sees the partition's old size")

    def _partition_size(self, disk: str, number: int) -> int | None:
        for found in self.block.disks():
            if found.name == disk:
                for part in found.partitions:
                    if part.number == number:
                        return part.size
        return None

    def resize(self, action: domain.ResizeFilesystem) -> None:
        mount_point = self.host(action.mount_point)
        if action.fstype in ("ext2", "ext3", "ext4"):
            self.run(["resize2fs", self.block.device_path(action.device)], GROW_TIMEOUT)
        elif action.fstype == "xfs":
            self.run(["xfs_growfs", mount_point], GROW_TIMEOUT)
        elif action.fstype == "btrfs":
            self.run(["btrfs", "filesystem", "resize", "max", mount_point], GROW_TIMEOUT)
        else:
            raise StepFailed(f"no resizer for {action.fstype}")
