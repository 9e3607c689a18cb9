"""An in-memory Netlink with the kernel's rules that matter to the planner.

Like the kernel, it refuses a second local route for a destination that is
already local (whatever the device or protocol) and refuses to delete a
route whose protocol does not match, so a service test that would clobber
someone else's route fails here as it would on a VM.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import attrs

from guestagent.domain.network import IfAddress, LinkState, StaticRoute
from guestagent.domain.nics import Link
from guestagent.domain.routes import LocalRoute
from guestagent.ports.netlink import NetlinkFailure


class FakeNetlink:
    def __init__(
        self,
        links: Iterable[Link] = (),
        routes: Iterable[LocalRoute] = (),
        netns: str | None = None,
    ) -> None:
        self._links = {link.name: link for link in links}
        self.routes: list[LocalRoute] = list(routes)
        self.calls: list[str] = []  # mutating calls, in order
        self.fail_on: set[str] = set()  # route destinations or interface names to refuse
        self.closed = 0
        self._netns = netns
        self.ipv6: dict[str, list[str]] = {}  # interface -> IPv6 addresses added
        # Static networking (services/network.py): what the kernel keeps beside the above.
        self.prefixes: dict[tuple[str, str], int] = {}  # (interface, IP) -> prefix length
        self.added: list[tuple[str, str]] = []  # (interface, IP) in the order they came
        self.tentative: set[tuple[str, str]] = set()  # IPv6 addresses still in DAD
        self.dad = False  # True: a new IPv6 address stays tentative until finish_dad()
        self.mtu: dict[str, int] = {}  # interface -> MTU (1500 when unset)
        self.promote: dict[str, bool] = {}  # interface -> promote_secondaries (off when unset)
        self.main: list[StaticRoute] = []  # table main
        self.aliases: list[tuple[str, str, int]] = []  # an IPv4 address again, another prefix

    def namespace(self) -> str | None:
        return self._netns

    def link(self, name: str) -> Link:
        return self._links[name]

    def add_link(self, link: Link) -> None:
        self._links[link.name] = link

    def links(self) -> list[Link]:
        return list(self._links.values())

    def set_link_up(self, interface: str) -> None:
        if interface not in self._links or interface in self.fail_on:
            raise NetlinkFailure(f"set {interface} up: ENODEV")
        self.calls.append(f"up {interface}")
        self._links[interface] = attrs.evolve(self._links[interface], up=True)

    def local_routes(self) -> list[LocalRoute]:
        return list(self.routes)

    def add_local_route(self, route: LocalRoute) -> None:
        if route.interface not in self._links or route.destination in self.fail_on:
            raise NetlinkFailure(f"add {route.describe()}: ENODEV")
        if any(r.destination == route.destination for r in self.routes):
            raise NetlinkFailure(f"add {route.describe()}: EEXIST")
        self.calls.append(f"add {route.destination} {route.interface}")
        self.routes.append(route)

    def delete_local_route(self, route: LocalRoute) -> None:
        if route not in self.routes or route.destination in self.fail_on:
            raise NetlinkFailure(f"del {route.describe()}: ESRCH")
        self.calls.append(f"del {route.destination} {route.interface}")
        self.routes.remove(route)

    def add_address(self, interface: str, address: str) -> None:
        # IPv4 addresses show in Link.ipv4 as the kernel lists them; IPv6 ones in `ipv6`.
        ip = address.split("/", 1)[0]
        if interface not in self._links or interface in self.fail_on or address in self.fail_on:
            raise NetlinkFailure(f"add address {address} on {interface}: ENODEV")
        if self._v4_alias(interface, address):
            return
        link = self._links[interface]
        v6 = self.ipv6.setdefault(interface, [])
        if ip in link.ipv4 or ip in v6:
            raise NetlinkFailure(f"add address {address} on {interface}: EEXIST")
        self.calls.append(f"addr add {address} {interface}")
        if ":" in ip:
            v6.append(ip)
        else:
            self._links[interface] = attrs.evolve(link, ipv4=(*link.ipv4, ip))
        self._address_added(interface, address)

    def delete_address(self, interface: str, address: str) -> None:
        ip = address.split("/", 1)[0]
        if self._drop_alias(interface, address):
            return
        link = self._links.get(interface)
        v6 = self.ipv6.get(interface, [])
        if link is None or (ip not in link.ipv4 and ip not in v6) or address in self.fail_on:
            raise NetlinkFailure(f"del address {address} on {interface}: EADDRNOTAVAIL")
        self.calls.append(f"addr del {address} {interface}")
        if ip in v6:
            v6.remove(ip)
        else:
            self._links[interface] = attrs.evolve(link, ipv4=tuple(a for a in link.ipv4 if a != ip))
        self._address_removed(interface, address)

    # ---- static networking: the kernel's rules the planner must respect

    def _prefix(self, interface: str, ip: str) -> int:
        return self.prefixes.get((interface, ip), 128 if ":" in ip else 32)

    def _network(self, interface: str, ip: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(f"{ip}/{self._prefix(interface, ip)}").network

    def _rank(self, interface: str, ip: str) -> int:
        key = (interface, ip)
        return self.added.index(key) if key in self.added else -1  # given at start: first

    def _address_added(self, interface: str, address: str) -> None:
        ip, _, prefix = address.partition("/")
        if prefix.isdigit():
            self.prefixes[(interface, ip)] = int(prefix)
        self.added.append((interface, ip))
        if ":" in ip and self.dad:
            self.tentative.add((interface, ip))

    def _address_removed(self, interface: str, address: str) -> None:
        """An IPv4 primary takes the secondaries of its subnet with it unless promote_secondaries
        is on; the last IPv4 address of a link takes the link's IPv4 routes."""
        ip = address.split("/", 1)[0]
        gone = [ip]
        if ":" not in ip:
            link = self._links[interface]
            network, rank = self._network(interface, ip), self._rank(interface, ip)
            same = [o for o in link.ipv4 if self._network(interface, o) == network]
            primary = not any(self._rank(interface, o) < rank for o in same)
            if primary and not self.promote.get(interface, False):
                victims = [o for o in same if self._rank(interface, o) > rank]
                for victim in victims:
                    self.calls.append(f"addr gone {victim} {interface} (secondary of {ip})")
                self._links[interface] = attrs.evolve(link, ipv4=tuple(o for o in link.ipv4 if o not in victims))
                gone += victims
            if not self._links[interface].ipv4:
                self.main = [r for r in self.main if not (r.interface == interface and r.version == 4)]
        for each in gone:
            self.tentative.discard((interface, each))
            self.prefixes.pop((interface, each), None)
            if (interface, each) in self.added:
                self.added.remove((interface, each))

    def _v4_alias(self, interface: str, address: str) -> bool:
        """Linux holds one IPv4 address under two prefix lengths: the second is kept here."""
        ip, _, prefix = address.partition("/")
        if ":" in ip or not prefix.isdigit() or ip not in self._links[interface].ipv4:
            return False
        entry = (interface, ip, int(prefix))
        if int(prefix) == self._prefix(interface, ip) or entry in self.aliases:
            return False  # the very same address: EEXIST as usual
        self.calls.append(f"addr add {address} {interface}")
        self.aliases.append(entry)
        return True

    def _drop_alias(self, interface: str, address: str) -> bool:
        ip, _, prefix = address.partition("/")
        if not prefix.isdigit():
            return False
        entry = (interface, ip, int(prefix))
        if entry in self.aliases:
            self.aliases.remove(entry)
        else:
            alias = next((a for a in self.aliases if a[:2] == (interface, ip)), None)
            if alias is None or int(prefix) != self._prefix(interface, ip):
                return False
            self.aliases.remove(alias)  # the other prefix length takes the address's place
            self.prefixes[(interface, ip)] = alias[2]
        self.calls.append(f"addr del {address} {interface}")
        return True

    def finish_dad(self) -> None:
        self.tentative.clear()

    def link_states(self) -> list[LinkState]:
        return [
            LinkState(link.index, link.name, link.mac, link.up, self.mtu.get(link.name, 1500),
                      self.promote.get(link.name, False))
            for link in self._links.values()
        ]

    def addresses(self) -> list[IfAddress]:
        out = []
        for name, link in self._links.items():
            ranked = sorted(link.ipv4, key=functools.partial(self._rank, name))
            for i, ip in enumerate(ranked):
                network = self._network(name, ip)
                secondary = any(self._network(name, other) == network for other in ranked[:i])
                address = str(ipaddress.ip_interface(f"{ip}/{self._prefix(name, ip)}"))
                out.append(IfAddress(name, address, secondary=secondary))
            for alias, ip, prefix in self.aliases:
                if alias == name:
                    out.append(IfAddress(name, str(ipaddress.ip_interface(f"{ip}/{prefix}"))))
            for ip in self.ipv6.get(name, []):
                address = str(ipaddress.ip_interface(f"{ip}/{self._prefix(name, ip)}"))
                out.append(IfAddress(name, address, tentative=(name, ip) in self.tentative))
        return out

    def set_mtu(self, interface: str, mtu: int) -> None:
        if interface not in self._links or interface in self.fail_on or not 68 <= mtu <= 65535:
            raise NetlinkFailure(f"set MTU of {interface} to {mtu}: EINVAL")
        self.calls.append(f"mtu {interface} {mtu}")
        self.mtu[interface] = mtu

    def set_promote_secondaries(self, interface: str) -> None:
        if interface not in self._links or f"promote {interface}" in self.fail_on:
            raise NetlinkFailure(f"promote_secondaries on {interface}: ENODEV")
        self.calls.append(f"promote {interface}")
        self.promote[interface] = True

    def main_routes(self) -> list[StaticRoute]:
        return list(self.main)

    def add_route(self, route: StaticRoute) -> None:
        link = self._links.get(route.interface)
        if link is None or route.destination in self.fail_on or route.gateway in self.fail_on:
            raise NetlinkFailure(f"add route {route.describe()}: ENODEV")
        if route.version == 6 and not link.up:
            raise NetlinkFailure(f"add route {route.describe()}: ENETDOWN")
        if route.gateway is not None and not route.onlink:
            gateway = ipaddress.ip_address(route.gateway)
            on_link = gateway.is_link_local or any(
                gateway in ipaddress.ip_interface(a.address).network
                for a in self.addresses()
                if a.interface == route.interface and a.version == gateway.version
            )
            if not on_link:
                raise NetlinkFailure(f"add route {route.describe()}: ENETUNREACH")
        if any((r.destination, r.interface, r.gateway) == (route.destination, route.interface, route.gateway)
               for r in self.main):
            raise NetlinkFailure(f"add route {route.describe()}: EEXIST")
        self.calls.append(f"route add {route.describe()}")
        self.main.append(route)

    def delete_route(self, route: StaticRoute) -> None:
        if route not in self.main or route.destination in self.fail_on:
            raise NetlinkFailure(f"del route {route.describe()}: ESRCH")
        self.calls.append(f"route del {route.describe()}")
        self.main.remove(route)

    def close(self) -> None:
        self.closed += 1
