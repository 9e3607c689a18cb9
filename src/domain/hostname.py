"""Hostname from metadata: validated, written to /etc/hostname and /etc/hosts, set live.

The metadata hostname is usually an FQDN (`vm.c.proj.internal`). With
`[InstanceSetup] hostname_fqdn = false` (the default) the machine is called
by its first label, as Google's images are; the FQDN still goes into the
agent's /etc/hosts line so `hostname -f` resolves it.

/etc/hosts belongs to the user: the agent owns only the lines ending in its
marker. Every other line (comments, blank lines, odd spacing, CRLF) is kept
byte for byte; the agent's line stays where it was, or goes at the end.

On Azure the machine is named once per VM, when it is provisioned (as waagent
and azure-init do), and a name its user gives it afterwards stays, also across
reboots: the (VM id, name) applied is recorded, and the metadata's name is
applied again only when either changes. Elsewhere the metadata's name is kept
in force, as Google's agent and cloud-init keep it.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from guestagent.domain.config import InstanceSetup
from guestagent.domain.metadata import InstanceMetadata

HOSTNAME_PATH = "/etc/hostname"
HOSTS_PATH = "/etc/hosts"
APPLIED_PATH = "/var/lib/guestagent/hostname-applied"
NAMED_ONCE = frozenset({"azure"})
HOSTS_MARKER = "# Added by guestagent"
# Debian's address for "this host" when it has no fixed IP of its own.
FALLBACK_ADDRESS = "127.0.1.1"
FQDN_MAX = 253
LABEL_MAX = 63
KERNEL_MAX = 64  # HOST_NAME_MAX: sethostname(2) refuses longer names

_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class InvalidHostname(ValueError):
    """Metadata's hostname is not a hostname; the message is safe to log."""


def check_hostname(text: str) -> str:
    """An RFC 1123 host name (one trailing dot allowed and dropped), or InvalidHostname.

    All-numeric last labels are refused: `10.0.0.1` is an address, not a name.
    """
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise InvalidHostname("empty")
    if len(name) > FQDN_MAX:
        raise InvalidHostname(f"longer than {FQDN_MAX} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidHostname("empty label")
        if len(label) > LABEL_MAX:
            raise InvalidHostname(f"a label is longer than {LABEL_MAX} characters")
        if not _LABEL.fullmatch(label):
            raise InvalidHostname(
                f"label {label[:LABEL_MAX]!r} may hold only letters, digits and inner hyphens"
            )
    if labels[-1].isdigit():
        raise InvalidHostname("looks like an IP address")
    return name


@attrs.frozen
class HostnameDesired:
    name: str  # what the kernel and /etc/hostname get
    fqdn: str
    address: str  # the IP the /etc/hosts line maps the names to


@attrs.frozen
class HostnameCurrent:
    hostname_file: str | None  # /etc/hostname's text
    hosts_file: str | None  # /etc/hosts's text
    live: str | None  # the kernel's hostname; None when it is not to be read or set


@attrs.frozen
class WriteHostnameFile:
    path: str
    text: str

    def describe(self) -> str:
        return f"write {self.path}: {self.text.strip()}"


@attrs.frozen
class WriteHosts:
    path: str
    text: str
    line: str

    def describe(self) -> str:
        return f"write {self.path} line: {self.line}"


@attrs.frozen
class SetLiveHostname:
    name: str

    def describe(self) -> str:
        return f"set hostname {self.name}"


@attrs.frozen
class RecordApplied:
    path: str
    text: str

    def describe(self) -> str:
        return f"record the name given to this VM in {self.path}: a name given by hand later stays"


Action = WriteHostnameFile | WriteHosts | SetLiveHostname | RecordApplied


def applied_record(metadata: InstanceMetadata, want: HostnameDesired) -> str | None:
    """What APPLIED_PATH holds once `want` was given to this VM; None where the metadata's
    name is kept in force (every platform but those in NAMED_ONCE, or no instance id)."""
    if metadata.platform not in NAMED_ONCE or not metadata.instance_id:
        return None
    return f"{metadata.instance_id} {want.name}\n"


@attrs.frozen
class HostnamePlan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()


def desired(
    metadata: InstanceMetadata, config: InstanceSetup
) -> tuple[HostnameDesired | None, tuple[str, ...]]:
    """What to call the machine, or None (no change) with the reason why."""
    if not metadata.hostname:
        return None, ()
    try:
        fqdn = check_hostname(metadata.hostname)
    except InvalidHostname as exc:
        return None, (f"metadata hostname {metadata.hostname[:80]!r} refused: {exc}; unchanged",)
    short = fqdn.split(".", 1)[0]
    notes: tuple[str, ...] = ()
    name = fqdn if config.hostname_fqdn else short
    if len(name) > KERNEL_MAX:
        notes = (f"{fqdn} is longer than the kernel's {KERNEL_MAX} characters; using {short}",)
        name = short
    return HostnameDesired(name, fqdn, _primary_address(metadata)), notes


def _primary_address(metadata: InstanceMetadata) -> str:
    nics = metadata.network_interfaces
    if nics and nics[0].ip:
        try:
            return str(ipaddress.ip_address(nics[0].ip))
        except ValueError:
            pass
    return FALLBACK_ADDRESS


def hosts_line(want: HostnameDesired) -> str:
    # The FQDN first: the first name on the line is what `hostname -f` prints.
    names = dict.fromkeys((want.fqdn, want.fqdn.split(".", 1)[0]))
    return f"{want.address} {' '.join(names)}  {HOSTS_MARKER}"


def _is_ours(line: str) -> bool:
    return line.rstrip("\r\n").rstrip().endswith(HOSTS_MARKER)


def with_hosts_line(text: str | None, line: str) -> str:
    """/etc/hosts with exactly one agent line, every other line untouched."""
    lines = (text or "").splitlines(keepends=True)
    ours = [i for i, existing in enumerate(lines) if _is_ours(existing)]
    if len(ours) == 1 and lines[ours[0]].rstrip("\r\n") == line:
        return text or ""
    ending = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    kept = [existing for i, existing in enumerate(lines) if i not in ours]
    position = ours[0] if ours else len(kept)
    if position == len(kept) and kept and not kept[-1].endswith("\n"):
        kept[-1] += ending  # the file ended without a newline: do not glue our line to it
    kept.insert(position, line + ending)
    return "".join(kept)


def plan(want: HostnameDesired, have: HostnameCurrent) -> HostnamePlan:
    actions: list[Action] = []
    if (have.hostname_file or "").strip() != want.name:
        actions.append(WriteHostnameFile(HOSTNAME_PATH, want.name + "\n"))
    line = hosts_line(want)
    hosts = with_hosts_line(have.hosts_file, line)
    if hosts != (have.hosts_file or ""):
        actions.append(WriteHosts(HOSTS_PATH, hosts, line))
    if have.live is not None and have.live != want.name:
        actions.append(SetLiveHostname(want.name))
    return HostnamePlan(tuple(actions))
