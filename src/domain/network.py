"""Static networking: the addresses, routes and MTU a platform without DHCP gives each NIC.

OpenStack, DigitalOcean, SmartOS and the CPIO device mark such NICs `static`
(see domain/metadata.py): the guest must put `addresses` on the link, bring
it up, set its MTU and add the default routes (`gateway`, `gateway6`) and the
extra `routes` itself. This module says what metadata wants, and plans the
steps from what the kernel has; services/network.py observes and applies.

Ownership: only what the agent added is ever removed.

- Routes carry routing protocol 67 (`NETWORK_PROTO`), in table main. Not the
  66 of `[IpForwarding] ethernet_proto_id`: those are GCE's table-local
  routes and a user may renumber them; a separate number keeps the two sets
  apart for the agent and for `ip route show proto 67`. 67 is not one of the
  kernel's RTPROT_* values, so no routing daemon uses it; routes of other
  protocols (kernel, boot, static, dhcp, ra) are never removed.
- Addresses carry no mark the kernel keeps (IFA_PROTO needs Linux 6.3 and
  IPv6 addresses have no labels), so the agent records what it added, per
  MAC, in `STATE_PATH`. That file lives in /run: kernel addresses do not
  survive a reboot, nor does the record, so an address the image's own
  configuration puts back at the next boot is never taken for ours. The
  record is written (atomically) before an address is added and after one
  is removed, and pruned on every pass to what the links really hold: a
  crash between two steps leaves at worst an entry for an address that is
  not there, which the next pass drops.

Never cutting the VM off:

- new addresses go on before old ones come off; an old IPv6 address stays
  until the new ones have passed duplicate address detection (the plan says
  `pending`, and the daemon looks again a few seconds later);
- a new route is added (appended, never replacing) before the old route of
  ours for the same destination is removed, and a removal whose replacement
  the kernel refused is not made (`guard`);
- removing an IPv4 primary address makes the kernel drop the secondary
  addresses of its subnet unless `promote_secondaries` is on for the link:
  the plan turns it on for that link first when it matters;
- a route someone else made for the same destination stays in charge (the
  agent adds nothing next to it), and NICs metadata does not list as static,
  or whose fields cannot be read (held), are not touched at all.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import attrs

from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Route

NETWORK_PROTO = 67
MAIN_TABLE = 254
STATE_PATH = "/run/guestagent/network.json"
STATE_VERSION = 1

MAX_ADDRESSES_PER_NIC = 64
MAX_ROUTES_PER_NIC = 64
MIN_MTU = 68
MIN_MTU_IPV6 = 1280  # below this the kernel turns IPv6 off on the link
MAX_MTU = 65535

DEFAULT_DESTINATION = {4: "0.0.0.0/0", 6: "::/0"}

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---- what the kernel has


@attrs.frozen
class LinkState:
    """One link as the network subsystem needs to see it."""

    index: int
    name: str
    mac: str  # lower-case colon form
    up: bool  # administratively up (IFF_UP)
    mtu: int
    # net.ipv4.conf.<link>.promote_secondaries; None when the kernel did not say.
    promote_secondaries: bool | None = None


@attrs.frozen
class IfAddress:
    """One address on a link; equal when interface and "ADDR/PREFIX" are."""

    interface: str
    address: str  # canonical "ADDR/PREFIX", as str(ipaddress.ip_interface(...)) writes it
    secondary: bool = attrs.field(default=False, eq=False)  # IPv4: not the subnet's primary
    tentative: bool = attrs.field(default=False, eq=False)  # IPv6: DAD not finished
    dad_failed: bool = attrs.field(default=False, eq=False)

    @property
    def ip(self) -> str:
        return ip_of(self.address)

    @property
    def version(self) -> int:
        return version_of(self.address)

    @property
    def usable(self) -> bool:
        return not (self.tentative or self.dad_failed)


@attrs.frozen
class StaticRoute:
    """One unicast route in table main; equal when destination, interface, gateway and
    protocol are (the metric the kernel reports and the onlink flag do not count)."""

    destination: str  # canonical CIDR; "0.0.0.0/0" or "::/0" for a default route
    interface: str
    gateway: str | None = None  # None: on-link (scope link)
    protocol: int = NETWORK_PROTO
    onlink: bool = attrs.field(default=False, eq=False)  # the gateway is not in a prefix of the link
    metric: int | None = attrs.field(default=None, eq=False)

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.destination).version

    def describe(self) -> str:
        dst = "default" if self.destination in DEFAULT_DESTINATION.values() else self.destination
        if self.version == 6 and dst == "default":
            dst = "default (IPv6)"
        via = f" via {self.gateway}" if self.gateway else ""
        onlink = " onlink" if self.onlink else ""
        return f"{dst}{via} dev {self.interface}{onlink} proto {self.protocol}"


# ---- what metadata wants


@attrs.frozen
class WantedRoute:
    destination: str  # canonical CIDR
    gateway: str | None = None
    onlink: bool = False


@attrs.frozen
class NicWant:
    mac: str
    addresses: tuple[str, ...]  # canonical "ADDR/PREFIX", metadata order, one per IP
    routes: tuple[WantedRoute, ...] = ()  # defaults first, then the extra routes
    mtu: int | None = None


@attrs.frozen
class NetworkDesired:
    nics: tuple[NicWant, ...] = ()
    # MACs of static NICs whose fields could not be read: kept exactly as they are.
    held: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# ---- the steps


@attrs.frozen
class SetMtu:
    interface: str
    mac: str
    mtu: int
    current: int

    def describe(self) -> str:
        return f"set MTU of {self.interface} to {self.mtu} (was {self.current})"


@attrs.frozen
class SetLinkUp:
    interface: str
    mac: str

    def describe(self) -> str:
        return f"set link {self.interface} ({self.mac}) up"


@attrs.frozen
class PromoteSecondaries:
    interface: str
    because: str  # the primary address whose removal would take others with it

    @property
    def guard(self) -> tuple[str, str, int]:
        return ("address", self.interface, 4)

    def describe(self) -> str:
        return (
            f"turn on promote_secondaries on {self.interface} "
            f"(removing {self.because} must not take the other addresses of its subnet)"
        )


@attrs.frozen
class AddAddress:
    interface: str
    mac: str
    address: str

    @property
    def guard(self) -> tuple[str, str, int]:
        return ("address", self.interface, version_of(self.address))

    def describe(self) -> str:
        return f"add address {self.address} to {self.interface}"


@attrs.frozen
class RemoveAddress:
    interface: str
    mac: str
    address: str

    @property
    def guard(self) -> tuple[str, str, int]:
        return ("address", self.interface, version_of(self.address))

    def describe(self) -> str:
        return f"remove address {self.address} from {self.interface}"


@attrs.frozen
class ChangePrefix:
    """The same IPv6 address with another prefix length. The kernel keys IPv6 addresses
    by address alone (and `replace` keeps the old prefix), so the old one comes off and
    the new one goes on at once; it is then tentative again until DAD is done. This is
    the one step that briefly takes an address away; the link keeps its others. (IPv4
    needs no such step: Linux holds one address under two prefix lengths.)"""

    interface: str
    mac: str
    old: str
    new: str

    @property
    def guard(self) -> tuple[str, str, int]:
        return ("address", self.interface, version_of(self.new))

    def describe(self) -> str:
        return f"change address {self.old} to {self.new} on {self.interface}"


@attrs.frozen
class AddRoute:
    route: StaticRoute

    @property
    def guard(self) -> tuple[str, str]:
        return ("route", self.route.destination)

    def describe(self) -> str:
        return f"add route {self.route.describe()}"


@attrs.frozen
class RemoveRoute:
    route: StaticRoute

    @property
    def guard(self) -> tuple[str, str]:
        return ("route", self.route.destination)

    def describe(self) -> str:
        return f"remove route {self.route.describe()}"


Action = (
    SetMtu
    | SetLinkUp
    | PromoteSecondaries
    | AddAddress
    | RemoveAddress
    | ChangePrefix
    | AddRoute
    | RemoveRoute
)
# A failed one of these marks its guard; the removals below with that guard are then not made.
ADDITIONS = (AddAddress, AddRoute, PromoteSecondaries)
REMOVALS = (RemoveAddress, RemoveRoute, ChangePrefix)

Owned = Mapping[str, frozenset[str]]  # MAC -> the addresses the agent put on that NIC


def _frozen_owned(value: Mapping[str, Iterable[str]]) -> Owned:
    return MappingProxyType({mac: frozenset(entries) for mac, entries in value.items() if entries})


@attrs.frozen
class NetworkPlan:
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # MACs with no link in the guest (yet)
    # Old addresses wait for new IPv6 ones to finish DAD: worth a look in a few seconds.
    pending: bool = False
    # The record of the agent's addresses, pruned to what the links hold now.
    owned: Owned = attrs.field(factory=dict, converter=_frozen_owned)


# ---- small helpers


def ip_of(address: str) -> str:
    return address.split("/", 1)[0]


def version_of(address: str) -> int:
    return 6 if ":" in ip_of(address) else 4


def network_skip(metadata: InstanceMetadata) -> bool:
    """The platform's own "leave the network alone" switch (the CPIO device's
    config.toml `[network] skip`), read from any extras that carry `network_skip`."""
    return getattr(metadata.extras, "network_skip", False) is True


def network_enabled(config: Config, metadata: InstanceMetadata) -> bool:
    return config.Daemons.network_daemon and config.Network.enabled and not network_skip(metadata)


def static_nics(metadata: InstanceMetadata) -> tuple[NetworkInterface, ...]:
    return tuple(
        nic for nic in metadata.network_interfaces if isinstance(nic, NetworkInterface) and nic.static is True
    )


def _is_str_tuple(value: object) -> bool:
    return isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def type_problem(nic: NetworkInterface) -> str | None:
    """Why a static NIC's fields cannot be read (a parser handed something of the wrong
    type): such a NIC is held, never read as "no addresses"."""
    if not _is_str_tuple(nic.addresses):
        return f"addresses is {type(nic.addresses).__name__}, not a list of strings"
    if not isinstance(nic.routes, tuple | list) or not all(
        isinstance(r, Route) and isinstance(r.destination, str) and _optional_str(r.gateway)
        for r in nic.routes
    ):
        return "routes is not a list of routes"
    for field in ("gateway", "gateway6"):
        if not _optional_str(getattr(nic, field)):
            return f"{field} is {type(getattr(nic, field)).__name__}, not a string"
    if nic.mtu is not None and (isinstance(nic.mtu, bool) or not isinstance(nic.mtu, int)):
        return f"mtu is {type(nic.mtu).__name__}, not a number"
    return None


def _host_address(text: str) -> IpInterface:
    """ "ADDR/PREFIX" for a host on the link; ValueError for anything else."""
    value = text.strip()
    if "/" not in value:
        raise ValueError("no prefix length")
    iface = ipaddress.ip_interface(value)
    ip = iface.ip
    for bad, why in (
        (iface.network.prefixlen == 0, "a /0"),
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback"),
        (ip.is_multicast, "multicast"),
        (ip.is_link_local, "link-local (the kernel's and the metadata path's range)"),
    ):
        if bad:
            raise ValueError(why)
    return iface


def _gateway_ip(text: str, version: int) -> IpAddress:
    value = text.strip().split("%", 1)[0]  # fe80::1%eth0: the link is the NIC's anyway
    ip = ipaddress.ip_address(value)
    if ip.version != version:
        raise ValueError(f"not an IPv{version} address")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError("not a router's address")
    return ip


def _onlink(gateway: IpAddress, prefixes: Sequence[IpInterface]) -> bool:
    """True when no address of the NIC puts the gateway on the link: the kernel must be
    told it is reachable there (IPv6 link-local gateways always are)."""
    if gateway.is_link_local:
        return False
    return not any(p.version == gateway.version and gateway in p.network for p in prefixes)


def _addresses(nic: NetworkInterface, notes: list[str]) -> list[IpInterface]:
    found: dict[str, IpInterface] = {}
    for text in nic.addresses:
        try:
            iface = _host_address(text)
        except ValueError as exc:
            notes.append(f"NIC {nic.mac}: ignored address {text!r}: {exc}")
            continue
        key = str(iface.ip)
        if key in found:
            if found[key] != iface:
                notes.append(f"NIC {nic.mac}: {iface} ignored, {found[key]} is listed first")
            continue
        if len(found) >= MAX_ADDRESSES_PER_NIC:
            notes.append(f"NIC {nic.mac}: more than {MAX_ADDRESSES_PER_NIC} addresses; the rest ignored")
            break
        found[key] = iface
    return list(found.values())


def _routes(nic: NetworkInterface, prefixes: Sequence[IpInterface], notes: list[str]) -> list[WantedRoute]:
    out: dict[tuple[str, str | None], WantedRoute] = {}
    versions = {p.version for p in prefixes}

    def want(destination: str, gateway: IpAddress | None) -> None:
        key = (destination, None if gateway is None else str(gateway))
        if key in out:
            return
        if len(out) >= MAX_ROUTES_PER_NIC:
            notes.append(f"NIC {nic.mac}: more than {MAX_ROUTES_PER_NIC} routes; the rest ignored")
            return
        onlink = gateway is not None and _onlink(gateway, prefixes)
        out[key] = WantedRoute(destination, key[1], onlink)

    for version, text in ((4, nic.gateway), (6, nic.gateway6)):
        if text is None or not text.strip():
            continue
        try:
            router = _gateway_ip(text, version)
        except ValueError as exc:
            notes.append(f"NIC {nic.mac}: ignored gateway {text!r}: {exc}")
            continue
        if version not in versions:
            notes.append(f"NIC {nic.mac}: gateway {router} but no IPv{version} address; no default route")
            continue
        want(DEFAULT_DESTINATION[version], router)
    for route in nic.routes:
        try:
            network = ipaddress.ip_network(route.destination.strip(), strict=False)
            if network.is_multicast or (network.is_loopback and network.prefixlen):
                raise ValueError("not a unicast destination")
            gateway: IpAddress | None = None
            if route.gateway is not None and route.gateway.strip():
                gateway = _gateway_ip(route.gateway, network.version)
        except ValueError as exc:
            notes.append(f"NIC {nic.mac}: ignored route {route.destination!r} via {route.gateway!r}: {exc}")
            continue
        if gateway is not None and network.version not in versions and not gateway.is_link_local:
            notes.append(f"NIC {nic.mac}: route {network} via {gateway} but no IPv{network.version} address")
            continue
        want(str(network), gateway)
    return list(out.values())


def _mtu(nic: NetworkInterface, prefixes: Sequence[IpInterface], notes: list[str]) -> int | None:
    if nic.mtu is None:
        return None
    if not MIN_MTU <= nic.mtu <= MAX_MTU:
        notes.append(f"NIC {nic.mac}: ignored MTU {nic.mtu}: not between {MIN_MTU} and {MAX_MTU}")
        return None
    if nic.mtu < MIN_MTU_IPV6 and any(p.version == 6 for p in prefixes):
        notes.append(f"NIC {nic.mac}: ignored MTU {nic.mtu}: IPv6 needs at least {MIN_MTU_IPV6}")
        return None
    return nic.mtu


def desired(metadata: InstanceMetadata) -> NetworkDesired:
    nics: list[NicWant] = []
    held: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for nic in static_nics(metadata):
        if not isinstance(nic.mac, str) or not nic.mac:
            notes.append("a static NIC without a MAC ignored")
            continue
        if nic.mac in seen:
            notes.append(f"NIC {nic.mac} listed twice; the first entry is used")
            continue
        seen.add(nic.mac)
        problem = type_problem(nic)
        if problem is not None:
            held.append(nic.mac)
            notes.append(f"NIC {nic.mac}: {problem}; kept as it is")
            continue
        prefixes = _addresses(nic, notes)
        if not prefixes:
            # Read as "no addresses" this would take every address the agent gave the NIC.
            held.append(nic.mac)
            notes.append(f"NIC {nic.mac}: no usable static address; kept as it is")
            continue
        nics.append(
            NicWant(
                mac=nic.mac,
                addresses=tuple(str(p) for p in prefixes),
                routes=tuple(_routes(nic, prefixes, notes)),
                mtu=_mtu(nic, prefixes, notes),
            )
        )
    return NetworkDesired(tuple(nics), tuple(held), tuple(notes))


# ---- the record of the agent's addresses


def parse_state(text: str | None) -> tuple[dict[str, frozenset[str]], tuple[str, ...]]:
    """The record; an unreadable one owns nothing (nothing is then removed), with a note."""
    if text is None or not text.strip():
        return {}, ()
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return {}, (f"{STATE_PATH} is not JSON; the agent's earlier addresses are left alone",)
    addresses = document.get("addresses") if isinstance(document, dict) else None
    if not isinstance(addresses, dict):
        return {}, (f"{STATE_PATH} has no address record; the agent's earlier addresses are left alone",)
    owned: dict[str, frozenset[str]] = {}
    for mac, entries in addresses.items():
        if not isinstance(mac, str) or not isinstance(entries, list):
            continue
        kept = set()
        for entry in entries:
            if isinstance(entry, str):
                try:
                    kept.add(str(ipaddress.ip_interface(entry)))
                except ValueError:
                    continue
        if kept:
            owned[mac] = frozenset(kept)
    return owned, ()


def render_state(owned: Owned) -> str:
    record = {mac: sorted(entries) for mac, entries in sorted(owned.items()) if entries}
    return json.dumps({"version": STATE_VERSION, "addresses": record}, indent=2, sort_keys=True) + "\n"


def record_ahead(owned: Owned, actions: Iterable[Action]) -> dict[str, frozenset[str]]:
    """What to record before applying: every address about to be added counts as ours."""
    out = {mac: set(entries) for mac, entries in owned.items()}
    for action in actions:
        if isinstance(action, AddAddress):
            out.setdefault(action.mac, set()).add(action.address)
        elif isinstance(action, ChangePrefix):
            out.setdefault(action.mac, set()).add(action.new)
    return {mac: frozenset(entries) for mac, entries in out.items() if entries}


def record_after(owned: Owned, done: Iterable[Action]) -> dict[str, frozenset[str]]:
    """The record once `done` (the actions the kernel accepted) took effect."""
    out = {mac: set(entries) for mac, entries in owned.items()}
    for action in done:
        if isinstance(action, AddAddress):
            out.setdefault(action.mac, set()).add(action.address)
        elif isinstance(action, RemoveAddress):
            out.get(action.mac, set()).discard(action.address)
        elif isinstance(action, ChangePrefix):
            out.setdefault(action.mac, set()).discard(action.old)
            out[action.mac].add(action.new)
    return {mac: frozenset(entries) for mac, entries in out.items() if entries}


# ---- the plan


def _first_by_mac(links: Sequence[LinkState]) -> dict[str, LinkState]:
    """VLANs and bonds share their parent's MAC: the lowest index is the NIC itself."""
    out: dict[str, LinkState] = {}
    for link in sorted(links, key=lambda item: item.index):
        if link.mac and link.mac != "00:00:00:00:00:00":
            out.setdefault(link.mac, link)
    return out


