"""The composition root: real adapters wired into a Context from command-line options."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import attrs

from guestagent.adapters.confined_runner import ConfinedRunner
from guestagent.adapters.gce_metadata import DEFAULT_URL, GceMetadata
from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.sysfs import SysfsWriter
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import DEFAULT_CONFIG_PATH, Config, ConfigLayer, layer_paths, load_config
from guestagent.ports.commands import CommandRunner
from guestagent.ports.netlink import Netlink
from guestagent.services.context import Context

log = logging.getLogger("guestagent")


@attrs.frozen
class Options:
    """What every subcommand accepts (see cli.py for the flags)."""

    metadata_url: str = DEFAULT_URL
    config: str | None = None
    root: str = "/"
    backoff_max: float = 30.0
    netns: str | None = None
    dry_run: bool = False


def read_config(options: Options, fs: LocalFileSystem) -> Config:
    """Layers from the host path given by --config, or from /etc/default under --root."""
    layers = []
    if options.config is not None:
        for path in layer_paths(os.path.abspath(options.config)):
            try:
                with open(path, encoding="utf-8") as handle:
                    layers.append(ConfigLayer(path, handle.read()))
            except FileNotFoundError:
                continue
    else:
        for path in layer_paths(DEFAULT_CONFIG_PATH):
            text = fs.read_text(path)
            if text is not None:
                layers.append(ConfigLayer(path, text))
    config, warnings = load_config(layers)
    for warning in warnings:
        log.warning("config: %s", warning)
    return config


def build(options: Options) -> tuple[Context, GceMetadata]:
    fs = LocalFileSystem(options.root)
    source = GceMetadata(options.metadata_url, backoff_max=options.backoff_max)
    sandboxed = fs.root != "/"
    runner: CommandRunner = SubprocessRunner()
    if sandboxed:
        runner = ConfinedRunner(runner, fs.root)
    ctx = Context(
        config=read_config(options, fs),
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=SystemClock(),
        guest_attributes=source,
        # In a sandbox, netlink is offered only for an explicit --netns: never the host's own.
        netlink=_netlink_factory(options.netns) if (options.netns or not sandboxed) else None,
        root=fs.root,
        dry_run=options.dry_run,
        sysfs=SysfsWriter(fs.root),
        log=log,
    )
    return ctx, source


def _netlink_factory(netns: str | None) -> Callable[[], Netlink]:
    def make() -> Netlink:
        # Imported here: pyroute2 costs memory and start-up time the accounts path never needs.
        from guestagent.adapters.pyroute2_netlink import Pyroute2Netlink

        return Pyroute2Netlink(netns=netns)

    return make
