"""Deprovisioning: what to remove so that an image captured from this disk boots as a new
instance. Pure: the service observes the guest into `Observed`, `plan()` returns printable
actions, and the service carries them out (or only prints them, for --dry-run).

What goes, and why (every path relative to the agent's root):

- the agent's service is stopped first (on the machine itself only): a running daemon
  would set the instance up again while the rest is removed;
- managed users, from every platform's managed-users record (Google's
  /var/lib/google/google_users and the agent's /var/lib/guestagent/<platform>_users):
  without `--user` they keep their account, home and their own authorized_keys lines,
  and lose the managed lines (under `# Added by Google` or `# Added by guestagent`) and
  the agent's sudo groups; with `--user` they are deleted (`userdel -f -r`, or the
  configured [Accounts] userdel_cmd through the account command builder). Root, any
  account below UID_MIN, and a user whose home is not its own (`/`, a top-level folder,
  a home another account shares) are never deleted: they only lose their managed key
  lines. A user no record names is never looked at;
- with `--user`, root's password hash: replaced by `*` (`usermod -p '*' root`), so no
  password matches while the account stays unlocked; a `!` lock would also refuse key
  logins where sshd runs without PAM, and root's keys are how the CPIO device and SmartOS
  reach a guest;
- SSH host keys (/etc/ssh/ssh_host_*), so the new instance makes its own; kept (and said)
  when the agent will not make new ones at the next boot ([InstanceSetup] set_host_keys or
  network_enabled false), as WALinuxAgent keeps them without RegenerateSshHostKeyPair;
- sshd_config, restored byte for byte from the agent's saved original when there is one,
  and the OS Login blocks the agent put in sshd, NSS and PAM files (removed exactly);
- /etc/hostname (back to `localhost`) and the agent's line in /etc/hosts (every other
  line kept byte for byte);
- /etc/resolv.conf when the agent wrote it, the agent's systemd-resolved drop-in, and
  DHCP clients' leases;
- the instance id records (/etc/google_instance_id, /var/lib/guestagent/instance-id),
  Google's /etc/boto.cfg as the agent writes it, and every other file of the agent's state
  (/var/lib/guestagent, /var/lib/google): first-boot stamps, clock token, records.

Kept, and said so: cloud-init's /var/lib/cloud (not the agent's), /run (gone at the next
boot; removing the agent's network record now would make it forget its own addresses),
/etc/machine-id (systemd's), the agent's sudoers drop-ins and groups (empty once the
users are gone; the next boot needs them again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain import accounts, authorized_keys, dns, hostname, instance_setup, oslogin
from guestagent.domain.local_users import KeysFileState, PasswdEntry

AGENT_STATE_DIR = "/var/lib/guestagent"
GOOGLE_STATE_DIR = "/var/lib/google"
STATE_DIRS = (AGENT_STATE_DIR, GOOGLE_STATE_DIR)
SSH_DIR = instance_setup.SSH_DIR
# Another subsystem (Azure provisioning) saves the image's sshd_config here before its
# first edit; deprovisioning puts it back and drops the copy.
SSHD_CONFIG_ORIG = f"{AGENT_STATE_DIR}/sshd_config.orig"
SSHD_CONFIG = oslogin.SSHD_CONFIG
SERVICE_UNIT = "guestagent.service"
RESET_HOSTNAME = "localhost"
SHADOW_PATH = "/etc/shadow"
# The password field deprovisioning leaves root with: no password matches it, and it is
# not a lock (see the module docstring).
NO_PASSWORD = "*"  # noqa: S105 - a password field that matches no password

# DHCP clients' lease folders and the names in them that are leases.
LEASE_DIRS: Mapping[str, re.Pattern[str]] = MappingProxyType(
    {
        "/var/lib/dhcp": re.compile(r".*\.leases?"),  # ISC dhclient on Debian
        "/var/lib/dhclient": re.compile(r".+"),  # ISC dhclient on Red Hat: the whole folder
        "/var/lib/NetworkManager": re.compile(r".*\.leases?"),
        "/var/lib/dhcpcd": re.compile(r".*\.lease6?"),
    }
)
LISTED_DIRS = (SSH_DIR, *STATE_DIRS, *LEASE_DIRS)
# Files whose text the plan needs.
TEXT_FILES = (
    hostname.HOSTNAME_PATH,
    hostname.HOSTS_PATH,
    dns.RESOLV_CONF,
    instance_setup.BOTO_PATH,
    SSHD_CONFIG_ORIG,
    SHADOW_PATH,
    *oslogin.FILES,
)
# Files that go whenever they are there.
ALWAYS_REMOVED: Mapping[str, str] = MappingProxyType(
    {
        instance_setup.INSTANCE_ID_PATH: "instance id record: the next boot is a first boot",
        dns.RESOLVED_DROPIN: "the agent's resolvers for this instance",
        oslogin.TRUSTED_CA_PATH: "OS Login's certificate authority for this project",
    }
)
KEPT = (
    "keep /var/lib/cloud: cloud-init's, not the agent's (`cloud-init clean` is its own tool)",
    "keep /run/guestagent: gone at the next boot; the agent still needs its network record until then",
    "keep /etc/machine-id: systemd's (an image builder empties it with `truncate -s0 /etc/machine-id`)",
    "keep the agent's sudoers drop-ins and sudo groups: they grant nothing without members",
)
NOT_EVERYTHING = (
    "this removes what the agent put on this machine; other secrets (shell histories, logs, "
    "application data) are not looked for"
)

# Why each known state file goes; anything else there is "the agent's state".
_STATE_REASONS = (
    (re.compile(r"instance-id"), "instance id record: the next boot is a first boot"),
    (re.compile(r"firstboot"), "first-boot script stamps: they run again on the new instance"),
    (re.compile(r"clock_drift_token"), "clock drift token"),
    (re.compile(r"pending-host-keys"), "host key types still to make for this instance"),
    (re.compile(r"hostname-applied"), "the name given to this VM: the next one is named afresh"),
)
# Google's group, and the one every other platform's layout uses.
SUDO_GROUPS = tuple(sorted({accounts.GCE_LAYOUT.sudo_group, accounts.layout_for("ec2").sudo_group}))
_RECORD_NAME = re.compile(r"[a-z0-9]+_users")
_BOTO = re.compile(
    re.escape(instance_setup.boto_config("PROJECT")).replace("PROJECT", r"[^\n]*"), re.DOTALL
)


def _frozen(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Entry:
    """One name in a listed folder, as lstat sees it."""

    name: str
    is_dir: bool = False
    is_symlink: bool = False


@attrs.frozen
class Observed:
    """What the service read from the guest."""

    # Folder (LISTED_DIRS) -> what is in it; a missing folder is absent or empty.
    listings: Mapping[str, tuple[Entry, ...]] = attrs.field(factory=dict, converter=_frozen)
    # Managed-users record path -> the users it names.
    records: Mapping[str, frozenset[str]] = attrs.field(factory=dict, converter=_frozen)
    users: Mapping[str, PasswdEntry] = attrs.field(factory=dict, converter=_frozen)
    groups: Mapping[str, frozenset[str]] = attrs.field(factory=dict, converter=_frozen)
    uid_min: int = 1000
    # Managed users' authorized_keys, for those that exist.
    keys_files: Mapping[str, KeysFileState] = attrs.field(factory=dict, converter=_frozen)
    # TEXT_FILES' texts; None when absent. A symlink is not read: it is in `symlinks`.
    texts: Mapping[str, str | None] = attrs.field(factory=dict, converter=_frozen)
    symlinks: frozenset[str] = frozenset()
    # Which of ALWAYS_REMOVED exist.
    present: frozenset[str] = frozenset()


@attrs.frozen
class Options:
    # --user: delete managed users (and root's password) instead of only their managed keys.
    remove_users: bool = False
    # False under a sandbox root: the agent's service is the machine's, not the sandbox's.
    owns_machine: bool = True
    # [InstanceSetup] set_host_keys and network_enabled: whether the next boot makes host keys.
    host_keys_regenerated: bool = True


# ---- actions: plain data, printable, never holding key material in describe()


@attrs.frozen
class StopService:
    unit: str

    def describe(self) -> str:
        return f"stop {self.unit} (a running agent would set this instance up again)"


@attrs.frozen
class StripKeys:
    """Rewrite ~user/.ssh/authorized_keys without its managed lines."""

    user: str
    text: str = attrs.field(repr=False)
    removed: int
    kept: int

    def describe(self) -> str:
        return (
            f"remove {self.removed} managed keys from ~{self.user}/{accounts.KEYS_RELATIVE} "
            f"({self.kept} lines of the user's own kept)"
        )


@attrs.frozen
class ClearRootPassword:
    def describe(self) -> str:
        return (
            f"remove root's password (usermod -p '{NO_PASSWORD}' root: no password matches, "
            "key logins stay)"
        )


@attrs.frozen
class RestoreFile:
    """Put `path` back to the saved copy's bytes, then remove the copy."""

    path: str
    saved: str
    text: str = attrs.field(repr=False)

    def describe(self) -> str:
        return f"restore {self.path} from {self.saved} (byte for byte), then remove the copy"


