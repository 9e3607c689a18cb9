"""Resolvers for a guest whose platform gives DNS in metadata: which mechanism the guest
uses, and what to hand it. Pure: detection reads a `DnsObserved` the service filled in.

The agent goes through whatever manages /etc/resolv.conf rather than fighting it:

- systemd-resolved (/etc/resolv.conf is its stub or its resolv.conf): a drop-in
  `RESOLVED_DROPIN` with `DNS=` and `Domains=` (kept across restarts), and, on a
  machine the agent owns, `resolvectl dns/domain LINK ...` per static NIC so the
  change holds at once;
- resolvconf (Debian's or openresolv): one record `LINK.guestagent` given on stdin
  to `resolvconf -a`; other `*.guestagent` records are the agent's old ones;
- nothing (a plain file, or none): /etc/resolv.conf itself, written atomically,
  keeping the `options` and `sortlist` lines someone put there;
- another manager (NetworkManager, connman, netconfig, a symlink to something
  unknown): nothing is written, and the reason is logged.

`[Network] dns` picks one by hand (`resolved`, `resolvconf`, `file`, `none`);
`auto` detects. DNS is managed only when metadata has static NICs: on a DHCP
platform the DHCP client owns the resolvers.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import attrs

from guestagent.domain.metadata import InstanceMetadata, NetworkInterface

MODES = ("auto", "resolved", "resolvconf", "file", "none")
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/guestagent.conf"
# systemd-resolved keeps these while it runs.
RESOLVED_RUNTIME = ("/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/resolv.conf")
RESOLVCONF_PROGRAMS = ("/sbin/resolvconf", "/usr/sbin/resolvconf", "/bin/resolvconf", "/usr/bin/resolvconf")
# Where the records given to `resolvconf -a` are kept: Debian's resolvconf, then openresolv.
RESOLVCONF_RECORD_DIRS = ("/run/resolvconf/interface", "/run/resolvconf/interfaces")
RECORD_SUFFIX = ".guestagent"
HEADER = "# Written by guestagent from the platform's metadata."

MAX_FILE_SERVERS = 3  # glibc reads at most three nameserver lines (MAXNS)
MAX_SEARCH = 6
MAX_SEARCH_CHARS = 253
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

# (text in a comment at the top of /etc/resolv.conf, what manages it)
_MANAGERS = (
    ("guestagent", "guestagent"),
    ("systemd-resolved", "resolved"),
    ("resolvconf", "resolvconf"),
    ("networkmanager", "NetworkManager"),
    ("connection manager", "connman"),
    ("connman", "connman"),
    ("netconfig", "netconfig"),
)


@attrs.frozen
class DnsDesired:
    servers: tuple[str, ...] = ()  # canonical IPs: the instance's, then the static NICs'
    search: tuple[str, ...] = ()
    # (MAC, the NIC's own servers) for every static NIC, metadata order.
    per_nic: tuple[tuple[str, tuple[str, ...]], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.servers and not self.search


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class DnsObserved:
    resolv_conf: str | None = None  # the text, through a symlink; None: absent or dangling
    resolv_conf_is_symlink: bool = False
    resolved_running: bool = False  # one of RESOLVED_RUNTIME exists
    resolvconf_installed: bool = False  # one of RESOLVCONF_PROGRAMS exists
    dropin: str | None = None  # RESOLVED_DROPIN's text
    # The agent's resolvconf records now known to resolvconf: name -> text.
    records: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)


@attrs.frozen
class WriteFile:
    path: str
    text: str
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path}"


@attrs.frozen
class RunCommand:
    argv: tuple[str, ...]
    stdin: str | None = None

    def describe(self) -> str:
        return f"run {shlex.join(self.argv)}"


DnsAction = WriteFile | RunCommand


@attrs.frozen
class DnsPlan:
    mechanism: str
    actions: tuple[DnsAction, ...] = ()
    notes: tuple[str, ...] = ()
    # What the runtime commands of this plan set (see plan's `pushed`); None: none planned.
    pushes: object = None


def _server(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError("not a string")
    ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError("not a resolver's address")
    return str(ip)


def _domain(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError("not a string")
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > MAX_SEARCH_CHARS:
        raise ValueError("empty or too long")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError("not a domain name")
    return name


def _ordered(
    values: Sequence[object], parse: Callable[[object], str], what: str, notes: list[str]
) -> list[str]:
    out: dict[str, None] = {}
    for value in values:
        try:
            out[parse(value)] = None
        except ValueError as exc:
            notes.append(f"ignored {what} {value!r}: {exc}")
    return list(out)


def _is_list(value: object) -> bool:
    return isinstance(value, tuple | list)


def desired(metadata: InstanceMetadata) -> DnsDesired:
    static = [n for n in metadata.network_interfaces if isinstance(n, NetworkInterface) and n.static is True]
    if not static:
        return DnsDesired()
    fields = [metadata.dns_servers, metadata.dns_search, *(nic.dns_servers for nic in static)]
    if not all(_is_list(value) for value in fields):
        # Read as "no resolvers" this would write a resolv.conf without them.
        return DnsDesired(notes=("DNS servers or search domains are not lists; DNS kept as it is",))
    notes: list[str] = []
    servers = _ordered(metadata.dns_servers, _server, "DNS server", notes)
    per_nic: list[tuple[str, tuple[str, ...]]] = []
    for nic in static:
        mine = _ordered(nic.dns_servers, _server, f"DNS server of NIC {nic.mac}", notes)
        per_nic.append((nic.mac, tuple(mine)))
        servers += [s for s in mine if s not in servers]
    search = _ordered(metadata.dns_search, _domain, "search domain", notes)
    if len(search) > MAX_SEARCH:
        notes.append(f"more than {MAX_SEARCH} search domains; the rest ignored")
        search = search[:MAX_SEARCH]
    return DnsDesired(tuple(servers), tuple(search), tuple(per_nic), tuple(notes))


def _manager(text: str | None) -> str | None:
    """Who wrote /etc/resolv.conf, from the comments at its top."""
    if text is None:
        return None
    for line in text.splitlines()[:20]:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith(("#", ";")):
            break
        lower = stripped.lower()
        for marker, manager in _MANAGERS:
            if marker in lower:
                return manager
    return None


def choose(mode: str, seen: DnsObserved) -> tuple[str, str]:
    """(mechanism, why): "resolved", "resolvconf", "file" or "none"."""
    if mode not in MODES:
        return "none", f"[Network] dns = {mode!r} is not one of {', '.join(MODES)}; DNS left alone"
    if mode != "auto":
        return mode, f"[Network] dns = {mode}"
    manager = _manager(seen.resolv_conf)
    if manager == "resolved":
        return "resolved", f"{RESOLV_CONF} is systemd-resolved's"
    if manager == "resolvconf":
        if seen.resolvconf_installed:
            return "resolvconf", f"{RESOLV_CONF} is made by resolvconf"
        return "none", f"{RESOLV_CONF} is made by resolvconf, which is not installed; left alone"
    if manager == "guestagent":
        return "file", f"{RESOLV_CONF} is the agent's own"
    if manager is not None:
        return "none", f"{RESOLV_CONF} is managed by {manager}; left alone"
    if seen.resolv_conf_is_symlink:
        if seen.resolv_conf is None and seen.resolved_running:
            return "resolved", f"{RESOLV_CONF} is a dangling symlink and systemd-resolved runs"
        return "none", f"{RESOLV_CONF} is a symlink to a file the agent does not know; left alone"
    if seen.resolv_conf is None:
        if seen.resolved_running:
            return "resolved", f"no {RESOLV_CONF}, and systemd-resolved runs"
        if seen.resolvconf_installed:
            return "resolvconf", f"no {RESOLV_CONF}, and resolvconf is installed"
    return "file", f"{RESOLV_CONF} is a plain file nothing manages"


def render_resolv_conf(want: DnsDesired, current: str | None) -> str:
    """The agent's /etc/resolv.conf; `options` and `sortlist` lines of the current file stay."""
    lines = [HEADER]
    lines += [f"nameserver {server}" for server in want.servers[:MAX_FILE_SERVERS]]
    if want.search:
        lines.append("search " + " ".join(want.search))
    for line in (current or "").splitlines():
        words = line.split()
        if words and words[0] in ("options", "sortlist"):
            lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def render_dropin(want: DnsDesired) -> str:
    lines = [HEADER, "[Resolve]"]
    if want.servers:
        lines.append("DNS=" + " ".join(want.servers))
    if want.search:
        lines.append("Domains=" + " ".join(want.search))
    return "\n".join(lines) + "\n"


