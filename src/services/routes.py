"""Forwarded and alias IP routes: observe the kernel through Netlink, plan in the domain, apply."""

from __future__ import annotations

from datetime import datetime, timedelta

from guestagent.domain import routes as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce
from guestagent.ports.netlink import Netlink, NetlinkFailure
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

# A NIC metadata lists but the guest lacks may be hot-plugged (or renamed by udev)
# without any metadata change: look again after this long.
MISSING_NIC_RECHECK = timedelta(seconds=60)


def recheck_at(ctx: Context, missing: tuple[str, ...]) -> datetime | None:
    return ctx.clock.now() + MISSING_NIC_RECHECK if missing else None


class RoutesSubsystem:
    name = "routes"

    def __init__(self) -> None:
        self._warnings = WarnOnce("routes: ")

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        # No netlink factory means the composition root has no kernel to talk to
        # (an embedding program, a pure file sandbox): nothing to do, nothing failed.
        return ctx.netlink is not None and domain.routes_enabled(ctx.config)

    def inputs(self, metadata: InstanceMetadata) -> object:
        return gce(metadata).nics

    def plan(self, ctx: Context, netlink: Netlink, metadata: InstanceMetadata) -> domain.RoutesPlan:
        want = domain.desired(metadata, ctx.config)
        return domain.plan(
            want, netlink.links(), netlink.local_routes(), ctx.config.IpForwarding.ethernet_proto_id
        )

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        if ctx.netlink is None:  # enabled() is false then; a direct caller gets a no-op
            return Outcome(self.name)
        try:
            netlink = ctx.netlink()
        except NetlinkFailure as exc:
            return Outcome(self.name, failures=(str(exc),))
        try:
            planned = self.plan(ctx, netlink, metadata)
            for note in planned.notes:
                self._warnings.warn(ctx.log, note)
            wake = recheck_at(ctx, planned.missing)
            if ctx.dry_run:
                return Outcome(self.name, tuple(a.describe() for a in planned.actions), wake_at=wake)
            done, failures = apply(ctx, netlink, planned.actions)
            return Outcome(self.name, tuple(done), tuple(failures), wake_at=wake)
        except NetlinkFailure as exc:
            ctx.log.error("routes: %s", exc)
            return Outcome(self.name, failures=(str(exc),))
        finally:
            netlink.close()


def apply(
    ctx: Context, netlink: Netlink, actions: tuple[domain.Action, ...]
) -> tuple[list[str], list[str]]:
    """Each route on its own: one the kernel refuses never keeps the others from being set."""
    journal = ApplyJournal(ctx.log, "routes: ")
    for action in actions:
        try:
            if isinstance(action, domain.AddRoute):
                netlink.add_local_route(action.route)
            else:
                netlink.delete_local_route(action.route)
        except NetlinkFailure as exc:
            journal.failed(f"{action.describe()} failed: {exc}")
            continue
        journal.did(action)
    return journal.result()