@attrs.frozen
class EditFile:
    path: str
    text: str = attrs.field(repr=False)
    why: str

    def describe(self) -> str:
        return f"rewrite {self.path}: {self.why}"


@attrs.frozen
class RemoveFile:
    path: str
    why: str

    def describe(self) -> str:
        return f"remove {self.path} ({self.why})"


@attrs.frozen
class RemoveRecord:
    """A managed-users record; removed only once every user action went through, so a
    second deprovision can still find the users a failed one left."""

    path: str
    users: int

    def describe(self) -> str:
        return f"remove {self.path} (managed-users record, {self.users} users)"


Action = (
    StopService | accounts.DeleteUser | accounts.RemoveFromGroup | StripKeys | ClearRootPassword
    | RestoreFile | EditFile | RemoveFile | RemoveRecord
)  # fmt: skip
USER_ACTIONS = (accounts.DeleteUser, accounts.RemoveFromGroup, StripKeys)


@attrs.frozen
class DeprovisionPlan:
    actions: tuple[Action, ...]
    # Lines worth printing beside the actions: what is kept and why.
    notes: tuple[str, ...] = ()

    def render(self, verb: str = "will") -> str:
        """The printable plan: one line per action, then the notes."""
        lines = [f"{verb} {action.describe()}" for action in self.actions]
        if not self.actions:
            lines.append("nothing to remove")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


