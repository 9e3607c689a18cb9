"""Everything a subsystem may touch, handed in by the composition root."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from guestagent.domain.config import Config
from guestagent.ports.clock import Clock
from guestagent.ports.commands import CommandRunner
from guestagent.ports.filesystem import FileSystem
from guestagent.ports.metadata import GuestAttributes
from guestagent.ports.scripts import ScriptRunner
from guestagent.ports.sysfs import KernelFiles
from guestagent.ports.users import UsersView

if TYPE_CHECKING:
    from guestagent.ports.block import BlockDevices
    from guestagent.ports.netlink import Netlink


@attrs.frozen
class Context:
    config: Config
    fs: FileSystem
    runner: CommandRunner
    users: UsersView
    clock: Clock
    # None when the platform has no write-back channel.
    guest_attributes: GuestAttributes | None = None
    # A factory, so pyroute2 is imported only when a network subsystem runs.
    netlink: Callable[[], Netlink] | None = None
    # "/" on a real guest; a sandbox directory under --root. Account commands
    # need it to confine shadow-utils with --prefix.
    root: str = "/"
    dry_run: bool = False
    # Whether the agent acts on the machine it runs on (hostname, clock, services) or only
    # on files under `root`. Decided once, by the composition root's sandbox policy; the
    # default follows `root`, so a Context made for a sandbox can never touch the host.
    owns_machine: bool = attrs.field(
        default=attrs.Factory(lambda self: self.root == "/", takes_self=True)
    )
    # In-place writes to /sys and /proc (instance-setup tuning); None skips tuning.
    sysfs: KernelFiles | None = None
    # Runs first-boot scripts; None where the composition root wired none (nothing runs).
    script_runner: ScriptRunner | None = None
    # Disks as the disks subsystem observes them; None: not wired (nothing to plan).
    block: BlockDevices | None = None
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("guestagent"))
