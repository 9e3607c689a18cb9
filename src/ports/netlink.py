"""The kernel's links and routes, as the network subsystems need them.

Real implementation: adapters/pyroute2_netlink.py (netlink sockets, never
`ip` subprocesses); in-memory one for tests: tests/fake_netlink.py.
"""

from __future__ import annotations

from typing import Protocol

from guestagent.domain.network import IfAddress, LinkState, StaticRoute
from guestagent.domain.nics import Link
from guestagent.domain.routes import LocalRoute

__all__ = ["IfAddress", "Link", "LinkState", "LocalRoute", "Netlink", "NetlinkFailure", "StaticRoute"]


class NetlinkFailure(Exception):
    """The kernel refused a request, or the namespace could not be entered."""


class Netlink(Protocol):
    def namespace(self) -> str | None:
        """The named network namespace this handle works in; None for the agent's own.

        Programs the agent runs for a NIC (DHCP) must run in the same namespace.
        """
        ...

    def links(self) -> list[Link]: ...

    def set_link_up(self, interface: str) -> None: ...

    def local_routes(self) -> list[LocalRoute]:
        """Every route of type local in table local, IPv4 and IPv6, whatever its protocol."""
        ...

    def add_local_route(self, route: LocalRoute) -> None:
        """Add `route` (table local, type local, scope host) with its protocol id."""
        ...

    def delete_local_route(self, route: LocalRoute) -> None:
        """Delete exactly `route`: the kernel matches its protocol, so no one else's goes."""
        ...

    def add_address(self, interface: str, address: str) -> None:
        """Put `address` ("ADDR/PREFIX", IPv4 or IPv6) on `interface`; the kernel adds
        the on-link route of its prefix. NetlinkFailure if it is there already."""
        ...

    def delete_address(self, interface: str, address: str) -> None:
        """Remove exactly `address` ("ADDR/PREFIX") from `interface`."""
        ...

    # ---- static networking (services/network.py)

    def link_states(self) -> list[LinkState]:
        """Every link with its MTU and IPv4 promote_secondaries setting."""
        ...

    def addresses(self) -> list[IfAddress]:
        """Every address on every link, IPv4 and IPv6, with its secondary/tentative/DAD flags."""
        ...

    def set_mtu(self, interface: str, mtu: int) -> None: ...

    def set_promote_secondaries(self, interface: str) -> None:
        """Turn on net.ipv4.conf.<interface>.promote_secondaries (through netlink, in the
        handle's namespace): removing a primary address then keeps its subnet's others."""
        ...

    def main_routes(self) -> list[StaticRoute]:
        """Every unicast route in table main, IPv4 and IPv6, whatever its protocol; a
        multipath route as one StaticRoute per next hop."""
        ...

    def add_route(self, route: StaticRoute) -> None:
        """Add `route` in table main with its protocol, after any route with the same
        destination and metric (append: never replacing one; IPv6 makes them multipath)."""
        ...

    def delete_route(self, route: StaticRoute) -> None:
        """Delete exactly `route` (destination, gateway, link and protocol must match)."""
        ...

    def close(self) -> None: ...