# ---- pure helpers the service uses to know what to read


def record_paths(agent_state_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Every platform's managed-users record: Google's, then the agent's `<platform>_users`."""
    mine = sorted(n for n in agent_state_names if _RECORD_NAME.fullmatch(n))
    return (accounts.STATE_PATH, *(f"{AGENT_STATE_DIR}/{n}" for n in mine))


def managed_users(records: Mapping[str, frozenset[str]]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for users in records.values():
        out |= users
    return out


def shadow_password(shadow_text: str | None, user: str = "root") -> str | None:
    """`user`'s password field in /etc/shadow, or None when it has no entry."""
    for line in (shadow_text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[0] == user:
            return fields[1]
    return None


def has_password(field: str) -> bool:
    """Whether the field could let a password in or still holds a hash (`!` only locks it).

    Empty (no password needed at all) and any hash, locked or not, count; `*`, `!`, `!!`,
    `*LK*` and the like do not.
    """
    unlocked = field.lstrip("!")
    if field and not unlocked:
        return False
    return not unlocked.startswith("*")


def without_hosts_lines(text: str) -> str:
    """/etc/hosts without the agent's lines; every other line byte for byte."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not line.rstrip().endswith(hostname.HOSTS_MARKER))


def strip_managed(text: str) -> tuple[str, int, int]:
    """(the file without managed lines under either marker, lines removed, lines kept)."""
    own, google = authorized_keys.split_managed(text, authorized_keys.MARKER)
    own_text = "".join(own)
    rest, agent = authorized_keys.split_managed(own_text, authorized_keys.AGENT_MARKER)
    return "".join(rest), len(google) + len(agent), len(rest)


# ---- the plan


def _keys_action(user: str, state: KeysFileState | None, notes: list[str]) -> StripKeys | None:
    if state is None:
        return None
    if state.ssh_dir_is_symlink or state.file_is_symlink:
        notes.append(f"not touching ~{user}/{accounts.KEYS_RELATIVE}: a symlink")
        return None
    if state.text is None:
        return None
    text, removed, kept = strip_managed(state.text)
    return StripKeys(user, text, removed, kept) if removed else None


def _shared_home(entry: PasswdEntry, users: Mapping[str, PasswdEntry]) -> bool:
    """A home userdel -r must not remove: the root folder, a top-level system folder, or
    one another account also lives in."""
    home = "/" + "/".join(p for p in entry.home.split("/") if p and p != ".")
    if home.count("/") < 2 or ".." in home.split("/"):
        return True
    return any(
        other.name != entry.name and "/" + "/".join(p for p in other.home.split("/") if p) == home
        for other in users.values()
    )


def _user_actions(have: Observed, options: Options, notes: list[str]) -> list[Action]:
    actions: list[Action] = []
    for user in sorted(managed_users(have.records)):
        entry = have.users.get(user)
        if entry is None:
            continue  # already gone: only its record goes
        protected = user == "root" or entry.uid == 0 or entry.uid < have.uid_min
        shared = _shared_home(entry, have.users)
        if options.remove_users and not protected and not shared:
            actions.append(accounts.DeleteUser(user))
            continue
        if options.remove_users and protected:
            notes.append(f"keep user {user}: a system account is never deleted; only its managed keys go")
        elif options.remove_users:
            notes.append(
                f"keep user {user}: its home {entry.home or '(none)'} is not its own "
                "(userdel -r would remove it); only its managed keys go"
            )
        strip = _keys_action(user, have.keys_files.get(user), notes)
        if strip is not None:
            actions.append(strip)
        for group in SUDO_GROUPS:
            if user in have.groups.get(group, frozenset()):
                actions.append(accounts.RemoveFromGroup(user, group))
    return actions


def _names(have: Observed, folder: str) -> tuple[Entry, ...]:
    return have.listings.get(folder, ())


def _state_reason(name: str) -> str:
    for pattern, why in _STATE_REASONS:
        if pattern.fullmatch(name):
            return why
    return "the agent's state"


def _file_actions(
    have: Observed, options: Options, records: tuple[str, ...], notes: list[str]
) -> list[Action]:
    actions: list[Action] = []
    texts = have.texts
    saved = texts.get(SSHD_CONFIG_ORIG)
    if saved is not None:
        actions.append(RestoreFile(SSHD_CONFIG, SSHD_CONFIG_ORIG, saved))
    for path in oslogin.FILES:
        text = texts.get(path)
        if text is None or (path == SSHD_CONFIG and saved is not None):
            continue
        if oslogin.has_blocks(text):
            actions.append(EditFile(path, oslogin.remove_blocks(text), "remove the agent's OS Login changes"))
    host_keys = [e.name for e in _names(have, SSH_DIR) if e.name.startswith("ssh_host_") and not e.is_dir]
    if host_keys and not options.host_keys_regenerated:
        notes.append(
            "keep the SSH host keys: [InstanceSetup] set_host_keys (waagent.conf's "
            "Provisioning.RegenerateSshHostKeyPair) or network_enabled is false, so nothing would make "
            "new ones and sshd would not start; every instance of this image will share them"
        )
    elif host_keys:
        why = "SSH host key: the new instance makes its own"
        actions += [RemoveFile(f"{SSH_DIR}/{name}", why) for name in host_keys]
    name = texts.get(hostname.HOSTNAME_PATH)
    if hostname.HOSTNAME_PATH in have.symlinks:
        notes.append(f"keep {hostname.HOSTNAME_PATH}: a symlink, not written through")
    elif name is None or name.strip() != RESET_HOSTNAME:
        why = f"hostname back to {RESET_HOSTNAME}"
        actions.append(EditFile(hostname.HOSTNAME_PATH, RESET_HOSTNAME + "\n", why))
    hosts = texts.get(hostname.HOSTS_PATH)
    if hosts is not None and without_hosts_lines(hosts) != hosts:
        actions.append(EditFile(hostname.HOSTS_PATH, without_hosts_lines(hosts), "remove the agent's line"))
    resolv = texts.get(dns.RESOLV_CONF)
    if resolv is not None and resolv.startswith(dns.HEADER):
        actions.append(RemoveFile(dns.RESOLV_CONF, "the agent wrote it from this instance's metadata"))
    boto = texts.get(instance_setup.BOTO_PATH)
    if boto is not None and _BOTO.fullmatch(boto):
        why = "names this instance's project; written again at first boot"
        actions.append(RemoveFile(instance_setup.BOTO_PATH, why))
    for path, why in ALWAYS_REMOVED.items():
        if path in have.present:
            actions.append(RemoveFile(path, why))
    for folder, pattern in LEASE_DIRS.items():
        for entry in _names(have, folder):
            if not entry.is_dir and pattern.fullmatch(entry.name):
                actions.append(RemoveFile(f"{folder}/{entry.name}", "DHCP lease"))
    skip = {*records, SSHD_CONFIG_ORIG}
    for folder in STATE_DIRS:
        for entry in _names(have, folder):
            path = f"{folder}/{entry.name}"
            if path in skip:
                continue
            if entry.is_dir:
                notes.append(f"keep folder {path}: only files of the agent's state are removed")
                continue
            actions.append(RemoveFile(path, _state_reason(entry.name)))
    return actions


def plan(have: Observed, options: Options) -> DeprovisionPlan:
    """Everything deprovisioning removes, in the order it is done: the service first, users
    next, files, and the managed-users records last."""
    notes: list[str] = []
    actions: list[Action] = []
    if options.owns_machine:
        actions.append(StopService(SERVICE_UNIT))
    else:
        notes.append(f"sandbox root: {SERVICE_UNIT} is this machine's and is not stopped")
    actions += _user_actions(have, options, notes)
    if options.remove_users:
        field = shadow_password(have.texts.get(SHADOW_PATH))
        if field is None:
            notes.append(f"root has no {SHADOW_PATH} entry; its password is left alone")
        elif has_password(field):
            actions.append(ClearRootPassword())
    records = tuple(have.records)
    actions += _file_actions(have, options, records, notes)
    for path in records:
        actions.append(RemoveRecord(path, len(have.records[path])))
    notes += KEPT
    notes.append(NOT_EVERYTHING)
    return DeprovisionPlan(tuple(actions), tuple(notes))


def changes_anything(result: DeprovisionPlan) -> bool:
    """Whether the plan does more than stop the service."""
    return any(not isinstance(a, StopService) for a in result.actions)
