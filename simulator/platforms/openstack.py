"""OpenStack metadata service (`/openstack/...`) and the config-drive content.

The tree holds the files of one version directory; every listed version
serves the same files (as Nova does for an instance booted on a new cloud).
JSON files are stored as objects, so `sim.set("meta_data.json/meta/role",
"db", platform="openstack")` edits a single field.
"""

from __future__ import annotations

import base64
import hashlib
import json

from ..httpcore import HandlerResult, Request, Response
from ..scenario import Scenario, deep_merge
from ..tree import ANY4, Node, PathError, is_dir, split
from .base import Platform

VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
            "2016-10-06", "2017-02-22", "2018-08-27", "2020-10-14", "latest")


def meta_data(scn: Scenario) -> dict[str, Node]:
    keys = scn.named_keys()
    seed = base64.b64encode(hashlib.sha512(scn.instance_id.encode()).digest() * 8).decode()
    return {
        "uuid": scn.uuid,
        "name": scn.name,
        "hostname": scn.fqdn,
        "availability_zone": scn.zone,
        "project_id": scn.project_id,
        "launch_index": 0,
        "public_keys": {name: key.authorized_line() for name, key in keys},
        "keys": [{"name": name, "type": "ssh", "data": key.authorized_line()}
                 for name, key in keys],
        "meta": dict(scn.attributes),
        "random_seed": seed,
        "files": [],
        "devices": [],
    }


def network_data(scn: Scenario) -> dict[str, Node]:
    links: list[Node] = []
    networks: list[Node] = []
    for i, nic in enumerate(scn.interfaces):
        link = f"tap{i:02d}-{nic.mac.replace(':', '')[-6:]}"
        links.append({"id": link, "type": "ovs", "ethernet_mac_address": nic.mac,
                      "mtu": nic.mtu, "vif_id": f"{scn.uuid[:8]}-vif-{i}"})
        # Nova: a subnet with DHCP enabled is `ipv4_dhcp` and carries no address; only a
        # subnet without DHCP is a static `ipv4` network with address, netmask, routes and
        # DNS. Every static subnet with a gateway gets its own default route.
        if nic.dhcp:
            networks.append({"id": f"network{len(networks)}", "type": "ipv4_dhcp", "link": link,
                             "network_id": nic.network})
        elif nic.ip:
            routes: list[Node] = []
            if nic.gateway:
                routes.append({"network": ANY4, "netmask": ANY4,
                               "gateway": nic.gateway})
            networks.append({"id": f"network{len(networks)}", "type": "ipv4", "link": link,
                             "ip_address": nic.ip, "netmask": nic.netmask, "routes": routes,
                             "network_id": nic.network,
                             "services": [{"type": "dns", "address": a}
                                          for a in scn.nameservers]})
        for addr in nic.ipv6:
            # On a DHCP NIC the IPv6 subnet autoconfigures (Nova: `ipv6_slaac`, address
            # still listed); without DHCP it is static `ipv6`.
            routes6: list[Node] = []
            if nic.ipv6_gateway:
                routes6.append({"network": "::", "netmask": "::", "gateway": nic.ipv6_gateway})
            networks.append({"id": f"network{len(networks)}",
                             "type": "ipv6_slaac" if nic.dhcp else "ipv6", "link": link,
                             "ip_address": addr, "netmask": _v6mask(nic.ipv6_prefix),
                             "routes": routes6, "network_id": nic.network})
    return {"links": links, "networks": networks,
            "services": [{"type": "dns", "address": a} for a in scn.nameservers]}


def _v6mask(prefix: int) -> str:
    bits = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    groups = [f"{(bits >> s) & 0xFFFF:x}" for s in range(112, -1, -16)]
    return ":".join(groups)


def render_tree(scn: Scenario) -> dict[str, Node]:
    files: dict[str, Node] = {
        "meta_data.json": meta_data(scn),
        "network_data.json": network_data(scn),
        "vendor_data.json": {} if scn.vendor_data is None else {"cloud-init": scn.vendor_data},
        "vendor_data2.json": {},
    }
    if scn.user_data is not None:
        files["user_data"] = scn.user_data
    return deep_merge(files, scn.overrides.get("openstack") or {})


def file_bytes(name: str, node: Node) -> bytes:
    """A file of the version directory as served (and as written to a config drive)."""
    if name.endswith(".json"):
        return json.dumps(node).encode()
    return node.encode() if isinstance(node, str) else json.dumps(node).encode()


class OpenStackPlatform(Platform):
    name = "openstack"
    prefixes = ("/openstack",)
    base_path = "/openstack/latest/"
    fault_headers = [("Content-Type", "text/plain; charset=UTF-8")]  # noqa: RUF012

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return render_tree(scenario)

    def handle(self, req: Request) -> HandlerResult:
        if req.method not in ("GET", "HEAD"):
            return Response.text(405, "405 Method Not Allowed\n")
        segs = split(req.path)[1:]
        if not segs:
            return Response.text(200, "\n".join(VERSIONS))
        if segs[0] not in VERSIONS:
            return self.not_found()
        rest = segs[1:]
        if not rest:
            return Response.text(200, "\n".join(self.tree.root))
        try:
            node = self.tree.resolve(rest[:1])
        except PathError:
            return self.not_found()
        if len(rest) > 1 or (is_dir(node) and not rest[0].endswith(".json")):
            return self.not_found()
        ctype = "application/json" if rest[0].endswith(".json") else "text/plain; charset=UTF-8"
        return Response(200, file_bytes(rest[0], node), [("Content-Type", ctype)])
