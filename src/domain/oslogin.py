"""OS Login: the edits to sshd, NSS and PAM configuration, as pure text functions.

Every change the agent makes lives inside a marked block:

    #### Google OS Login control changes ####
    ...
    #### End Google OS Login control changes ####

so turning OS Login off removes exactly what the agent added and restores
each file byte for byte. A line the agent had to change in place (the
`passwd:` and `group:` lines of nsswitch.conf) is kept inside its block as a
`#### saved original: ...` comment, and a file that had no final newline gets
a marker saying so; both make the removal exact for any file text.

Google's agent strips its lines with a looser filter and always rewrites the
file with a final newline; this module's round trip (insert, then remove,
gives the original) is a tested property instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import attrs

BLOCK_START = "#### Google OS Login control changes ####"
BLOCK_END = "#### End Google OS Login control changes ####"
SAVED_PREFIX = "#### saved original: "
NO_FINAL_NEWLINE = "#### original file had no final newline ####"

SSHD_CONFIG = "/etc/ssh/sshd_config"
NSSWITCH = "/etc/nsswitch.conf"
PAM_SSHD = "/etc/pam.d/sshd"
GROUP_CONF = "/etc/security/group.conf"
FILES = (SSHD_CONFIG, NSSWITCH, PAM_SSHD, GROUP_CONF)

# The same paths Google's agent and the OS Login package use, so the
# google-compute-engine-oslogin binaries work unchanged.
AUTHORIZED_KEYS_COMMAND = "AuthorizedKeysCommand /usr/bin/google_authorized_keys"
AUTHORIZED_KEYS_USER = "AuthorizedKeysCommandUser root"
TRUSTED_CA_PATH = "/etc/ssh/oslogin_trustedca.pub"
CERT_LINES = (
    f"TrustedUserCAKeys {TRUSTED_CA_PATH}",
    "AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k",
    "AuthorizedPrincipalsCommandUser root",
)
NSS_SOURCES = " cache_oslogin oslogin"
PAM_AUTH_LINE = "auth       [default=ignore] pam_group.so"
PAM_SESSION_LINE = "session    [success=ok default=ignore] pam_mkhomedir.so"
GROUP_CONF_LINE = "sshd;*;*;Al0000-2400;video"

# Daemons that cache passwd/group lookups or PAM state; restarted (when they
# exist and run) after NSS/PAM changed, as Google's agent does.
CACHING_SERVICES = ("nscd", "unscd", "systemd-logind", "cron", "crond")
# Debian calls the unit ssh, Red Hat sshd; the first one that is loaded is reloaded.
SSHD_SERVICES = ("ssh", "sshd")

_NSS_LINE = re.compile(r"^(passwd|group)\s*:")
_NSS_SPLIT = re.compile(r"^(.*?)(\s*(?:#.*)?)$", re.DOTALL)


# ---- text as lines, exactly: the final newline is remembered, nothing is normalised


def _lines(text: str) -> tuple[list[str], bool]:
    """Split without losing anything: (lines, ends_with_newline)."""
    if text == "":
        return [], True
    if text.endswith("\n"):
        return text[:-1].split("\n"), True
    return text.split("\n"), False


def _join(lines: Sequence[str], final_newline: bool) -> str:
    if not lines:
        return ""
    return "\n".join(lines) + ("\n" if final_newline else "")


def has_blocks(text: str) -> bool:
    lines, _ = _lines(text)
    return BLOCK_START in lines


def remove_blocks(text: str) -> str:
    """The text with every complete marked block taken out (saved lines put back).

    A start marker without an end marker is left alone: a user who deleted
    half a block must not lose the rest of the file.
    """
    lines, final_newline = _lines(text)
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i] == BLOCK_START:
            try:
                end = lines.index(BLOCK_END, i + 1)
            except ValueError:
                out.extend(lines[i:])
                break
            body = lines[i + 1 : end]
            out.extend(line[len(SAVED_PREFIX) :] for line in body if line.startswith(SAVED_PREFIX))
            if NO_FINAL_NEWLINE in body and end == len(lines) - 1:
                final_newline = False
            i = end + 1
            continue
        out.append(lines[i])
        i += 1
    return _join(out, final_newline)


def _block(*content: str) -> list[str]:
    return [BLOCK_START, *content, BLOCK_END]


def _with_header(text: str, content: Sequence[str]) -> str:
    lines, final_newline = _lines(text)
    return _join(_block(*content) + lines, final_newline)


def _with_footer(text: str, content: Sequence[str]) -> str:
    lines, final_newline = _lines(text)
    if lines and not final_newline:
        return _join([*lines, *_block(NO_FINAL_NEWLINE, *content)], True)
    return _join([*lines, *_block(*content)], True)


# ---- one function per file: (current text, wanted state) -> new text


def sshd_config(text: str, enabled: bool, cert_authentication: bool) -> str:
    """Put the OS Login directives first: sshd keeps the first value it reads,
    so a block at the top wins over the same keywords later in the file and
    comes before any Match block."""
    base = remove_blocks(text)
    if not enabled:
        return base
    content = [*CERT_LINES] if cert_authentication else []
    content += [AUTHORIZED_KEYS_COMMAND, AUTHORIZED_KEYS_USER]
    return _with_header(base, content)


def nsswitch(text: str, enabled: bool) -> str:
    """Add `cache_oslogin oslogin` to the passwd and group lines (before any comment).

    Lines already naming oslogin were set up by someone else and stay as they are.
    """
    base = remove_blocks(text)
    if not enabled:
        return base
    lines, final_newline = _lines(base)
    out: list[str] = []
    for line in lines:
        if _NSS_LINE.match(line) and "oslogin" not in line:
            match = _NSS_SPLIT.match(line)
            assert match is not None  # the pattern matches every string
            changed = match.group(1) + NSS_SOURCES + match.group(2)
            out += _block(SAVED_PREFIX + line, changed)
        else:
            out.append(line)
    return _join(out, final_newline)


def pam_sshd(text: str, enabled: bool) -> str:
    """pam_group first in auth (grants the video group, as Google's agent does);
    pam_mkhomedir last in session, after modules such as pam_selinux."""
    base = remove_blocks(text)
    if not enabled:
        return base
    return _with_footer(_with_header(base, [PAM_AUTH_LINE]), [PAM_SESSION_LINE])


def group_conf(text: str, enabled: bool) -> str:
    base = remove_blocks(text)
    if not enabled:
        return base
    return _with_footer(base, [GROUP_CONF_LINE])


# ---- desired / current / plan


@attrs.frozen
class OsLoginDesired:
    enabled: bool
    cert_authentication: bool = False


@attrs.frozen
class ConfigFile:
    """One configuration file as found: None text means it does not exist."""

    text: str | None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def _frozen_files(value: Mapping[str, ConfigFile]) -> Mapping[str, ConfigFile]:
    return MappingProxyType(dict(value))


@attrs.frozen
class OsLoginCurrent:
    files: Mapping[str, ConfigFile] = attrs.field(converter=_frozen_files)


@attrs.frozen
class EditFile:
    path: str
    text: str
    enabling: bool
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    def describe(self) -> str:
        verb = "add OS Login settings to" if self.enabling else "remove OS Login settings from"
        return f"{verb} {self.path}"


@attrs.frozen
class RestartServices:
    """Reload sshd (when its config changed) and restart NSS/PAM caching daemons."""

    reload_sshd: bool
    restart: tuple[str, ...] = CACHING_SERVICES

    def describe(self) -> str:
        parts = ["reload sshd"] if self.reload_sshd else []
        parts.append("restart " + ", ".join(self.restart) + " where present")
        return "; ".join(parts)


Action = EditFile | RestartServices


@attrs.frozen
class OsLoginPlan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()


def render(path: str, text: str, want: OsLoginDesired) -> str:
    if path == SSHD_CONFIG:
        return sshd_config(text, want.enabled, want.cert_authentication)
    if path == NSSWITCH:
        return nsswitch(text, want.enabled)
    if path == PAM_SSHD:
        return pam_sshd(text, want.enabled)
    if path == GROUP_CONF:
        return group_conf(text, want.enabled)
    raise ValueError(f"not an OS Login file: {path}")


def plan(want: OsLoginDesired, have: OsLoginCurrent) -> OsLoginPlan:
    """Edits for the files whose text differs from the wanted text, then one restart.

    Nothing changed means no action at all: no rewrite, no sshd reload.
    """
    actions: list[Action] = []
    notes: list[str] = []
    for path in FILES:
        found = have.files.get(path, ConfigFile(None))
        if found.text is None:
            if want.enabled:
                notes.append(f"{path} does not exist; OS Login settings not added there")
            continue
        new = render(path, found.text, want)
        if new != found.text:
            actions.append(EditFile(path, new, want.enabled, found.mode, found.uid, found.gid))
    if actions:
        reload_sshd = any(isinstance(a, EditFile) and a.path == SSHD_CONFIG for a in actions)
        actions.append(RestartServices(reload_sshd))
    return OsLoginPlan(tuple(actions), tuple(notes))


def loaded_units(systemctl_show: str) -> frozenset[str]:
    """Units reported loaded by `systemctl show -p Id -p LoadState UNIT...`.

    The output is one `Key=Value` group per unit, groups separated by blank lines.
    """
    loaded: set[str] = set()
    for group in re.split(r"\n\s*\n", systemctl_show):
        fields = dict(line.split("=", 1) for line in group.splitlines() if "=" in line)
        if fields.get("LoadState") == "loaded" and fields.get("Id"):
            loaded.add(fields["Id"])
    return frozenset(loaded)


def service_commands(
    action: RestartServices, loaded: frozenset[str]
) -> tuple[tuple[str, ...], ...]:
    """systemctl argv lists for the units that exist; missing units are skipped silently.

    --no-block: at boot, sshd is ordered after the agent (Before=ssh.service), so a
    blocking systemctl in the agent's first pass would wait on a job that waits on the
    agent (60 s lost to the command timeout, seen on Azure's first boot). Queued, the
    reload happens as soon as the unit may start, with the new configuration.
    """
    commands: list[tuple[str, ...]] = []
    for name in action.restart:
        if f"{name}.service" in loaded:
            commands.append(("systemctl", "--no-block", "try-restart", f"{name}.service"))
    if action.reload_sshd:
        for name in SSHD_SERVICES:
            if f"{name}.service" in loaded:
                # reload-or-restart also starts an sshd that is not running.
                commands.append(("systemctl", "--no-block", "reload-or-restart", f"{name}.service"))
                break
    return tuple(commands)


def probe_units(action: RestartServices) -> tuple[str, ...]:
    """The units whose LoadState the service asks systemctl about."""
    names = [*action.restart, *(SSHD_SERVICES if action.reload_sshd else ())]
    return tuple(f"{n}.service" for n in names)
