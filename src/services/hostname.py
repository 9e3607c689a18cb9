"""Hostname: /etc/hostname and the agent's /etc/hosts line through FileSystem, live name
through the CommandRunner (`hostname`), so tests run it with a fake runner or inside a
private UTS namespace."""

from __future__ import annotations

import posixpath

from guestagent.domain import hostname as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

COMMAND_TIMEOUT = 30.0


def manages_live_hostname(ctx: Context) -> bool:
    """Only an agent that owns the whole machine (root "/") touches the kernel's hostname:
    under --root the agent runs in a sandbox and the kernel's name is the host's."""
    return ctx.owns_machine


def read_live(ctx: Context) -> str:
    """The kernel's hostname; "" when it cannot be read, so the plan sets it anyway."""
    result = ctx.runner.run(["hostname"], timeout=COMMAND_TIMEOUT)
    return result.stdout.strip() if result.ok else ""


def set_live(ctx: Context, name: str) -> str | None:
    """Set the kernel's hostname; the error message, or None."""
    result = ctx.runner.run(["hostname", name], timeout=COMMAND_TIMEOUT)
    if result.returncode == 127:
        # Minimal images may lack the `hostname` package but have systemd.
        result = ctx.runner.run(
            ["hostnamectl", "set-hostname", "--transient", name], timeout=COMMAND_TIMEOUT
        )
    if result.ok:
        return None
    return f"{result.argv[0]} exit {result.returncode}: {result.stderr.strip()[:300]}"


class HostnameSubsystem:
    name = "hostname"

    def __init__(self) -> None:
        self._warnings = WarnOnce("hostname: ")

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return ctx.config.InstanceSetup.set_hostname

    def inputs(self, metadata: InstanceMetadata) -> object:
        nics = metadata.network_interfaces
        return (metadata.hostname, nics[0].ip if nics else None)

    def plan(self, ctx: Context, metadata: InstanceMetadata) -> domain.HostnamePlan:
        want, notes = domain.desired(metadata, ctx.config.InstanceSetup)
        if want is None:
            return domain.HostnamePlan((), notes)
        record = domain.applied_record(metadata, want)
        if record is not None and ctx.fs.read_text(domain.APPLIED_PATH) == record:
            return domain.HostnamePlan((), notes)  # named already: what it is called now is its user's
        have = domain.HostnameCurrent(
            hostname_file=ctx.fs.read_text(domain.HOSTNAME_PATH),
            hosts_file=ctx.fs.read_text(domain.HOSTS_PATH),
            live=read_live(ctx) if manages_live_hostname(ctx) else None,
        )
        planned = domain.plan(want, have)
        actions = planned.actions
        if record is not None:
            actions += (domain.RecordApplied(domain.APPLIED_PATH, record),)
        return domain.HostnamePlan(actions, notes + planned.notes)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        planned = self.plan(ctx, metadata)
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in planned.actions))
        journal = ApplyJournal(ctx.log, "hostname: ")
        for action in planned.actions:
            error: str | None = None
            try:
                if isinstance(action, domain.SetLiveHostname):
                    error = set_live(ctx, action.name)
                elif isinstance(action, domain.RecordApplied):
                    if journal.failures:
                        continue  # not named yet: the next pass tries again
                    ctx.fs.makedirs(posixpath.dirname(action.path), 0o755)
                    ctx.fs.write_atomic(action.path, action.text, mode=0o644)
                else:
                    ctx.fs.write_atomic(action.path, action.text, mode=0o644)
            except (OSError, UnsafePath) as exc:
                error = str(exc)
            if error is not None:
                journal.failed(f"{action.describe()} failed: {error}")
                continue
            journal.did(action)
        done, failures = journal.result()
        return Outcome(self.name, tuple(done), tuple(failures))

