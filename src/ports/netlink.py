"""The kernel's links and routes, as the network subsystems need them.

Real implementation: adapters/pyroute2_netlink.py (netlink sockets, never
`ip` subprocesses); in-memory one for tests: tests/fake_netlink.py.
"""

from __future__ import annotations

from typing import Protocol

from guestagent.domain.nics import Link
from guestagent.domain.routes import LocalRoute

__all__ = ["Link", "LocalRoute", "Netlink", "NetlinkFailure"]


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

    def close(self) -> None: ...
