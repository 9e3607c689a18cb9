"""Forwarded and alias IP routes: what metadata wants, what the kernel has, and the diff.

A forwarded IP (load balancer, protocol forwarding, target instance) or an
alias range reaches the VM with its destination address unchanged, so the
kernel must treat it as its own: a route of type `local` in table `local`,
scope host, on the NIC metadata names by MAC. The agent marks its routes with
its own routing protocol id (`[IpForwarding] ethernet_proto_id`, 66 by
default) and only ever removes routes carrying that id; routes someone else
made (proto kernel, boot, static, ...) are never touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import attrs

from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.nics import Link
from guestagent.domain.platforms.gce import gce

LOCAL_TABLE = 255

# A local route for one of these would cut the agent off from its own metadata server.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16")
)


@attrs.frozen
class LocalRoute:
    """One route in table local of type local, as the planner needs to see it."""

    destination: str  # canonical CIDR: 10.0.0.1/32, 10.8.0.0/24, 2600:1900::5/128
    interface: str
    protocol: int

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.destination).version

    def describe(self) -> str:
        return f"local {self.destination} dev {self.interface} table local proto {self.protocol}"


@attrs.frozen
class AddRoute:
    route: LocalRoute

    def describe(self) -> str:
        return f"add route {self.route.describe()}"


@attrs.frozen
class RemoveRoute:
    route: LocalRoute

    def describe(self) -> str:
        return f"remove route {self.route.describe()}"


Action = AddRoute | RemoveRoute


def _frozen(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class RoutesDesired:
    """Per NIC MAC, the canonical destinations metadata wants local, in metadata order."""

    by_mac: Mapping[str, tuple[str, ...]] = attrs.field(converter=_frozen)
    notes: tuple[str, ...] = ()


@attrs.frozen
class RoutesPlan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()
    # MACs metadata lists that the guest has no interface for (yet): worth another look later.
    missing: tuple[str, ...] = ()


def routes_enabled(config: Config) -> bool:
    """All three switches users know from Google's agents turn the routes off."""
    return (
        config.Daemons.network_daemon
        and config.Daemons.ip_forwarding_daemon
        and config.NetworkInterfaces.ip_forwarding
    )


def canonical_destination(text: str) -> str:
    """An address becomes a host route (/32, /128); a range keeps its prefix.

    Host bits in a range are dropped (10.8.0.1/24 means 10.8.0.0/24), as the
    platform's intent is the whole range. Raises ValueError for anything the
    agent must not make local: not an IP, the default route, loopback,
    multicast, unspecified, link-local (the metadata server lives there).
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    if network.prefixlen == 0:
        raise ValueError("a /0 would make every address local")
    for bad, why in (
        (network.is_unspecified, "unspecified address"),
        (network.is_loopback, "loopback is already local"),
        (network.is_multicast, "multicast"),
        (network.is_link_local, "link-local (the metadata server's range)"),
    ):
        if bad:
            raise ValueError(why)
    if any(address in network for address in METADATA_ADDRESSES):
        raise ValueError("covers a metadata server address")
    return str(network)


def desired(metadata: InstanceMetadata, config: Config) -> RoutesDesired:
    wanted: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for nic in gce(metadata).nics:
        sources: list[tuple[str, Iterable[str]]] = [
            ("forwarded IP", nic.forwarded_ips),
            ("forwarded IPv6", nic.forwarded_ipv6s),
        ]
        if config.IpForwarding.target_instance_ips:
            sources.append(("target instance IP", nic.target_instance_ips))
        if config.IpForwarding.ip_aliases:
            sources.append(("alias IP range", nic.ip_aliases))
        seen: dict[str, None] = {}  # ordered set
        for kind, values in sources:
            for value in values:
                try:
                    seen[canonical_destination(value)] = None
                except ValueError as exc:
                    notes.append(f"ignored {kind} {value!r} on NIC {nic.mac}: {exc}")
        # A NIC listed twice (broken metadata) merges rather than losing routes.
        wanted[nic.mac] = tuple(dict.fromkeys((*wanted.get(nic.mac, ()), *seen)))
    return RoutesDesired(wanted, tuple(notes))


def plan(
    want: RoutesDesired, links: Sequence[Link], current: Sequence[LocalRoute], protocol: int
) -> RoutesPlan:
    """Removals first (a destination may move between NICs), then additions.

    Only NICs metadata lists are looked at: a route of ours on an interface
    metadata no longer mentions stays, because the agent cannot tell a NIC
    that was detached from one it simply failed to read.
    """
    by_mac = {link.mac: link for link in links}
    notes: list[str] = []
    missing: list[str] = []
    removals: list[LocalRoute] = []
    additions: list[LocalRoute] = []
    managed: dict[str, tuple[str, ...]] = {}
    for mac, destinations in want.by_mac.items():
        link = by_mac.get(mac)
        if link is None:
            if destinations:
                missing.append(mac)
                notes.append(f"no interface with MAC {mac}; {len(destinations)} routes wait for it")
            continue
        managed[link.name] = destinations
    for route in current:
        if route.protocol != protocol or route.interface not in managed:
            continue
        if route.destination not in managed[route.interface]:
            removals.append(route)
    remaining = [r for r in current if r not in removals]
    for interface, destinations in managed.items():
        for destination in destinations:
            mine = LocalRoute(destination, interface, protocol)
            if mine in remaining:
                continue
            # The kernel keys local routes by destination, not device or protocol:
            # adding next to someone else's route fails, so leave theirs in charge.
            other = next((r for r in remaining if r.destination == destination), None)
            if other is not None:
                notes.append(f"{destination} is already local ({other.describe()}); left alone")
                continue
            additions.append(mine)
            remaining.append(mine)
    actions: list[Action] = [RemoveRoute(r) for r in sorted(removals, key=_order)]
    actions += [AddRoute(r) for r in additions]
    return RoutesPlan(tuple(actions), want.notes + tuple(notes), tuple(missing))


def _order(route: LocalRoute) -> tuple[str, int, str]:
    return (route.interface, route.version, route.destination)
