"""Azure provisioning, once per VM id: the steps WALinuxAgent and azure-init take, as a plan. Pure.

What provisioning does (the DVD's LinuxProvisioningConfigurationSet, IMDS,
waagent.conf's options through the [Azure] section), in this order:

1. the admin user exists (the accounts subsystem, in the same lane just
   before, creates it with its keys; a password-only admin has no keys, so it
   is created here, with the same command and groups);
2. its password, when the DVD gives one: a SHA-512-crypt hash (PasswordCryptId,
   PasswordCryptSaltLength) set with `usermod -p`; the password itself is never
   logged nor written anywhere but as that hash;
3. root's password locked when `[Azure] delete_root_password`;
4. sshd_config: PasswordAuthentication as DisableSshPasswordAuthentication says
   (with KbdInteractiveAuthentication off when passwords are), ClientAliveInterval,
   before the first Match block; the original kept once, byte for byte, at
   SSHD_BACKUP for a deprovision to put back;
5. CustomData saved (0600) at CUSTOM_DATA_PATH, decoded or as given
   (`[Azure] decode_custom_data`); running it is the firstboot subsystem's job
   (`[FirstBoot] run_user_data`, which waagent.conf's ExecuteCustomData sets);
6. the hostname published to Azure's DNS through the DHCP client: dhclient.conf's
   `send host-name` (a `= gethostname();` line already follows any name and is
   kept; otherwise `send host-name "NAME";`);
7. the admin's keys checked in authorized_keys (when the accounts subsystem runs);
8. the health report: Ready when every step worked, else NotReady /
   ProvisioningFailed with the failures as the description the operator reads.

The record (RECORD_PATH, JSON) says which VM id was provisioned and whether
the fabric took the report: a reboot provisions nothing again (it only sends a
report that did not go through), a new VM id (an image captured from a
provisioned VM) provisions again.

After provisioning, `[Azure] monitor_hostname` keeps following the hostname:
a name changed by hand is published again (WALinuxAgent's MonitorHostName).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import attrs

from guestagent.domain import sshd_config
from guestagent.domain.jsondoc import JsonRefused, loads

RECORD_PATH = "/var/lib/guestagent/azure_provisioned"
SSHD_BACKUP = "/var/lib/guestagent/sshd_config.orig"
CUSTOM_DATA_PATH = "/var/lib/waagent/CustomData"
DHCLIENT_CONF = "/etc/dhcp/dhclient.conf"
CUSTOM_DATA_MODE = 0o600
RECORD_MODE = 0o600
LOCKED_PASSWORD = "*"  # noqa: S105 - the shadow field that no password matches

_SEND_HOSTNAME = re.compile(r"^(\s*)send\s+host-name\b(.*)$")
_QUOTED = re.compile(r'^\s*"([^"]*)"\s*;')


# ---------------------------------------------------------------- the record


@attrs.frozen
class Record:
    vm_id: str
    provisioned: bool = False  # every step done (a NotReady run leaves it False)
    reported: str | None = None  # the last state the fabric accepted: Ready / NotReady
    failure: str | None = None


def parse_record(text: str | None) -> Record | None:
    """The record, or None when there is none or it cannot be read (then: provision)."""
    if not text:
        return None
    try:
        data = loads(text)
    except JsonRefused:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("vm_id"), str):
        return None
    reported = data.get("reported")
    failure = data.get("failure")
    return Record(
        vm_id=data["vm_id"],
        provisioned=data.get("provisioned") is True,
        reported=reported if isinstance(reported, str) else None,
        failure=failure if isinstance(failure, str) else None,
    )


def render_record(record: Record) -> str:
    return json.dumps(attrs.asdict(record), indent=1, sort_keys=True) + "\n"


# ---------------------------------------------------------------- dhclient.conf


def dhclient_hostname(text: str) -> str | None:
    """What dhclient sends as host-name: the quoted name, "gethostname()" for the dynamic
    form, None when the file sends none."""
    for line in text.splitlines():
        match = _SEND_HOSTNAME.match(line)
        if match is None or line.lstrip().startswith("#"):
            continue
        rest = match.group(2).strip()
        if rest.startswith("=") and "gethostname()" in rest:
            return "gethostname()"
        quoted = _QUOTED.match(rest)
        if quoted:
            return quoted.group(1)
        return rest.rstrip(";").strip() or None
    return None


def dhclient_with_hostname(text: str, name: str) -> str:
    """dhclient.conf sending `name`: a static `send host-name` line replaced (the first;
    later ones dropped), a `= gethostname();` line kept as it is, else one line added."""
    if dhclient_hostname(text) == "gethostname()":
        return text
    wanted = f'send host-name "{name}";'
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    placed = False
    for line in lines:
        match = _SEND_HOSTNAME.match(line.rstrip("\r\n"))
        if match is None or line.lstrip().startswith("#"):
            out.append(line)
            continue
        if not placed:
            ending = line[len(line.rstrip("\r\n")) :] or "\n"
            out.append(f"{match.group(1)}{wanted}{ending}")
            placed = True
    if not placed:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(wanted + "\n")
    return "".join(out)


# ---------------------------------------------------------------- inputs and actions


@attrs.frozen
class Desired:
    vm_id: str
    admin_user: str | None
    password: str | None = attrs.field(default=None, repr=False)
    disable_password_auth: bool = True
    custom_data: bytes | None = attrs.field(default=None, repr=False)  # what to save
    hostname: str | None = None  # the name to publish (as the hostname subsystem sets it)
    delete_root_password: bool = False
    client_alive_interval: int = 180
    sshd_config_path: str = "/etc/ssh/sshd_config"
    # Why provisioning cannot even start (the DVD unreadable, no admin name...).
    blockers: tuple[str, ...] = ()
    key_lines: tuple[str, ...] = ()


@attrs.frozen
class Current:
    record: Record | None
    admin_exists: bool
    sshd_text: str | None
    backup_exists: bool
    custom_data: str | None  # the saved file's text (surrogate-escaped bytes)
    dhclient_text: str | None
    # The name the machine goes by now (kernel name, else /etc/hostname); for MonitorHostName.
    current_hostname: str | None = None


@attrs.frozen
class CreateAdmin:
    user: str

    def describe(self) -> str:
        return f"create the admin user {self.user}"


@attrs.frozen
class SetPassword:
    user: str
    hashed: str = attrs.field(repr=False)

    def describe(self) -> str:
        return f"set {self.user}'s password (as given at provisioning)"


@attrs.frozen
class LockRootPassword:
    def describe(self) -> str:
        return "lock root's password"


@attrs.frozen
class EditSshdConfig:
    path: str
    text: str
    backup: str | None  # the original's text to keep at SSHD_BACKUP first; None: kept already
    settings: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.settings)
        return f"set {shown} in {self.path} (before any Match block)"


@attrs.frozen
class SaveCustomData:
    path: str
    data: str = attrs.field(repr=False)

    def describe(self) -> str:
        return f"save CustomData to {self.path} (mode 0600)"


@attrs.frozen
class PublishHostname:
    path: str
    text: str
    name: str

    def describe(self) -> str:
        return f"publish hostname {self.name} through the DHCP client ({self.path} send host-name)"


@attrs.frozen
class CheckKeys:
    user: str
    lines: tuple[str, ...] = attrs.field(repr=False)

    def describe(self) -> str:
        return f"check {len(self.lines)} keys of {self.user} are in authorized_keys"


@attrs.frozen
class Report:
    """Ready when the steps before it worked, else NotReady with their failures."""

    def describe(self) -> str:
        return "report the provisioning result (Ready, or NotReady with the reason) to the fabric"


@attrs.frozen
class ReportOnly:
    """A provisioned VM whose last report did not go through: say Ready again."""

    def describe(self) -> str:
        return "report Ready to the fabric (the last report was not accepted)"


Action = (
    CreateAdmin | SetPassword | LockRootPassword | EditSshdConfig | SaveCustomData | PublishHostname
    | CheckKeys | Report | ReportOnly
)  # fmt: skip


@attrs.frozen
class Plan:
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()
    first_time: bool = False  # provisioning runs (new VM id, or not finished)


def _publish(want: Desired, have: Current, name: str | None) -> PublishHostname | None:
    if have.dhclient_text is None or not name:
        return None
    text = dhclient_with_hostname(have.dhclient_text, name)
    if text == have.dhclient_text:
        return None
    return PublishHostname(DHCLIENT_CONF, text, name)


def plan(want: Desired, have: Current, hashed_password: str | None, *, monitor_hostname: bool) -> Plan:
    """The steps for this pass. `hashed_password` is the hash to set (the caller made it with
    a fresh salt); None when the DVD gave no password."""
    record = have.record
    done_before = record is not None and record.vm_id == want.vm_id and record.provisioned
    if done_before:
        assert record is not None
        actions: list[Action] = []
        if record.reported != "Ready":
            actions.append(ReportOnly())
        if monitor_hostname:
            published = _publish(want, have, have.current_hostname)
            if published is not None:
                actions.append(published)
        return Plan(tuple(actions))
    notes: list[str] = []
    if record is not None and record.vm_id != want.vm_id:
        notes.append(f"VM id {want.vm_id} is new (the record names {record.vm_id}): provisioning again")
    if want.blockers:
        return Plan((Report(),), tuple(notes), first_time=True)
    steps: list[Action] = []
    user = want.admin_user
    assert user is not None  # a missing admin is a blocker
    if not have.admin_exists:
        steps.append(CreateAdmin(user))
    if hashed_password is not None:
        steps.append(SetPassword(user, hashed_password))
    if want.delete_root_password:
        steps.append(LockRootPassword())
    if have.sshd_text is None:
        notes.append(f"{want.sshd_config_path} not found: sshd's password setting left alone")
    else:
        settings = sshd_config.provisioning_settings(want.disable_password_auth, want.client_alive_interval)
        text = sshd_config.set_global(have.sshd_text, settings)
        if text != have.sshd_text:
            backup = None if have.backup_exists else have.sshd_text
            steps.append(EditSshdConfig(want.sshd_config_path, text, backup, tuple(settings)))
    if want.custom_data is not None:
        data = want.custom_data.decode("utf-8", "surrogateescape")
        if have.custom_data != data:
            steps.append(SaveCustomData(CUSTOM_DATA_PATH, data))
    published = _publish(want, have, want.hostname or have.current_hostname)
    if published is not None:
        steps.append(published)
    elif have.dhclient_text is None:
        notes.append(f"{DHCLIENT_CONF} not found: the DHCP client's own settings publish the hostname")
    if want.key_lines:
        steps.append(CheckKeys(user, want.key_lines))
    steps.append(Report())
    return Plan(tuple(steps), tuple(notes), first_time=True)


def missing_keys(text: str | None, lines: Sequence[str]) -> int:
    """How many of `lines` are not lines of the authorized_keys text."""
    present = {line.strip() for line in (text or "").splitlines()}
    return sum(1 for line in lines if line.strip() not in present)


def failure_description(failures: Sequence[str]) -> str:
    """One description for the fabric out of this pass's failures (first ones first)."""
    if not failures:
        return "provisioning failed"
    return "; ".join(failures)
