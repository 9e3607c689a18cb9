"""The one composition root: config, platform, adapters, subsystems and sandbox policy.

Every entrypoint (the CLI's one-shot commands, the daemon, the script
runner) and every embedding program that wants the whole agent calls
`bootstrap()`; nothing else wires adapters together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import attrs

from guestagent.adapters.block_devices import SysfsBlockDevices
from guestagent.adapters.confined_runner import ConfinedRunner
from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.platforms.detect import detect
from guestagent.adapters.platforms.registry import provider
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.adapters.script_runner import SubprocessScriptRunner
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.sysfs import SysfsWriter
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import DEFAULT_CONFIG_PATH, Config, ConfigLayer, layer_paths, load_config
from guestagent.domain.waagent_conf import WAAGENT_CONF, insert_waagent
from guestagent.ports.commands import CommandRunner
from guestagent.ports.metadata import GuestAttributes, MetadataSource
from guestagent.services.context import Context
from guestagent.services.reconcile import Scheduler
from guestagent.services.registry import LANES, all_subsystems
from guestagent.services.subsystem import Subsystem

if TYPE_CHECKING:
    from guestagent.ports.netlink import Netlink

log = logging.getLogger("guestagent")


@attrs.frozen
class Options:
    """What the command line (or an embedding program) decides."""

    # The metadata service's base address; None: the platform's own default.
    metadata_url: str | None = None
    # A platform name, "auto", or None to take [Core] platform from the config.
    platform: str | None = None
    config: str | None = None
    root: str = "/"
    backoff_max: float = 30.0
    netns: str | None = None
    dry_run: bool = False


@attrs.frozen
class SandboxPolicy:
    """The one place that decides whether the agent may act on the machine it runs on.

    With a root other than "/", files go under the root, account tools get
    --prefix, every other program is refused, the kernel's hostname, clock
    and services are left alone, and netlink is offered only for an explicit
    --netns (never the host's own network).
    """

    root: str
    netns: str | None = None

    @property
    def confined(self) -> bool:
        return self.root != "/"

    def runner(self) -> CommandRunner:
        runner: CommandRunner = SubprocessRunner()
        return ConfinedRunner(runner, self.root) if self.confined else runner

    def netlink(self) -> Callable[[], Netlink] | None:
        if self.confined and not self.netns:
            return None
        netns = self.netns

        def make() -> Netlink:
            # Imported here: pyroute2 costs memory and start-up time the accounts path never needs.
            from guestagent.adapters.pyroute2_netlink import Pyroute2Netlink

            return Pyroute2Netlink(netns=netns)

        return make


@attrs.frozen
class Agent:
    """Everything wired: what the entrypoints run."""

    ctx: Context
    source: MetadataSource
    subsystems: tuple[Subsystem, ...]
    lanes: tuple[tuple[str, ...], ...]
    platform: ProviderSpec
    # Why this platform: "--platform", "[Core] platform", or what detection saw.
    chosen_because: str

    def scheduler(self) -> Scheduler:
        return Scheduler(self.subsystems, self.lanes)


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
    # /etc/waagent.conf is a layer of its own, above .distro and below the user's files.
    layers, waagent_warnings = insert_waagent(layers, fs.read_text(WAAGENT_CONF))
    config, warnings = load_config(layers)
    warnings = (*waagent_warnings, *warnings)
    for warning in warnings:
        log.warning("config: %s", warning)
    return config


def choose_platform(options: Options, config: Config) -> tuple[ProviderSpec, ProviderOptions, str]:
    """The provider to read, and why. Raises ValueError (an unknown name) or
    detect.DetectionFailed (auto found nothing within [Core] detect_timeout)."""
    popts = ProviderOptions(
        url=options.metadata_url, root=options.root, config=config, backoff_max=options.backoff_max
    )
    name = options.platform or config.Core.platform
    if name != "auto":
        why = f"{'--platform' if options.platform else '[Core] platform'} {name}"
        log.info("platform %s: %s", name, why)  # detection logs its own choice
        return provider(name), popts, why
    # --platform auto beats a configured name: detection must not short-cut to it.
    auto = attrs.evolve(config, Core=attrs.evolve(config.Core, platform="auto"))
    found = detect(attrs.evolve(popts, config=auto))
    return found.spec, popts, found.reason


def bootstrap(
    options: Options,
    *,
    subsystems: Sequence[Subsystem] | None = None,
    lanes: Sequence[Sequence[str]] = LANES,
    config: Config | None = None,
) -> Agent:
    """Wire the agent. Raises ValueError when no platform can be chosen (see choose_platform)."""
    fs = LocalFileSystem(options.root)
    sandbox = SandboxPolicy(fs.root, options.netns)
    config = config if config is not None else read_config(options, fs)
    spec, popts, reason = choose_platform(attrs.evolve(options, root=fs.root), config)
    # A transport may need the network before it has one (DigitalOcean's link-local
    # bootstrap address): the same netlink the sandbox policy allows the subsystems.
    popts = attrs.evolve(popts, netlink=sandbox.netlink())
    source = spec.open(popts)
    # The spec says whether its source is also a write-back channel.
    guest_attributes = cast(GuestAttributes, source) if spec.guest_attributes else None
    # One runner for the subsystems and the disk probes: confined alike in a sandbox.
    runner = sandbox.runner()
    ctx = Context(
        config=config,
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=SystemClock(),
        guest_attributes=guest_attributes,
        netlink=sandbox.netlink(),
        root=fs.root,
        dry_run=options.dry_run,
        owns_machine=not sandbox.confined,
        sysfs=SysfsWriter(fs.root),
        log=log,
        script_runner=SubprocessScriptRunner(),
        block=SysfsBlockDevices(fs.root, runner),
    )
    chosen = tuple(subsystems) if subsystems is not None else tuple(all_subsystems())
    return Agent(ctx, source, chosen, tuple(tuple(lane) for lane in lanes), spec, reason)
