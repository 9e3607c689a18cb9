"""Accounts: users, groups, sudoers and SSH keys, as desired -> plan -> actions.

The planner sees everything as values: what metadata wants (AccountsDesired),
what the guest has (AccountsCurrent), and returns the actions that close the
gap. An empty plan is the proof of idempotency: apply, observe, plan again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs

from guestagent.domain import authorized_keys
from guestagent.domain.config import Accounts as AccountsConfig
from guestagent.domain.local_users import KeysFileState, PasswdEntry
from guestagent.domain.metadata import InstanceMetadata, Rejection
from guestagent.domain.validation import BASE_SYSTEM_USERS, Invalid, check_username

SUDO_GROUP = "google-sudoers"
SUDOERS_PATH = "/etc/sudoers.d/google_sudoers"
SUDOERS_TEXT = f"%{SUDO_GROUP} ALL=(ALL:ALL) NOPASSWD:ALL\n"
STATE_PATH = "/var/lib/google/google_users"
SSH_DIR_MODE = 0o700
KEYS_FILE_MODE = 0o600
KEYS_RELATIVE = ".ssh/authorized_keys"


def _frozen_map(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class AccountsDesired:
    """Per user, the live key lines metadata wants installed, in metadata order."""

    keys: Mapping[str, tuple[str, ...]] = attrs.field(converter=_frozen_map)
    rejections: tuple[Rejection, ...] = ()
    # When the earliest live key expires: the daemon wakes then, with no metadata event.
    next_expiry: datetime | None = None


@attrs.frozen
class AccountsCurrent:
    users: Mapping[str, PasswdEntry]
    groups: Mapping[str, frozenset[str]]
    managed: frozenset[str]
    keys_files: Mapping[str, KeysFileState]
    sudoers_text: str | None
    uid_min: int = 1000


# ---- actions: plain data, printable for --dry-run, never holding key material in str()


@attrs.frozen
class CreateGroup:
    group: str

    def describe(self) -> str:
        return f"create group {self.group}"


@attrs.frozen
class WriteSudoers:
    path: str
    text: str

    def describe(self) -> str:
        return f"write {self.path} (mode 0440)"


@attrs.frozen
class CreateUser:
    user: str
    groups: tuple[str, ...]

    def describe(self) -> str:
        return f"create user {self.user} in groups {','.join(self.groups)}"


@attrs.frozen
class AddToGroup:
    user: str
    group: str

    def describe(self) -> str:
        return f"add {self.user} to {self.group}"


@attrs.frozen
class RemoveFromGroup:
    user: str
    group: str

    def describe(self) -> str:
        return f"remove {self.user} from {self.group}"


@attrs.frozen
class WriteKeys:
    """Write ~user/.ssh/authorized_keys; the home is resolved at apply time (the user may be new)."""

    user: str
    text: str
    managed_count: int

    def describe(self) -> str:
        return f"write ~{self.user}/{KEYS_RELATIVE} ({self.managed_count} managed keys)"


@attrs.frozen
class DeleteUser:
    user: str

    def describe(self) -> str:
        return f"delete user {self.user} and its home"


@attrs.frozen
class WriteManagedUsers:
    path: str
    users: tuple[str, ...]

    def describe(self) -> str:
        return f"record {len(self.users)} managed users in {self.path}"


Action = (
    CreateGroup | WriteSudoers | CreateUser | AddToGroup | RemoveFromGroup | WriteKeys | DeleteUser
    | WriteManagedUsers
)  # fmt: skip


@attrs.frozen
class AccountsPlan:
    actions: tuple[Action, ...]
    # Messages worth one log line each (refused users, refused key lines).
    notes: tuple[str, ...] = ()


def system_users(current: AccountsCurrent) -> frozenset[str]:
    """Accounts metadata may not take over: the base list plus local ones below UID_MIN."""
    local = {name for name, entry in current.users.items() if entry.uid < current.uid_min}
    return BASE_SYSTEM_USERS | local


def desired(metadata: InstanceMetadata, now: datetime) -> AccountsDesired:
    """Live keys per user; expired keys drop out, and with them users that have no other key."""
    keys: dict[str, list[str]] = {}
    next_expiry: datetime | None = None
    for key in metadata.ssh_keys:
        if not key.is_live(now):
            continue
        keys.setdefault(key.user, []).append(key.line)
        if key.expires_at is not None and (next_expiry is None or key.expires_at < next_expiry):
            next_expiry = key.expires_at
    return AccountsDesired(
        keys={u: tuple(v) for u, v in keys.items()},
        rejections=metadata.rejections,
        next_expiry=next_expiry,
    )


def parse_managed_users(text: str | None) -> frozenset[str]:
    """The state file: one user per line; anything that is not a valid name is ignored."""
    names = set()
    for line in (text or "").splitlines():
        try:
            names.add(check_username(line.strip(), system_users=()))
        except Invalid:
            continue
    return frozenset(names)


def render_managed_users(users: tuple[str, ...]) -> str:
    return "".join(f"{u}\n" for u in users)


def _keys_file_needs_fix(state: KeysFileState, entry: PasswdEntry) -> bool:
    return state.text is not None and (
        state.mode != KEYS_FILE_MODE
        or state.uid != entry.uid
        or state.gid != entry.gid
        or state.ssh_dir_mode != SSH_DIR_MODE
        or state.ssh_dir_uid != entry.uid
    )


def _refusal(state: KeysFileState | None) -> str | None:
    if state is None:
        return None
    if state.ssh_dir_is_symlink:
        return "~/.ssh is a symlink"
    if state.file_is_symlink:
        return f"~/{KEYS_RELATIVE} is a symlink"
    return None


def plan(
    want: AccountsDesired,
    have: AccountsCurrent,
    config: AccountsConfig,
    scope: frozenset[str] | None = None,
) -> AccountsPlan:
    """Actions from `have` to `want`.

    `scope` limits the per-user work (accounts, memberships, key files) to
    those users: the daemon passes the users whose desired keys changed since
    its last full pass, so one changed key costs one user's look at the disk.
    None means every user.
    """
    notes = [f"ignored {r.where}: {r.reason}" for r in want.rejections]
    reserved = system_users(have)
    wanted: dict[str, tuple[str, ...]] = {}
    for user, lines in want.keys.items():
        try:
            check_username(user, reserved, config.allowed_system_users)
        except Invalid as exc:
            notes.append(f"refused user {user!r}: {exc}")
            continue
        wanted[user] = lines

    actions: list[Action] = []
    groups = dict(have.groups)
    if wanted and SUDO_GROUP not in groups:
        actions.append(CreateGroup(SUDO_GROUP))
        groups[SUDO_GROUP] = frozenset()
    if wanted and have.sudoers_text != SUDOERS_TEXT:
        actions.append(WriteSudoers(SUDOERS_PATH, SUDOERS_TEXT))

    new_user_groups = tuple(g for g in config.groups if g in groups and g != SUDO_GROUP)
    key_writes: list[Action] = []
    for user in sorted(wanted if scope is None else wanted.keys() & scope):
        entry = have.users.get(user)
        if entry is None:
            actions.append(CreateUser(user, (*new_user_groups, SUDO_GROUP)))
        elif user not in groups.get(SUDO_GROUP, frozenset()):
            actions.append(AddToGroup(user, SUDO_GROUP))
        state = have.keys_files.get(user)
        refused = _refusal(state)
        if refused is not None:
            notes.append(f"not writing keys for {user}: {refused}")
            continue
        current_text = state.text if state is not None else None
        text = authorized_keys.with_managed(current_text, wanted[user])
        if (
            text != current_text
            or entry is None
            or (state is not None and _keys_file_needs_fix(state, entry))
        ):
            key_writes.append(WriteKeys(user, text, len(wanted[user])))
    actions += key_writes

    leaving = have.managed - wanted.keys()
    for user in sorted(leaving if scope is None else leaving & scope):
        entry = have.users.get(user)
        if entry is None:
            continue  # deleted by someone else: only the record goes
        if config.deprovision_remove and entry.uid >= have.uid_min:
            actions.append(DeleteUser(user))
            continue
        state = have.keys_files.get(user)
        refused = _refusal(state)
        if refused is not None:
            notes.append(f"not removing keys for {user}: {refused}")
        elif state is not None and state.text is not None:
            own, managed = authorized_keys.split_managed(state.text)
            if managed:
                actions.append(WriteKeys(user, authorized_keys.render(own, []), 0))
        if user in groups.get(SUDO_GROUP, frozenset()):
            actions.append(RemoveFromGroup(user, SUDO_GROUP))

    record = tuple(sorted(wanted))
    if frozenset(record) != have.managed:
        actions.append(WriteManagedUsers(STATE_PATH, record))
    return AccountsPlan(tuple(actions), tuple(notes))
