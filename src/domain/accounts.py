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
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.validation import BASE_SYSTEM_USERS, Invalid, check_username

SUDO_GROUP = "google-sudoers"
SUDOERS_PATH = "/etc/sudoers.d/google_sudoers"
SUDOERS_TEXT = f"%{SUDO_GROUP} ALL=(ALL:ALL) NOPASSWD:ALL\n"
STATE_PATH = "/var/lib/google/google_users"
SSH_DIR_MODE = 0o700
KEYS_FILE_MODE = 0o600
KEYS_RELATIVE = ".ssh/authorized_keys"
SKEL_PATH = "/etc/skel"
LOGIN_DEFS_PATH = "/etc/login.defs"


@attrs.frozen
class Layout:
    """The names one platform's accounts live under: the sudo group and its drop-in, the
    managed-users record and the marker above each managed key. GCE keeps Google's names
    (a guest moved from Google's agent stays managed); every other platform gets its own
    record, so a VM captured on one platform and booted on another forgets nobody."""

    sudo_group: str = SUDO_GROUP
    sudoers_path: str = SUDOERS_PATH
    state_path: str = STATE_PATH
    marker: str = authorized_keys.MARKER
    # System accounts the platform itself names as its keys' owner (the CPIO metadata
    # device's authorized_keys and SmartOS's root_authorized_keys). Managed on that platform only,
    # without [Accounts] allowed_system_users, and never put in the sudo group.
    platform_users: frozenset[str] = frozenset()

    @property
    def sudoers_text(self) -> str:
        return f"%{self.sudo_group} ALL=(ALL:ALL) NOPASSWD:ALL\n"


GCE_LAYOUT = Layout()
PLATFORM_USERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {"cpio": frozenset({"root"}), "smartos": frozenset({"root"})}
)


def layout_for(platform: str) -> Layout:
    if platform == "gce":
        return GCE_LAYOUT
    return Layout(
        sudo_group="guestagent-sudoers",
        sudoers_path="/etc/sudoers.d/guestagent",
        state_path=f"/var/lib/guestagent/{platform}_users",
        marker=authorized_keys.AGENT_MARKER,
        platform_users=PLATFORM_USERS.get(platform, frozenset()),
    )


