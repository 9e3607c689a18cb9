"""Links and local routes over rtnetlink with pyroute2, optionally inside a named netns.

Netlink rather than `ip` subprocesses: structured answers (no parsing of
`ip route` text, which changed between iproute2 versions), and one socket for
a whole pass.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

from guestagent.domain.network import MAIN_TABLE, IfAddress, LinkState, StaticRoute
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
            # IPRoute without the rest of pyroute2's package (import cost: pyroute2_lite).
            from guestagent.adapters.pyroute2_lite import iproute

            IPRoute = iproute()[0]
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
        from guestagent.adapters.pyroute2_lite import iproute

        NetlinkError = iproute()[1]
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

    def _address(self, command: str, interface: str, address: str) -> None:
        ip, _, prefix = address.partition("/")
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        length = int(prefix) if prefix.isdigit() else (128 if family == socket.AF_INET6 else 32)
        index = self._index(interface)
        self._call(
            f"{command} address {address} on {interface}",
            "addr",
            command,
            index=index,
            family=family,
            address=ip,
            prefixlen=length,
        )

    def add_address(self, interface: str, address: str) -> None:
        self._address("add", interface, address)

    def delete_address(self, interface: str, address: str) -> None:
        self._address("del", interface, address)

    # ---- static networking (services/network.py)

    def _names(self) -> dict[int, str]:
        return {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in self._call("list links", "get_links")}

    def link_states(self) -> list[LinkState]:
        return [
            LinkState(
                index=msg["index"],
                name=msg.get_attr("IFLA_IFNAME"),
                mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                up=bool(msg["flags"] & IFF_UP),
                mtu=int(msg.get_attr("IFLA_MTU") or 0),
                promote_secondaries=_promote_secondaries(msg),
            )
            for msg in self._call("list links", "get_links")
        ]

    def addresses(self) -> list[IfAddress]:
        names = self._names()
        out = []
        for msg in self._call("list addresses", "get_addr"):
            family = msg["family"]
            # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point IPv4.
            local = msg.get_attr("IFA_LOCAL") if family == socket.AF_INET else None
            ip = local or msg.get_attr("IFA_ADDRESS")
            if ip is None or family not in FAMILIES:
                continue
            flags = msg.get_attr("IFA_FLAGS")
            flags = int(msg["flags"] if flags is None else flags)
            try:
                address = str(ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"))
            except ValueError:
                continue
            out.append(
                IfAddress(
                    interface=names.get(msg["index"], f"if{msg['index']}"),
                    address=address,
                    secondary=bool(flags & IFA_F_SECONDARY),
                    tentative=bool(flags & IFA_F_TENTATIVE),
                    dad_failed=bool(flags & IFA_F_DADFAILED),
                )
            )
        return out

    def set_mtu(self, interface: str, mtu: int) -> None:
        index = self._index(interface)
        self._call(f"set MTU of {interface} to {mtu}", "link", "set", index=index, mtu=mtu)

    def set_promote_secondaries(self, interface: str) -> None:
        """RTM_NEWLINK with IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF, built by hand: pyroute2
        reads that attribute as a flat array and cannot write it, and /proc/sys would
        reach the agent's own namespace rather than the handle's."""
        what = f"turn on promote_secondaries on {interface}"
        index = self._index(interface)
        conf = _nla(IPV4_DEVCONF_PROMOTE_SECONDARIES, struct.pack("=I", 1))
        inet = _nla(socket.AF_INET, _nla(IFLA_INET_CONF, conf, nested=True), nested=True)
        af_spec = _nla(IFLA_AF_SPEC, inet, nested=True)
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + af_spec
        message = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
        try:
            sock = self._raw_socket()
        except (OSError, TimeoutError) as exc:
            raise NetlinkFailure(f"{what}: {exc}") from exc
        try:
            sock.settimeout(RAW_TIMEOUT)
            sock.send(message)
            reply = sock.recv(65536)
        except OSError as exc:
            raise NetlinkFailure(f"{what}: {exc}") from exc
        finally:
            sock.close()
        if len(reply) < 20 or struct.unpack_from("=H", reply, 4)[0] != NLMSG_ERROR:
            raise NetlinkFailure(f"{what}: unexpected answer from the kernel")
        code = -struct.unpack_from("=i", reply, 16)[0]
        if code:
            raise NetlinkFailure(f"{what}: {errno.errorcode.get(code, str(code))}")

    def _raw_socket(self) -> socket.socket:
        if self._netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        else:
            from pyroute2 import netns

            # flags=0: never create the namespace (as in _conn).
            sock = netns.create_socket(
                netns=self._netns,
                family=socket.AF_NETLINK,
                socket_type=socket.SOCK_RAW,
                proto=NETLINK_ROUTE,
                flags=0,
            )
        sock.bind((0, 0))
        return sock

    def main_routes(self) -> list[StaticRoute]:
        names = self._names()
        out = []
        for msg in self._call("list routes", "get_routes", family=socket.AF_UNSPEC, table=MAIN_TABLE):
            family = msg["family"]
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if family not in FAMILIES or table != MAIN_TABLE or msg["type"] != RTN_UNICAST:
                continue
            if msg["flags"] & RTM_F_CLONED:
                continue
            dst = msg.get_attr("RTA_DST") or ANY_ADDRESS[family]
            try:
                destination = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
            except ValueError:
                continue
            hops = msg.get_attr("RTA_MULTIPATH")
            if hops:
                nexthops = [(hop["oif"], _hop_gateway(hop), int(hop["flags"])) for hop in hops]
            else:
                nexthops = [(msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY"), int(msg["flags"]))]
            for oif, gateway, flags in nexthops:
                if oif is None:
                    continue
                out.append(
                    StaticRoute(
                        destination=destination,
                        interface=names.get(oif, f"if{oif}"),
                        gateway=gateway,
                        protocol=int(msg["proto"]),
                        onlink=bool(flags & RTNH_F_ONLINK),
                        metric=msg.get_attr("RTA_PRIORITY"),
                    )
                )
        return out

    def _static_route(self, command: str, route: StaticRoute) -> None:
        family = socket.AF_INET if route.version == 4 else socket.AF_INET6
        request: dict[str, Any] = {
            "family": family,
            "dst": route.destination,
            "table": MAIN_TABLE,
            "proto": route.protocol,
            "oif": self._index(route.interface),
        }
        if route.gateway is not None:
            request["gateway"] = route.gateway
        if command == "del":
            if family == socket.AF_INET:
                request["scope"] = RT_SCOPE_NOWHERE  # "any scope", as `ip route del` asks
            if route.metric is not None:
                request["priority"] = route.metric
        else:
            request["type"] = "unicast"
            if family == socket.AF_INET:
                request["scope"] = RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK
            if route.onlink and route.gateway is not None:
                request["flags"] = RTNH_F_ONLINK
        verb = "add" if command == "append" else command
        self._call(f"{verb} route {route.describe()}", "route", command, **request)

    def add_route(self, route: StaticRoute) -> None:
        self._static_route("append", route)

    def delete_route(self, route: StaticRoute) -> None:
        self._static_route("del", route)

    def close(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            ipr.close()


# ---- static networking: constants and helpers

IFA_F_SECONDARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RTN_UNICAST = 1
RTM_F_CLONED = 0x200
RTNH_F_ONLINK = 0x4
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_F_NESTED = 0x8000
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
IPV4_DEVCONF_PROMOTE_SECONDARIES = 20  # include/uapi/linux/ip.h, counted from FORWARDING = 1
RAW_TIMEOUT = 5.0
ANY_ADDRESS = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}  # noqa: S104 - a route's "default"


def _nla(kind: int, payload: bytes, *, nested: bool = False) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    header = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)


def _promote_secondaries(msg: Any) -> bool | None:
    try:
        spec = msg.get_attr("IFLA_AF_SPEC")
        inet = spec.get_attr("AF_INET") if spec is not None else None
        value = inet["promote_secondaries"] if inet is not None else None
    except (KeyError, AttributeError, TypeError):
        return None
    return None if value is None else bool(value)


def _hop_gateway(hop: Any) -> str | None:
    try:
        gateway = hop.get_attr("RTA_GATEWAY")
    except AttributeError:
        gateway = dict(hop.get("attrs", ())).get("RTA_GATEWAY")
    return None if gateway is None else str(gateway)
