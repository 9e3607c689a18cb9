"""Accounts: read the guest through ports, plan in the domain, apply through ports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

import attrs

from guestagent.domain import accounts as domain
from guestagent.domain.account_commands import UnconfinedCommand, commands_for
from guestagent.domain.config import Accounts as AccountsConfig
from guestagent.domain.local_users import KeysFileState, PasswdEntry
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.context import Context
from guestagent.services.instance_setup import report_sshable
from guestagent.services.journal import ApplyJournal, WarnOnce
from guestagent.services.subsystem import Outcome

COMMAND_TIMEOUT = 60.0


def observe_keys_file(ctx: Context, entry: PasswdEntry) -> KeysFileState:
    if ctx.fs.stat(entry.home) is None:
        return KeysFileState(text=None, home_exists=False)
    ssh_dir = entry.home.rstrip("/") + "/.ssh"
    dir_info = ctx.fs.stat(ssh_dir)
    if dir_info is not None and dir_info.is_symlink:
        return KeysFileState(text=None, ssh_dir_is_symlink=True)
    path = f"{ssh_dir}/authorized_keys"
    info = ctx.fs.stat(path)
    if info is None:
        return KeysFileState(
            text=None,
            ssh_dir_mode=dir_info.mode if dir_info else None,
            ssh_dir_uid=dir_info.uid if dir_info else None,
        )
    if info.is_symlink:
        return KeysFileState(text=None, file_is_symlink=True)
    return KeysFileState(
        text=ctx.fs.read_text(path),
        mode=info.mode,
        uid=info.uid,
        gid=info.gid,
        ssh_dir_mode=dir_info.mode if dir_info else None,
        ssh_dir_uid=dir_info.uid if dir_info else None,
    )


def observe(
    ctx: Context,
    interesting: Iterable[str],
    scope: frozenset[str] | None = None,
    layout: domain.Layout = domain.GCE_LAYOUT,
) -> domain.AccountsCurrent:
    """The guest's accounts, and key files of the users metadata or the record mention.

    With a scope, key files are read only for the users in it (see domain.plan).
    """
    users = ctx.users.users()
    managed = domain.parse_managed_users(ctx.fs.read_text(layout.state_path))
    readers = set(interesting) | managed if scope is None else scope
    keys_files = {name: observe_keys_file(ctx, users[name]) for name in readers if name in users}
    return domain.AccountsCurrent(
        users=users,
        groups=ctx.users.groups(),
        managed=managed,
        keys_files=keys_files,
        sudoers_text=ctx.fs.read_text(layout.sudoers_path),
        uid_min=ctx.users.uid_min(),
        login_defs=ctx.fs.read_text(domain.LOGIN_DEFS_PATH),
    )


def _visudo_check(ctx: Context) -> Callable[[str], None]:
    visudo = ctx.runner.which("visudo")

    def check(host_path: str) -> None:
        if visudo is None:
            ctx.log.warning("visudo not found; sudoers drop-in written unchecked")
            return
        result = ctx.runner.run([visudo, "-cf", host_path], timeout=COMMAND_TIMEOUT)
        if not result.ok:
            raise ValueError(f"visudo rejected the sudoers file: {result.stderr.strip()}")

    return check


# A pass that looks only at changed users trusts the disk for the others; this
# often a full pass re-reads everything and repairs what someone else changed.
FULL_PASS_EVERY = timedelta(minutes=10)


class AccountsSubsystem:
    name = "accounts"

    def __init__(self) -> None:
        self._warnings = WarnOnce()
        # Desired keys as of the last pass that succeeded, and when the last full one ran.
        self._settled: Mapping[str, tuple[str, ...]] | None = None
        self._full_at: datetime | None = None

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return ctx.config.Daemons.accounts_daemon

    def inputs(self, metadata: InstanceMetadata) -> object:
        return (metadata.ssh_keys, metadata.rejections_for(self.name), gce(metadata).oslogin_enabled)

    def desired(self, ctx: Context, metadata: InstanceMetadata) -> domain.AccountsDesired:
        want = domain.desired(metadata, ctx.clock.now(), ctx.config.Accounts.default_user)
        if gce(metadata).oslogin_enabled:
            # OS Login owns logins now: managed keys and sudo membership go away.
            return attrs.evolve(want, keys={}, notes=())
        return want

    def _scope(self, want: domain.AccountsDesired, now: datetime) -> frozenset[str] | None:
        if self._settled is None or self._full_at is None or now - self._full_at >= FULL_PASS_EVERY:
            return None
        before, after = self._settled, want.keys
        return frozenset(u for u in before.keys() | after.keys() if before.get(u) != after.get(u))

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        now = ctx.clock.now()
        want = self.desired(ctx, metadata)
        scope = self._scope(want, now)
        have = observe(ctx, want.keys, scope, want.layout)
        planned = domain.plan(want, have, ctx.config.Accounts, scope)
        for note in planned.notes:
            self._warnings.warn(ctx.log, note)
        full_at = now if scope is None or self._full_at is None else self._full_at
        self._full_at = full_at
        wake = full_at + FULL_PASS_EVERY
        if want.next_expiry is not None:
            wake = min(wake, want.next_expiry)
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in planned.actions), wake_at=want.next_expiry)
        done, failures = apply(ctx, planned.actions, have.users)
        if scope is None:
            sweep_leftovers(ctx, have)
        # Only a clean pass may narrow the next one: after a failure, look at everything again.
        self._settled = want.keys if not failures else None
        if not failures:
            report_sshable(ctx)
        return Outcome(self.name, tuple(done), tuple(failures), wake_at=wake)


def sweep_leftovers(ctx: Context, have: domain.AccountsCurrent) -> None:
    """On a full pass: the temp files of keys-file writes an agent killed mid-write left. The
    next write of a file sweeps them, but a file already as wanted is not written again."""
    swept = 0
    for name, state in have.keys_files.items():
        if state.home_exists and not state.ssh_dir_is_symlink and name in have.users:
            swept += ctx.fs.sweep_user_file(have.users[name].home, ".ssh/authorized_keys")
    if swept:
        ctx.log.info("removed %d temp files interrupted writes of authorized_keys left", swept)


def apply(
    ctx: Context, actions: Iterable[domain.Action], known_users: Mapping[str, PasswdEntry] | None = None
) -> tuple[list[str], list[str]]:
    """Carry out a plan; one user's failure never stops the others."""
    journal = ApplyJournal(ctx.log)
    failed_users: set[str] = set()
    # passwd as observed; read again (lazily) once a user has been created
    users: Mapping[str, PasswdEntry] | None = known_users
    config = ctx.config.Accounts

    def fail(message: str, user: str | None = None) -> None:
        journal.failed(message)
        if user is not None:
            failed_users.add(user)

    for action in actions:
        user = getattr(action, "user", None)
        if user is not None and user in failed_users:
            continue
        try:
            if isinstance(action, domain.WriteSudoers):
                ctx.fs.write_atomic(action.path, action.text, mode=0o440, check=_visudo_check(ctx))
            elif isinstance(action, domain.CreateHome):
                if users is None:
                    users = ctx.users.users()
                entry = users.get(action.user)
                if entry is None:
                    fail(f"user {action.user} does not exist; home not made", action.user)
                    continue
                ctx.fs.create_home(
                    entry.home, domain.SKEL_PATH, mode=action.mode, uid=entry.uid, gid=entry.gid
                )
            elif isinstance(action, domain.WriteKeys):
                if users is None:
                    users = ctx.users.users()
                entry = users.get(action.user)
                if entry is None:
                    fail(f"user {action.user} does not exist; keys not written", action.user)
                    continue
                ctx.fs.write_user_file(
                    entry.home,
                    domain.KEYS_RELATIVE,
                    action.text,
                    mode=domain.KEYS_FILE_MODE,
                    dir_mode=domain.SSH_DIR_MODE,
                    uid=entry.uid,
                    gid=entry.gid,
                )
            elif isinstance(action, domain.WriteManagedUsers):
                record = tuple(u for u in action.users if u not in failed_users)
                ctx.fs.write_atomic(action.path, domain.render_managed_users(record), mode=0o600)
            else:
                error = _run_commands(ctx, action, config)
                if error is not None:
                    fail(error, user)
                    continue
                if isinstance(action, domain.CreateUser):
                    users = None
        except (OSError, UnsafePath, UnconfinedCommand, ValueError) as exc:
            fail(f"{action.describe()} failed: {exc}", user)
            continue
        journal.did(action)
    return journal.result()


def _run_commands(ctx: Context, action: domain.Action, config: AccountsConfig) -> str | None:
    """Run the action's commands in order; the first failure's message, or None."""
    for argv in commands_for(action, config, ctx.root):
        result = ctx.runner.run(argv, timeout=COMMAND_TIMEOUT)
        if not result.ok:
            return (
                f"{action.describe()} failed: {argv[0]} exit {result.returncode}: "
                f"{result.stderr.strip()[:300]}"
            )
    return None

