"""DigitalOcean droplet metadata: `/metadata/v1.json` and the `/metadata/v1/`
text tree. The tree holds the JSON document; the text tree is derived from
it, so one `sim.set("hostname", ...)` changes both views."""

from __future__ import annotations

import json
from typing import Any

from ..httpcore import HandlerResult, Request, Response
from ..scenario import Scenario, deep_merge
from ..simclock import SimClock
from ..tree import Node, PathError, is_dir, listing, split
from .base import Platform

JSON_HEADERS = [("Content-Type", "application/json; charset=utf-8")]
TEXT_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]


def droplet_id(scn: Scenario) -> int:
    return int(scn.instance_id) % 10**9 if scn.instance_id.isdigit() else 100000001


def render_tree(scn: Scenario) -> dict[str, Node]:
    public: list[Node] = []
    private: list[Node] = []
    # One interface entry per NIC (per MAC): a droplet's public and private networks
    # are separate NICs, and DigitalOcean never lists one MAC twice. A NIC with a public
    # address is a public interface; its private address is the one a droplet's public
    # NIC carries besides it, the anchor address.
    for nic in scn.interfaces:
        if nic.public_ip:
            entry: dict[str, Node] = {
                "ipv4": {"ip_address": nic.public_ip, "netmask": "255.255.240.0",
                         "gateway": _gw(nic.public_ip)},
                "mac": nic.mac, "type": "public",
            }
            if nic.ipv6:
                entry["ipv6"] = {"ip_address": nic.ipv6[0], "cidr": nic.ipv6_prefix,
                                 "gateway": nic.ipv6_gateway or ""}
            if nic.ip:
                entry["anchor_ipv4"] = {"ip_address": nic.ip, "netmask": nic.netmask,
                                        "gateway": nic.gateway or ""}
            public.append(entry)
        elif nic.ip:
            private.append({"ipv4": {"ip_address": nic.ip, "netmask": nic.netmask,
                                     "gateway": nic.gateway or ""},
                            "mac": nic.mac, "type": "private"})
    doc: dict[str, Node] = {
        "droplet_id": droplet_id(scn),
        "hostname": scn.short_hostname,
        "user_data": scn.user_data,
        "vendor_data": scn.vendor_data or "",
        "public_keys": [k.authorized_line() for _, k in scn.all_keys()],
        "auth_key": "",
        "region": scn.region_name,
        "interfaces": {"public": public, "private": private},
        "floating_ip": {"ipv4": {"active": False}},
        "reserved_ip": {"ipv4": {"active": False}, "ipv6": {"active": False}},
        "dns": {"nameservers": list(scn.nameservers) or ["67.207.67.2", "67.207.67.3"]},
        "tags": list(scn.tags),
        "features": {"dhcp_enabled": False},
    }
    return deep_merge(doc, scn.overrides.get("digitalocean") or {})


def _gw(ip: str) -> str:
    parts = ip.split(".")
    return ".".join([*parts[:3], "1"])


TEXT_NAMES = {"droplet_id": "id", "user_data": "user-data", "vendor_data": "vendor-data",
              "public_keys": "public-keys", "auth_key": "auth-key", "ip_address": "address"}


def text_view(node: Node) -> Node:
    """The `/metadata/v1/` tree: kebab names, `address` for `ip_address`, lists
    of strings as newline-joined leaves, interfaces as indexed directories."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if v is None:
                continue
            out[TEXT_NAMES.get(str(k), str(k))] = text_view(v)
        return out
    if isinstance(node, list):
        if all(not is_dir(v) for v in node):
            return "\n".join(str(v) for v in node)
        return [text_view(v) for v in node]
    if isinstance(node, bool):
        return "true" if node else "false"
    return node


class DigitalOceanPlatform(Platform):
    name = "digitalocean"
    prefixes = ("/metadata/v1", "/metadata/v1.json")
    base_path = "/metadata/v1/"
    fault_headers = TEXT_HEADERS

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        super().__init__(scenario, clock)
        self._text: tuple[int, Node] = (-1, {})

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return render_tree(scenario)

    def handle(self, req: Request) -> HandlerResult:
        if req.method not in ("GET", "HEAD"):
            return Response.text(405, "Method Not Allowed\n")
        if req.path == "/metadata/v1.json":
            return Response(200, json.dumps(self.tree.root).encode(), JSON_HEADERS)
        if self._text[0] != self.tree.version:
            self._text = (self.tree.version, text_view(self.tree.root))
        try:
            node = self._text[1]
            for seg in split(req.path)[2:]:
                node = node[int(seg)] if isinstance(node, list) and seg.isdigit() else node[seg]
        except (KeyError, IndexError, TypeError):
            return Response.text(404, "not found\n")
        except PathError:  # pragma: no cover - defensive
            return Response.text(404, "not found\n")
        if is_dir(node):
            return Response(200, "\n".join(listing(node)).encode(), TEXT_HEADERS)
        return Response(200, str(node).encode(), TEXT_HEADERS)
