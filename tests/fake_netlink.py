"""An in-memory Netlink with the kernel's rules that matter to the planner.

Like the kernel, it refuses a second local route for a destination that is
already local (whatever the device or protocol) and refuses to delete a
route whose protocol does not match, so a service test that would clobber
someone else's route fails here as it would on a VM.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

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

    def close(self) -> None:
        self.closed += 1
