"""Deprovisioning through the ports: observe the guest, plan in the domain, apply.

The plan (guestagent.domain.deprovision) decides what goes; here it is read and
carried out. One failed step never stops the others, except a service that would not
stop: a running agent would provision the machine again while the rest is removed, so
nothing else is done then. The managed-users records go last and only when every user
step went through, so a second run still finds the users a failed one left.
"""

from __future__ import annotations

from guestagent.domain import accounts
from guestagent.domain import deprovision as domain
from guestagent.domain.account_commands import UnconfinedCommand, commands_for
from guestagent.domain.config import Accounts as AccountsConfig
from guestagent.domain.local_users import KeysFileState
from guestagent.ports.filesystem import UnsafePath
from guestagent.services.accounts import observe_keys_file
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal

COMMAND_TIMEOUT = 120.0
DEFAULT_USERDEL = AccountsConfig().userdel_cmd
# systemctl's exit status for a unit that is not loaded (not installed): nothing to stop.
UNIT_NOT_LOADED = 5


def options_for(ctx: Context, remove_users: bool) -> domain.Options:
    setup = ctx.config.InstanceSetup
    return domain.Options(
        remove_users=remove_users,
        owns_machine=ctx.owns_machine,
        host_keys_regenerated=setup.set_host_keys and setup.network_enabled,
    )


def _listing(ctx: Context, folder: str) -> tuple[domain.Entry, ...]:
    entries = []
    for name in ctx.fs.listdir(folder):
        info = ctx.fs.stat(f"{folder}/{name}")
        if info is not None:
            entries.append(domain.Entry(name, is_dir=info.is_dir, is_symlink=info.is_symlink))
    return tuple(entries)


def _text(ctx: Context, path: str) -> tuple[str | None, bool]:
    """(the file's text, whether it is a symlink); a symlink is never read."""
    info = ctx.fs.stat(path)
    if info is None or info.is_dir:
        return None, False
    if info.is_symlink:
        return None, True
    return ctx.fs.read_text(path), False


def observe(ctx: Context) -> domain.Observed:
    listings = {folder: _listing(ctx, folder) for folder in domain.LISTED_DIRS}
    agent_names = [e.name for e in listings[domain.AGENT_STATE_DIR] if not e.is_dir]
    records: dict[str, frozenset[str]] = {}
    for path in domain.record_paths(agent_names):
        text, _ = _text(ctx, path)
        if text is not None:
            records[path] = accounts.parse_managed_users(text)
    users = ctx.users.users()
    keys_files: dict[str, KeysFileState] = {
        name: observe_keys_file(ctx, users[name])
        for name in domain.managed_users(records)
        if name in users
    }
    texts: dict[str, str | None] = {}
    symlinks: set[str] = set()
    for path in domain.TEXT_FILES:
        texts[path], is_link = _text(ctx, path)
        if is_link:
            symlinks.add(path)
    present = frozenset(p for p in domain.ALWAYS_REMOVED if ctx.fs.stat(p) is not None)
    return domain.Observed(
        listings=listings,
        records=records,
        users=users,
        groups=ctx.users.groups(),
        uid_min=ctx.users.uid_min(),
        keys_files=keys_files,
        texts=texts,
        symlinks=frozenset(symlinks),
        present=present,
    )


def plan(ctx: Context, remove_users: bool) -> domain.DeprovisionPlan:
    return domain.plan(observe(ctx), options_for(ctx, remove_users))


def _run(ctx: Context, argv: list[str], what: str) -> str | None:
    result = ctx.runner.run(argv, timeout=COMMAND_TIMEOUT)
    if result.ok:
        return None
    return f"{what} failed: {argv[0]} exit {result.returncode}: {result.stderr.strip()[:300]}"


def _confined(argv: list[str], root: str) -> list[str]:
    return argv if root == "/" else [argv[0], "--prefix", root, *argv[1:]]