def _prune(
    owned: Owned, by_mac: Mapping[str, LinkState], on_link: Mapping[str, list[IfAddress]]
) -> dict[str, frozenset[str]]:
    record: dict[str, frozenset[str]] = {}
    for mac, entries in owned.items():
        link = by_mac.get(mac)
        if link is None:
            continue
        present = {a.address for a in on_link.get(link.name, ())}
        kept = frozenset(entry for entry in entries if entry in present)
        if kept:
            record[mac] = kept
    return record


def _takes_others(removing: Sequence[str], present: Sequence[IfAddress], adding: Sequence[str]) -> str | None:
    """An IPv4 primary among `removing` that shares its subnet with an address that
    stays (or is being added): without promote_secondaries the kernel removes those too."""
    by_address = {a.address: a for a in present}
    staying = [a.address for a in present if a.version == 4 and a.address not in removing]
    staying += [a for a in adding if version_of(a) == 4]
    for address in removing:
        if version_of(address) != 4:
            continue
        have = by_address.get(address)
        if have is not None and have.secondary:
            continue
        network = ipaddress.ip_interface(address).network
        ip = ip_of(address)
        if any(ipaddress.ip_interface(other).network == network and ip_of(other) != ip for other in staying):
            return address
    return None


def _route_order(route: StaticRoute) -> tuple[bool, int, str, str]:
    # On-link routes before gateway routes (a gateway may be reached through one); defaults last.
    is_default = route.destination in DEFAULT_DESTINATION.values()
    return (route.gateway is not None, int(is_default), route.interface, route.destination)


