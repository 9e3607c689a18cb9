"""Static networking: addresses, routes, MTU and link state through Netlink, the record of
the agent's addresses and DNS through the FileSystem, resolver programs through the
CommandRunner. The domain halves are domain/network.py and domain/dns.py.

Every pass observes (one socket: links, addresses, routes), plans and applies; with
static NICs in metadata it asks to run again within `HEAL_INTERVAL`, so routes and
addresses another program flushed (a DHCP client restarting, `ip route flush`) come
back without a metadata change. A pass that finds everything in place changes
nothing and runs nothing.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import attrs

from guestagent.domain import dns
from guestagent.domain import network as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.filesystem import UnsafePath
from guestagent.ports.netlink import Netlink, NetlinkFailure
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

# How soon the kernel is looked at again without a metadata change (flushed routes).
HEAL_INTERVAL = timedelta(seconds=30)
# How soon after adding IPv6 addresses the old ones are looked at again (DAD takes ~1-2 s).
DAD_RECHECK = timedelta(seconds=3)
COMMAND_TIMEOUT = 30.0
STATE_MODE = 0o644


@attrs.frozen
class KernelPass:
    done: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    wake_at: datetime | None = None
    # Static NICs' link names by MAC (for per-link DNS); None when the kernel was not asked.
    links: dict[str, str] | None = None


def _do(netlink: Netlink, action: domain.Action) -> None:
    if isinstance(action, domain.SetMtu):
        netlink.set_mtu(action.interface, action.mtu)
    elif isinstance(action, domain.SetLinkUp):
        netlink.set_link_up(action.interface)
    elif isinstance(action, domain.PromoteSecondaries):
        netlink.set_promote_secondaries(action.interface)
    elif isinstance(action, domain.AddAddress):
        netlink.add_address(action.interface, action.address)
    elif isinstance(action, domain.RemoveAddress):
        netlink.delete_address(action.interface, action.address)
    elif isinstance(action, domain.ChangePrefix):
        netlink.delete_address(action.interface, action.old)
        try:
            netlink.add_address(action.interface, action.new)
        except NetlinkFailure:
            with contextlib.suppress(NetlinkFailure):  # the old one back, not the IP off the link
                netlink.add_address(action.interface, action.old)
            raise
    elif isinstance(action, domain.AddRoute):
        netlink.add_route(action.route)
    else:
        netlink.delete_route(action.route)


class NetworkSubsystem:
    name = "network"

    def __init__(self) -> None:
        self._warnings = WarnOnce("network: ")
        self._said: set[str] = set()
        # What this process last set through resolvectl: runtime settings are pushed
        # again only when they change (and once per process, as a restart loses them).
        self._pushed: object = None
        # The DNS this process last wrote to /etc/resolv.conf: a file someone else rewrote
        # afterwards is replaced only when the metadata's DNS changes.
        self._written: dns.DnsDesired | None = None

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return domain.network_enabled(ctx.config, metadata)

    def inputs(self, metadata: InstanceMetadata) -> object:
        return (
            domain.static_nics(metadata),
            metadata.dns_servers,
            metadata.dns_search,
            domain.network_skip(metadata),
        )

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        want = domain.desired(metadata)
        for note in want.notes:
            self._warnings.warn(ctx.log, note)
        kernel = KernelPass()
        if ctx.netlink is not None and want.nics:
            kernel = self.kernel(ctx, want)
        dns_done, dns_failures = self.dns(ctx, metadata, kernel.links)
        return Outcome(
            self.name,
            kernel.done + dns_done,
            kernel.failures + dns_failures,
            wake_at=kernel.wake_at,
        )

    # ---- addresses, routes, MTU

    def observe_and_plan(
        self, ctx: Context, netlink: Netlink, want: domain.NetworkDesired
    ) -> tuple[domain.NetworkPlan, list[domain.LinkState], str | None]:
        """The plan, the links it was made from, and the record file's text."""
        try:
            text = ctx.fs.read_text(domain.STATE_PATH)
        except OSError as exc:  # unreadable: own nothing, so nothing is removed
            self._warnings.warn(ctx.log, f"cannot read {domain.STATE_PATH}: {exc}")
            text = None
        owned, notes = domain.parse_state(text)
        for note in notes:
            self._warnings.warn(ctx.log, note)
        links = netlink.link_states()
        planned = domain.plan(want, links, netlink.addresses(), netlink.main_routes(), owned)
        return planned, links, text

    def kernel(self, ctx: Context, want: domain.NetworkDesired) -> KernelPass:
        assert ctx.netlink is not None
        try:
            netlink = ctx.netlink()
        except NetlinkFailure as exc:
            return KernelPass(failures=(str(exc),))
        try:
            planned, links, text = self.observe_and_plan(ctx, netlink, want)
            for note in planned.notes:
                self._warnings.warn(ctx.log, note)
            by_mac = {link.mac: link.name for link in sorted(links, key=lambda link: -link.index)}
            names = {nic.mac: by_mac[nic.mac] for nic in want.nics if nic.mac in by_mac}
            if ctx.dry_run:
                described = tuple(a.describe() for a in planned.actions)
                return KernelPass(described, (), self._wake(ctx, want, planned), names)
            done, failures, changed = self.apply(ctx, netlink, planned, text)
            if changed:
                # Removing an address can take routes (and, without promote_secondaries,
                # other addresses) with it: look once more and put back what went.
                planned, _, text = self.observe_and_plan(ctx, netlink, want)
                more, more_failures, _ = self.apply(ctx, netlink, planned, text)
                done += more
                failures += more_failures
            return KernelPass(tuple(done), tuple(failures), self._wake(ctx, want, planned), names)
        except NetlinkFailure as exc:
            ctx.log.error("network: %s", exc)
            return KernelPass(failures=(str(exc),), wake_at=ctx.clock.now() + HEAL_INTERVAL)
        finally:
            netlink.close()

    def _wake(
        self, ctx: Context, want: domain.NetworkDesired, planned: domain.NetworkPlan
    ) -> datetime | None:
        if planned.pending:
            return ctx.clock.now() + DAD_RECHECK
        if want.nics:
            return ctx.clock.now() + HEAL_INTERVAL
        return None

    def _record(self, ctx: Context, record: domain.Owned, current: str | None) -> str:
        """Write the record when it changed and return the text now on disk (a failed
        write raises OSError/UnsafePath to the caller)."""
        text = domain.render_state(record)
        if text != current and (record or current is not None):
            ctx.fs.write_atomic(domain.STATE_PATH, text, mode=STATE_MODE)
        return text

    def apply(
        self, ctx: Context, netlink: Netlink, planned: domain.NetworkPlan, state_text: str | None
    ) -> tuple[list[str], list[str], bool]:
        """(done, failures, whether an address was removed)."""
        journal = ApplyJournal(ctx.log, "network: ")
        actions = list(planned.actions)
        touches_addresses = any(
            isinstance(a, domain.AddAddress | domain.RemoveAddress | domain.ChangePrefix) for a in actions
        )
        if touches_addresses:
            # Recorded before they exist: a crash after the kernel took an address but
            # before a later write can never leave an address of ours unrecorded.
            try:
                state_text = self._record(ctx, domain.record_ahead(planned.owned, actions), state_text)
            except (OSError, UnsafePath) as exc:
                journal.failed(f"cannot record the agent's addresses in {domain.STATE_PATH}: {exc}")
                skipped = (domain.AddAddress, domain.RemoveAddress, domain.ChangePrefix)
                actions = [a for a in actions if not isinstance(a, skipped)]
        failed: set[object] = set()
        done: list[domain.Action] = []
        for action in actions:
            guard = getattr(action, "guard", None)
            if isinstance(action, domain.REMOVALS) and guard in failed:
                ctx.log.info("network: %s not done: what replaces it did not go in", action.describe())
                continue
            try:
                _do(netlink, action)
            except NetlinkFailure as exc:
                journal.failed(f"{action.describe()} failed: {exc}")
                if guard is not None and isinstance(action, domain.ADDITIONS):
                    failed.add(guard)
                continue
            journal.did(action)
            done.append(action)
        if touches_addresses:
            try:
                self._record(ctx, domain.record_after(planned.owned, done), state_text)
            except (OSError, UnsafePath) as exc:
                journal.failed(f"cannot record the agent's addresses in {domain.STATE_PATH}: {exc}")
        removed = any(isinstance(a, domain.RemoveAddress | domain.ChangePrefix) for a in done)
        texts, failures = journal.result()
        return texts, failures, removed

    # ---- DNS

    def observe_dns(self, ctx: Context) -> dns.DnsObserved:
        def read(path: str) -> str | None:
            try:
                return ctx.fs.read_text(path)
            except OSError:  # a directory, a permission problem: nothing the agent can use
                return None

        info = ctx.fs.stat(dns.RESOLV_CONF)
        records: dict[str, str] = {}
        for folder in dns.RESOLVCONF_RECORD_DIRS:
            for name in ctx.fs.listdir(folder):
                if name.endswith(dns.RECORD_SUFFIX) and name not in records:
                    text = read(f"{folder}/{name}")
                    if text is not None:
                        records[name] = text
        return dns.DnsObserved(
            resolv_conf=read(dns.RESOLV_CONF),
            resolv_conf_is_symlink=info is not None and info.is_symlink,
            resolved_running=any(ctx.fs.stat(p) is not None for p in dns.RESOLVED_RUNTIME),
            resolvconf_installed=any(ctx.fs.stat(p) is not None for p in dns.RESOLVCONF_PROGRAMS),
            dropin=read(dns.RESOLVED_DROPIN),
            records=records,
        )

    def dns(
        self, ctx: Context, metadata: InstanceMetadata, links: dict[str, str] | None
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        want = dns.desired(metadata)
        for note in want.notes:
            self._warnings.warn(ctx.log, f"DNS: {note}")
        if want.empty:
            return (), ()
        try:
            seen = self.observe_dns(ctx)
        except (OSError, UnsafePath) as exc:
            ctx.log.error("network: cannot read the resolver configuration: %s", exc)
            return (), (f"cannot read the resolver configuration: {exc}",)
        mechanism, why = dns.choose(ctx.config.Network.dns, seen)
        self._say(ctx, f"DNS through {mechanism}: {why}", warn=mechanism == "none")
        planned = dns.plan(
            want,
            mechanism,
            seen,
            links,
            live=ctx.owns_machine,
            pushed=self._pushed,
            replace_foreign=want != self._written,
        )
        for note in planned.notes:
            self._say(ctx, f"DNS: {note}", warn=False)
        if ctx.dry_run:
            return tuple(a.describe() for a in planned.actions), ()
        journal = ApplyJournal(ctx.log, "network: ")
        for action in planned.actions:
            error: str | None = None
            if isinstance(action, dns.WriteFile):
                try:
                    ctx.fs.write_atomic(action.path, action.text, mode=action.mode)
                except (OSError, UnsafePath) as exc:
                    error = str(exc)
            else:
                result = ctx.runner.run(action.argv, timeout=COMMAND_TIMEOUT, stdin=action.stdin)
                if not result.ok:
                    error = f"exit {result.returncode}: {result.stderr.strip()[:300]}"
            if error is not None:
                journal.failed(f"{action.describe()} failed: {error}")
                continue
            journal.did(action)
        done, failures = journal.result()
        if planned.pushes is not None and not failures:
            self._pushed = planned.pushes
        if not failures:
            self._written = want
        return tuple(done), tuple(failures)

    def _say(self, ctx: Context, message: str, *, warn: bool) -> None:
        """Once per process: at warning level what leaves DNS alone, at info the rest."""
        if warn:
            self._warnings.warn(ctx.log, message)
        elif message not in self._said:
            self._said.add(message)
            ctx.log.info("network: %s", message)