def _account_commands(
    ctx: Context, action: accounts.DeleteUser | accounts.RemoveFromGroup
) -> list[list[str]]:
    """The account command builder's argv; with the default userdel template, `-f` too:
    whoever runs deprovision --user is usually logged in as a user it removes (WALinuxAgent
    does the same), and plain `userdel -r` refuses a user that has processes."""
    config = ctx.config.Accounts
    if isinstance(action, accounts.DeleteUser) and config.userdel_cmd == DEFAULT_USERDEL:
        return [_confined(["userdel", "-f", "-r", action.user], ctx.root)]
    return commands_for(action, config, ctx.root)


def _stop(ctx: Context, action: domain.StopService) -> str | None:
    if ctx.runner.which("systemctl") is None:
        ctx.log.info("no systemctl: %s is not stopped", action.unit)
        return None
    result = ctx.runner.run(["systemctl", "stop", action.unit], timeout=COMMAND_TIMEOUT)
    if result.ok or result.returncode == UNIT_NOT_LOADED:
        return None
    return f"could not stop {action.unit} (exit {result.returncode}: {result.stderr.strip()[:300]})"


def _write_like(ctx: Context, path: str, text: str) -> None:
    """Replace `path`, keeping its mode and owner (0644 root for a new file)."""
    info = ctx.fs.stat(path)
    if info is not None and not info.is_symlink:
        ctx.fs.write_atomic(path, text, mode=info.mode, uid=info.uid, gid=info.gid)
    else:
        ctx.fs.write_atomic(path, text, mode=0o644)


def _strip_keys(ctx: Context, action: domain.StripKeys) -> str | None:
    entry = ctx.users.users().get(action.user)
    if entry is None:
        return f"user {action.user} is gone; its keys were not rewritten"
    ctx.fs.write_user_file(
        entry.home,
        accounts.KEYS_RELATIVE,
        action.text,
        mode=accounts.KEYS_FILE_MODE,
        dir_mode=accounts.SSH_DIR_MODE,
        uid=entry.uid,
        gid=entry.gid,
    )
    return None


def _apply_one(ctx: Context, action: domain.Action) -> str | None:
    """Carry out one action; its failure message, or None."""
    match action:
        case domain.StopService():
            return _stop(ctx, action)
        case accounts.DeleteUser() | accounts.RemoveFromGroup():
            for argv in _account_commands(ctx, action):
                error = _run(ctx, argv, action.describe())
                if error is not None:
                    return error
            return None
        case domain.StripKeys():
            return _strip_keys(ctx, action)
        case domain.ClearRootPassword():
            argv = _confined(["usermod", "-p", domain.NO_PASSWORD, "root"], ctx.root)
            return _run(ctx, argv, action.describe())
        case domain.RestoreFile():
            _write_like(ctx, action.path, action.text)
            ctx.fs.remove(action.saved)
            return None
        case domain.EditFile():
            _write_like(ctx, action.path, action.text)
            return None
        case domain.RemoveFile() | domain.RemoveRecord():
            ctx.fs.remove(action.path)
            return None


def apply(ctx: Context, planned: domain.DeprovisionPlan) -> tuple[list[str], list[str]]:
    """Carry out the plan; returns (what was done, what failed)."""
    journal = ApplyJournal(ctx.log, "deprovision: ")
    user_failures = 0
    for action in planned.actions:
        if isinstance(action, domain.RemoveRecord) and user_failures:
            journal.failed(
                f"kept {action.path}: {user_failures} user steps failed; run deprovision again"
            )
            continue
        try:
            error = _apply_one(ctx, action)
        except (OSError, UnsafePath, UnconfinedCommand, ValueError) as exc:
            error = f"{action.describe()} failed: {exc}"
        if error is None:
            journal.did(action)
            continue
        journal.failed(error)
        if isinstance(action, domain.USER_ACTIONS):
            user_failures += 1
        if isinstance(action, domain.StopService):
            journal.failed("nothing else was done: a running agent would provision this machine again")
            break
    return journal.result()
