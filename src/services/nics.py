"""Secondary network interfaces: link up through Netlink, DHCP through the CommandRunner."""

from __future__ import annotations

from guestagent.domain import nics as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.network import network_skip
from guestagent.ports.netlink import Netlink, NetlinkFailure
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.routes import recheck_at
from guestagent.services.subsystem import Outcome

DHCP_TIMEOUT = 120.0


class NicsSubsystem:
    name = "nics"

    def __init__(self) -> None:
        self._warnings = WarnOnce("nics: ")

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        # The CPIO device's `[network] skip` says the image sets its own network up.
        return ctx.netlink is not None and domain.nics_enabled(ctx.config) and not network_skip(metadata)

    def inputs(self, metadata: InstanceMetadata) -> object:
        return tuple(n.mac for n in metadata.network_interfaces)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        if ctx.netlink is None:  # enabled() is false then; a direct caller gets a no-op
            return Outcome(self.name)
        try:
            netlink = ctx.netlink()
            try:
                planned = domain.plan(metadata, netlink.links(), ctx.config.NetworkInterfaces)
                for note in planned.notes:
                    self._warnings.warn(ctx.log, note)
                wake = recheck_at(ctx, planned.missing)
                if ctx.dry_run:
                    return Outcome(self.name, tuple(a.describe() for a in planned.actions), wake_at=wake)
                done, failures = apply(ctx, netlink, planned.actions)
            finally:
                netlink.close()
        except NetlinkFailure as exc:
            ctx.log.error("nics: %s", exc)
            return Outcome(self.name, failures=(str(exc),))
        return Outcome(self.name, tuple(done), tuple(failures), wake_at=wake)


def in_namespace(netlink: Netlink, argv: tuple[str, ...]) -> tuple[str, ...]:
    """argv to run where the NIC is: a DHCP client started in the agent's own namespace
    while the agent manages another (--netns) would configure the wrong machine."""
    namespace = netlink.namespace()
    return argv if namespace is None else ("ip", "netns", "exec", namespace, *argv)


def apply(
    ctx: Context, netlink: Netlink, actions: tuple[domain.Action, ...]
) -> tuple[list[str], list[str]]:
    journal = ApplyJournal(ctx.log, "nics: ")
    failed: set[str] = set()
    for action in actions:
        if action.interface in failed:
            continue  # no DHCP on a link that would not come up
        if isinstance(action, domain.SetLinkUp):
            try:
                netlink.set_link_up(action.interface)
            except NetlinkFailure as exc:
                error: str | None = str(exc)
            else:
                error = None
        else:
            result = ctx.runner.run(in_namespace(netlink, action.argv), timeout=DHCP_TIMEOUT)
            error = None if result.ok else f"exit {result.returncode}: {result.stderr.strip()[:300]}"
        if error is not None:
            failed.add(action.interface)
            journal.failed(f"{action.describe()} failed: {error}")
            continue
        journal.did(action)
    return journal.result()