def render_record(want: DnsDesired, servers: Sequence[str]) -> str:
    lines = [f"nameserver {server}" for server in servers]
    if want.search:
        lines.append("search " + " ".join(want.search))
    return "\n".join(lines) + "\n"


def _record_says(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif words and words[0] == "search":
            search = words[1:]
    return tuple(servers), tuple(search)


def plan(
    want: DnsDesired,
    mechanism: str,
    seen: DnsObserved,
    links: Mapping[str, str] | None,
    *,
    live: bool,
    pushed: object = None,
    replace_foreign: bool = True,
) -> DnsPlan:
    """`links` maps a static NIC's MAC to its link name (None: no netlink to ask);
    `live` says the agent owns the machine and may run resolvectl/resolvconf;
    `pushed` is what this process last set through resolvectl (runtime settings
    are pushed again only when they change, so a pass with nothing new runs nothing);
    `replace_foreign` False keeps a /etc/resolv.conf someone else rewrote after the
    agent wrote it for the same metadata (a DHCP hook, an admin): the agent does not
    fight it every pass, only when the metadata's DNS changes."""
    if want.empty or mechanism == "none":
        return DnsPlan(mechanism)
    notes: list[str] = []
    actions: list[DnsAction] = []
    pushes: object = None
    if mechanism == "file":
        text = render_resolv_conf(want, seen.resolv_conf)
        if len(want.servers) > MAX_FILE_SERVERS:
            notes.append(f"{RESOLV_CONF} holds the first {MAX_FILE_SERVERS} DNS servers only")
        foreign = seen.resolv_conf is not None and _manager(seen.resolv_conf) != "guestagent"
        if seen.resolv_conf != text:
            if foreign and not replace_foreign:
                notes.append(f"{RESOLV_CONF} was rewritten by someone else: kept until metadata DNS changes")
            else:  # through a symlink: the link is replaced by the file
                actions.append(WriteFile(RESOLV_CONF, text))
    elif mechanism == "resolved":
        text = render_dropin(want)
        if seen.dropin != text:
            actions.append(WriteFile(RESOLVED_DROPIN, text))
        if live and links is not None:
            settings = tuple(
                (links[mac], own or want.servers, want.search) for mac, own in want.per_nic if mac in links
            )
            if settings and settings != pushed:
                pushes = settings
                for link, servers, search in settings:
                    actions.append(RunCommand(("resolvectl", "dns", link, *servers)))
                    if search:
                        actions.append(RunCommand(("resolvectl", "domain", link, *search)))
    elif mechanism == "resolvconf":
        first = next((links[mac] for mac, _ in want.per_nic if links is not None and mac in links), None)
        if not live:
            notes.append("resolvconf is not run in a sandbox root")
        elif first is None:
            notes.append("resolvconf waits for the first static NIC's link")
        else:
            name = first + RECORD_SUFFIX
            text = render_record(want, want.servers)
            current = seen.records.get(name)
            if current is None or _record_says(current) != _record_says(text):
                actions.append(RunCommand(("resolvconf", "-a", name), stdin=text))
            for old in sorted(seen.records):
                if old != name:
                    actions.append(RunCommand(("resolvconf", "-d", old)))
    return DnsPlan(mechanism, tuple(actions), tuple(notes), pushes)