def _frozen_map(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class AccountsDesired:
    """Per user, the live key lines metadata wants installed, in metadata order."""

    keys: Mapping[str, tuple[str, ...]] = attrs.field(converter=_frozen_map)
    # When the earliest live key expires: the daemon wakes then, with no metadata event.
    next_expiry: datetime | None = None
    # The image's default user, when the platform's name-less keys went to it.
    default_user: str | None = None
    layout: Layout = GCE_LAYOUT
    notes: tuple[str, ...] = ()


@attrs.frozen
class AccountsCurrent:
    users: Mapping[str, PasswdEntry]
    groups: Mapping[str, frozenset[str]]
    managed: frozenset[str]
    keys_files: Mapping[str, KeysFileState]
    sudoers_text: str | None
    uid_min: int = 1000
    # /etc/login.defs, for the mode of a home the planner has to make (HOME_MODE, UMASK).
    login_defs: str | None = None


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
class CreateHome:
    """Make a missing home from the skeleton, owned by the user (see KeysFileState.home_exists)."""

    user: str
    home: str
    mode: int

    def describe(self) -> str:
        return f"create missing home {self.home} for {self.user} (mode {self.mode:04o})"


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
    CreateGroup | WriteSudoers | CreateUser | AddToGroup | RemoveFromGroup | CreateHome | WriteKeys
    | DeleteUser | WriteManagedUsers
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


def desired(metadata: InstanceMetadata, now: datetime, default_user: str = "") -> AccountsDesired:
    """Live keys per user; expired keys drop out, and with them users that have no other key.

    Keys the platform gives without a name go to `default_user` ([Accounts]
    default_user); with none configured they are refused, and said once.
    """
    keys: dict[str, list[str]] = {}
    next_expiry: datetime | None = None
    unowned = 0
    for key in metadata.ssh_keys:
        if not key.is_live(now):
            continue
        user = key.user if key.user is not None else default_user
        if not user:
            unowned += 1
            continue
        if key.line not in keys.setdefault(user, []):
            keys[user].append(key.line)
        if key.expires_at is not None and (next_expiry is None or key.expires_at < next_expiry):
            next_expiry = key.expires_at
    notes: tuple[str, ...] = ()
    if unowned:
        notes = (f"{unowned} keys for the image's default user ignored: [Accounts] default_user is not set",)
    return AccountsDesired(
        keys={u: tuple(v) for u, v in keys.items()},
        next_expiry=next_expiry,
        default_user=default_user or None,
        layout=layout_for(metadata.platform),
        notes=notes,
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


def home_mode(login_defs: str | None) -> int:
    """The mode useradd gives a new home: HOME_MODE, else 0777 & ~UMASK (login.defs)."""
    values: dict[str, str] = {}
    for line in (login_defs or "").splitlines():
        words = line.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            values[words[0]] = words[1]
    for name, from_umask in (("HOME_MODE", False), ("UMASK", True)):
        try:
            mode = int(values[name], 8) & 0o777
        except (KeyError, ValueError):
            continue
        return 0o777 & ~mode if from_umask else mode
    return 0o755


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
    layout = want.layout
    sudo_group = layout.sudo_group
    notes = list(want.notes)
    reserved = system_users(have)
    allowed = (*config.allowed_system_users, *layout.platform_users)
    wanted: dict[str, tuple[str, ...]] = {}
    for user, lines in want.keys.items():
        try:
            check_username(user, reserved, allowed)
        except Invalid as exc:
            notes.append(f"refused user {user!r}: {exc}")
            continue
        wanted[user] = lines

    actions: list[Action] = []
    groups = dict(have.groups)
    # The default user may be kept out of sudo ([Accounts] default_user_sudo = false).
    sudoers = {
        u for u in wanted
        if u not in layout.platform_users and (u != want.default_user or config.default_user_sudo)
    }
    if sudoers and sudo_group not in groups:
        actions.append(CreateGroup(sudo_group))
        groups[sudo_group] = frozenset()
    if sudoers and have.sudoers_text != layout.sudoers_text:
        actions.append(WriteSudoers(layout.sudoers_path, layout.sudoers_text))

    def existing(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(g for g in names if g in groups and g != sudo_group)

    key_writes: list[Action] = []
    for user in sorted(wanted if scope is None else wanted.keys() & scope):
        entry = have.users.get(user)
        sudo = user in sudoers
        members = groups.get(sudo_group, frozenset())
        if entry is None:
            base = existing(config.default_user_groups if user == want.default_user else config.groups)
            actions.append(CreateUser(user, (*base, sudo_group) if sudo else base))
        elif sudo and user not in members:
            actions.append(AddToGroup(user, sudo_group))
        elif not sudo and user in members:
            actions.append(RemoveFromGroup(user, sudo_group))
        state = have.keys_files.get(user)
        refused = _refusal(state)
        if refused is not None:
            notes.append(f"not writing keys for {user}: {refused}")
            continue
        if entry is not None and state is not None and not state.home_exists:
            actions.append(CreateHome(user, entry.home, home_mode(have.login_defs)))
        current_text = state.text if state is not None else None
        text = authorized_keys.with_managed(current_text, wanted[user], layout.marker)
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
        # The image's default user was there before the agent: it is never deleted.
        if config.deprovision_remove and entry.uid >= have.uid_min and user != config.default_user:
            actions.append(DeleteUser(user))
            continue
        state = have.keys_files.get(user)
        refused = _refusal(state)
        if refused is not None:
            notes.append(f"not removing keys for {user}: {refused}")
        elif state is not None and state.text is not None:
            own, managed = authorized_keys.split_managed(state.text, layout.marker)
            if managed:
                actions.append(WriteKeys(user, authorized_keys.render(own, [], layout.marker), 0))
        if user in groups.get(sudo_group, frozenset()):
            actions.append(RemoveFromGroup(user, sudo_group))

    record = tuple(sorted(wanted))
    if frozenset(record) != have.managed:
        actions.append(WriteManagedUsers(layout.state_path, record))
    return AccountsPlan(tuple(actions), tuple(notes))
