"""OS Login: switch sshd, NSS and PAM over to OS Login and back, through ports only."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from guestagent.domain import oslogin as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

COMMAND_TIMEOUT = 60.0
# sshd checks its privilege-separation directory last, after parsing the config
# and loading host keys. On a guest where sshd has not started yet (/run/sshd is
# made by its unit), that one complaint means everything else passed.
_PRIVSEP_ONLY = "Missing privilege separation directory"


def desired(ctx: Context, metadata: InstanceMetadata) -> domain.OsLoginDesired:
    return domain.OsLoginDesired(
        enabled=gce(metadata).oslogin_enabled,
        cert_authentication=ctx.config.OSLogin.cert_authentication,
    )


def observe(ctx: Context) -> domain.OsLoginCurrent:
    files: dict[str, domain.ConfigFile] = {}
    for path in domain.FILES:
        info = ctx.fs.stat(path)
        if info is None or info.is_dir:
            files[path] = domain.ConfigFile(None)
            continue
        files[path] = domain.ConfigFile(ctx.fs.read_text(path), info.mode, info.uid, info.gid)
    return domain.OsLoginCurrent(files)


def _host_key_options(ctx: Context) -> list[str]:
    """In a sandbox root, point sshd -t at the sandbox's host keys, not the machine's."""
    if ctx.owns_machine:
        return []
    names = ctx.fs.listdir("/etc/ssh")
    keys = [n for n in names if n.startswith("ssh_host_") and n.endswith("_key")]
    return [f"-oHostKey={ctx.fs.host_path('/etc/ssh/' + n)}" for n in keys]


def sshd_check(ctx: Context) -> Callable[[str], None]:
    """A write_atomic check: the new sshd_config must pass `sshd -t` before it replaces the old."""
    sshd = ctx.runner.which("sshd")

    def check(host_path: str) -> None:
        if sshd is None:
            ctx.log.warning("sshd not found; %s written unchecked", domain.SSHD_CONFIG)
            return
        argv = [sshd, "-t", "-f", host_path, *_host_key_options(ctx)]
        result = ctx.runner.run(argv, timeout=COMMAND_TIMEOUT)
        if result.ok:
            return
        complaints = [line for line in result.stderr.splitlines() if line.strip()]
        if complaints and all(_PRIVSEP_ONLY in line for line in complaints):
            ctx.log.debug("sshd -t passed up to its privilege-separation directory check")
            return
        raise ValueError(f"sshd -t rejected the new sshd_config: {result.stderr.strip()[:500]}")

    return check


def _restart(ctx: Context, action: domain.RestartServices) -> str | None:
    """Restart what exists; an error message, or None."""
    if not ctx.owns_machine:
        # The services running here belong to the machine, not to the sandbox root.
        ctx.log.info("sandbox root %s: not restarting host services", ctx.root)
        return None
    if ctx.runner.which("systemctl") is None:
        ctx.log.warning("systemctl not found; reload sshd and NSS caches by hand")
        return None
    probe = ctx.runner.run(
        ["systemctl", "show", "-p", "Id", "-p", "LoadState", *domain.probe_units(action)],
        timeout=COMMAND_TIMEOUT,
    )
    if not probe.ok and not probe.stdout:
        # e.g. a container without systemd as PID 1: nothing to restart through it
        ctx.log.warning("systemctl show failed (%s); services not restarted", probe.stderr.strip()[:200])
        return None
    loaded = domain.loaded_units(probe.stdout)
    for argv in domain.service_commands(action, loaded):
        result = ctx.runner.run(list(argv), timeout=COMMAND_TIMEOUT)
        if not result.ok:
            return f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()[:300]}"
    return None


def apply(ctx: Context, actions: Iterable[domain.Action]) -> tuple[list[str], list[str]]:
    """Write each file on its own (one refusal never stops the others), then restart once.

    When the sshd_config edit is refused, sshd is not reloaded: it keeps
    running on the file it already has.
    """
    journal = ApplyJournal(ctx.log)
    sshd_written = False
    written_any = False
    for action in actions:
        if isinstance(action, domain.EditFile):
            check = sshd_check(ctx) if action.path == domain.SSHD_CONFIG else None
            try:
                ctx.fs.write_atomic(
                    action.path, action.text, mode=action.mode, uid=action.uid, gid=action.gid,
                    check=check,
                )
            except (OSError, UnsafePath, ValueError) as exc:
                journal.failed(f"{action.describe()} failed: {exc}")
                continue
            written_any = True
            sshd_written = sshd_written or action.path == domain.SSHD_CONFIG
        else:
            if not written_any:
                continue
            action = domain.RestartServices(action.reload_sshd and sshd_written, action.restart)
            error = _restart(ctx, action)
            if error is not None:
                journal.failed(error)
                continue
        journal.did(action)
    return journal.result()


class OsLoginSubsystem:
    name = "oslogin"

    def __init__(self) -> None:
        self._warnings = WarnOnce()

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        # Always on: with OS Login off it is what removes the agent's blocks again.
        return True

    def inputs(self, metadata: InstanceMetadata) -> object:
        return gce(metadata).oslogin_enabled

    def plan(self, ctx: Context, metadata: InstanceMetadata) -> domain.OsLoginPlan:
        return domain.plan(desired(ctx, metadata), observe(ctx))

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        planned = self.plan(ctx, metadata)
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in planned.actions))
        done, failures = apply(ctx, planned.actions)
        return Outcome(self.name, tuple(done), tuple(failures))

