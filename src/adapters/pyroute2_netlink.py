"""Links and local routes over rtnetlink with pyroute2, optionally inside a named netns.

Netlink rather than `ip` subprocesses: structured answers (no parsing of
`ip route` text, which changed between iproute2 versions), and one socket for
a whole pass.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from guestagent.domain.nics import Link
from guestagent.domain.routes import LOCAL_TABLE, LocalRoute
from guestagent.ports.netlink import NetlinkFailure

IFF_UP = 0x1
RTN_LOCAL = 2
FAMILIES = (socket.AF_INET, socket.AF_INET6)


class Pyroute2Netlink:
    """One rtnetlink socket, opened lazily; `netns` names a namespace under /run/netns."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._ipr: Any = None

    def namespace(self) -> str | None:
        return self._netns

    def _conn(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            try:
                if self._netns is None:
                    self._ipr = IPRoute()
                else:
                    # flags=0: pyroute2 would otherwise create a namespace that does not
                    # exist, and a typo in --netns would silently configure an empty one.
                    self._ipr = IPRoute(netns=self._netns, flags=0)
            except OSError as exc:
                where = f"network namespace {self._netns!r}" if self._netns else "rtnetlink"
                raise NetlinkFailure(f"cannot open {where}: {exc}") from exc
        return self._ipr

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from pyroute2 import NetlinkError

        try:
            return getattr(self._conn(), method)(*args, **kwargs)
        except NetlinkError as exc:
            reason = errno.errorcode.get(exc.code, str(exc.code))
            raise NetlinkFailure(f"{what}: {reason} ({exc})") from exc
        except OSError as exc:
            raise NetlinkFailure(f"{what}: {exc}") from exc

    def links(self) -> list[Link]:
        ipv4: dict[int, list[str]] = {}
        for addr in self._call("list addresses", "get_addr", family=socket.AF_INET):
            ipv4.setdefault(addr["index"], []).append(addr.get_attr("IFA_ADDRESS"))
        out = []
        for msg in self._call("list links", "get_links"):
            index = msg["index"]
            out.append(
                Link(
                    index=index,
                    name=msg.get_attr("IFLA_IFNAME"),
                    mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                    up=bool(msg["flags"] & IFF_UP),
                    ipv4=tuple(ipv4.get(index, ())),
                )
            )
        return out

    def _index(self, interface: str) -> int:
        found = self._call(f"look up {interface}", "link_lookup", ifname=interface)
        if not found:
            raise NetlinkFailure(f"no interface named {interface}")
        return int(found[0])

    def set_link_up(self, interface: str) -> None:
        index = self._index(interface)
        self._call(f"set {interface} up", "link", "set", index=index, state="up")

    def local_routes(self) -> list[LocalRoute]:
        names = {link.index: link.name for link in self.links()}
        out = []
        for family in FAMILIES:
            for msg in self._call("list routes", "get_routes", family=family, table=LOCAL_TABLE):
                table = msg.get_attr("RTA_TABLE") or msg["table"]
                dst = msg.get_attr("RTA_DST")
                oif = msg.get_attr("RTA_OIF")
                if table != LOCAL_TABLE or msg["type"] != RTN_LOCAL or dst is None or oif is None:
                    continue
                out.append(
                    LocalRoute(
                        destination=f"{dst}/{msg['dst_len']}",
                        interface=names.get(oif, f"if{oif}"),
                        protocol=int(msg["proto"]),
                    )
                )
        return out

    def _route(self, command: str, route: LocalRoute) -> None:
        family = socket.AF_INET if route.version == 4 else socket.AF_INET6
        request: dict[str, Any] = {
            "family": family,
            "dst": route.destination,
            "table": LOCAL_TABLE,
            "type": "local",
            "proto": route.protocol,
            "oif": self._index(route.interface),
        }
        if family == socket.AF_INET:
            # IPv6 has no route scopes to speak of; the kernel stores 0 whatever is asked.
            request["scope"] = "host"
        self._call(f"{command} {route.describe()}", "route", command, **request)

    def add_local_route(self, route: LocalRoute) -> None:
        self._route("add", route)

    def delete_local_route(self, route: LocalRoute) -> None:
        self._route("del", route)

    def close(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            ipr.close()