def plan(
    want: NetworkDesired,
    links: Sequence[LinkState],
    addresses: Sequence[IfAddress],
    routes: Sequence[StaticRoute],
    owned: Owned,
    protocol: int = NETWORK_PROTO,
) -> NetworkPlan:
    """The steps, in the order they must run: MTU, link up, promote_secondaries, new
    addresses, new routes, old routes, old addresses, prefix changes."""
    by_mac = _first_by_mac(links)
    on_link: dict[str, list[IfAddress]] = {}
    for seen in addresses:
        on_link.setdefault(seen.interface, []).append(seen)
    record = _prune(owned, by_mac, on_link)

    notes: list[str] = []
    missing: list[str] = []
    pending = False
    mtu: list[Action] = []
    up: list[Action] = []
    promote: list[Action] = []
    add_addresses: list[Action] = []
    remove_addresses: list[Action] = []
    prefix_changes: list[Action] = []
    wanted_routes: dict[StaticRoute, None] = {}
    managed: set[str] = set()

    for nic in want.nics:
        link = by_mac.get(nic.mac)
        if link is None:
            missing.append(nic.mac)
            notes.append(f"no interface with MAC {nic.mac} yet; its static configuration waits for it")
            continue
        managed.add(link.name)
        if nic.mtu is not None and link.mtu != nic.mtu:
            mtu.append(SetMtu(link.name, nic.mac, nic.mtu, link.mtu))
        if not link.up:
            up.append(SetLinkUp(link.name, nic.mac))
        present = on_link.get(link.name, [])
        by_address = {a.address: a for a in present}
        mine = record.get(nic.mac, frozenset())
        adds: list[str] = []
        changes: list[tuple[str, str]] = []
        for address in nic.addresses:
            have = by_address.get(address)
            if have is not None:
                if have.dad_failed:
                    notes.append(f"{address} on {link.name} failed duplicate address detection")
                continue
            same_ip = [a.address for a in present if a.ip == ip_of(address)]
            if not same_ip:
                adds.append(address)
            elif any(other not in mine for other in same_ip):
                notes.append(
                    f"{ip_of(address)} is on {link.name} as {same_ip[0]}, not the agent's; left alone"
                )
            elif version_of(address) == 4:
                # Linux keeps one IPv4 address under two prefix lengths: the new one goes
                # on first and the old one, no longer wanted, comes off after it.
                adds.append(address)
            else:
                changes.append((same_ip[0], address))
        changed = {old for old, _ in changes}
        unwanted = sorted(a for a in mine if a not in nic.addresses and a not in changed)
        for version in (4, 6):
            olds = [a for a in unwanted if version_of(a) == version]
            swaps = [c for c in changes if version_of(c[1]) == version]
            if not olds and not swaps:
                continue
            if version == 6:
                waiting = [a for a in adds if version_of(a) == 6]
                unusable = {a for a, seen in by_address.items() if not seen.usable}
                waiting += [a for a in nic.addresses if version_of(a) == 6 and a in unusable]
                if waiting:
                    # A tentative address cannot be a source yet: the old ones stay until it can.
                    if any(a in by_address and by_address[a].dad_failed for a in waiting):
                        notes.append(f"old IPv6 addresses on {link.name} kept: a new one failed DAD")
                    else:
                        pending = True
                    continue
            # Secondaries before their primary: a primary going first would take them along.
            olds.sort(key=lambda a: not (a in by_address and by_address[a].secondary))
            remove_addresses += [RemoveAddress(link.name, nic.mac, a) for a in olds]
            prefix_changes += [ChangePrefix(link.name, nic.mac, old, new) for old, new in swaps]
            if version == 4 and not link.promote_secondaries:
                removing = olds + [old for old, _ in swaps]
                hazard = _takes_others(removing, present, [a for a in adds if version_of(a) == 4])
                if hazard is not None:
                    promote.append(PromoteSecondaries(link.name, hazard))
        add_addresses += [AddAddress(link.name, nic.mac, a) for a in adds]
        for wanted in nic.routes:
            route = StaticRoute(wanted.destination, link.name, wanted.gateway, protocol, onlink=wanted.onlink)
            wanted_routes[route] = None

    ours = [r for r in routes if r.protocol == protocol]
    add_routes: list[StaticRoute] = []
    for route in wanted_routes:
        if route in ours:
            continue
        other = next(
            (r for r in routes if r.protocol != protocol and r.destination == route.destination), None
        )
        if other is not None:
            notes.append(f"{route.destination} is already routed ({other.describe()}); left in charge")
            continue
        add_routes.append(route)
    remove_routes = [r for r in ours if r.interface in managed and r not in wanted_routes]

    actions: list[Action] = [*mtu, *up, *promote, *add_addresses]
    actions += [AddRoute(r) for r in sorted(add_routes, key=_route_order)]
    actions += [RemoveRoute(r) for r in sorted(remove_routes, key=_route_order, reverse=True)]
    actions += [*remove_addresses, *prefix_changes]
    return NetworkPlan(tuple(actions), want.notes + tuple(notes), tuple(missing), pending, record)
