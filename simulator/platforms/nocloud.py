"""NoCloud: cloud-init's seed files (`meta-data`, `user-data`, `vendor-data`,
`network-config`), served over HTTP under `/nocloud/` for
`ds=nocloud;s=http://HOST:PORT/nocloud/`, and written to a seed directory
or a `cidata` ISO by guestsim.media.

Without `user_data` in the scenario, the user-data is a #cloud-config that
creates the scenario's users with their keys, so a NoCloud VM is provisioned
from the same scenario as a cloud one.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..httpcore import HandlerResult, Request, Response
from ..scenario import Scenario
from ..tree import Node, PathError, split
from .base import Platform

FILES = ("meta-data", "user-data", "vendor-data", "network-config")


def meta_data(scn: Scenario) -> dict[str, Any]:
    doc: dict[str, Any] = {"instance-id": f"iid-{scn.instance_id}",
                           "local-hostname": scn.short_hostname}
    keys = [k.authorized_line() for _, k in scn.all_keys()]
    if keys:
        doc["public-keys"] = keys
    return doc


def user_data(scn: Scenario) -> str:
    if scn.user_data is not None:
        return scn.user_data
    users: list[Any] = ["default"]
    for u in scn.users:
        entry: dict[str, Any] = {"name": u.name, "shell": "/bin/bash",
                                 "ssh_authorized_keys": [k.authorized_line() for k in u.keys]}
        if u.sudo:
            entry["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
        users.append(entry)
    doc: dict[str, Any] = {"hostname": scn.short_hostname, "fqdn": scn.fqdn, "users": users}
    if scn.scripts.startup:
        doc["runcmd"] = [["sh", "-c", scn.scripts.startup]]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def network_config(scn: Scenario) -> dict[str, Any]:
    ethernets: dict[str, Any] = {}
    for i, nic in enumerate(scn.interfaces):
        eth: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": f"eth{i}",
                               "mtu": nic.mtu}
        if nic.ip and not nic.dhcp:
            eth["addresses"] = [f"{nic.ip}/{nic.prefix}"] + [
                f"{a}/{nic.ipv6_prefix}" for a in nic.ipv6]
            if nic.gateway and i == 0:
                eth["routes"] = [{"to": "default", "via": nic.gateway}]
            if scn.nameservers:
                eth["nameservers"] = {"addresses": list(scn.nameservers),
                                      "search": list(scn.search)}
        else:
            eth["dhcp4"] = True
        ethernets[f"eth{i}"] = eth
    return {"version": 2, "ethernets": ethernets}


def seed_files(scn: Scenario) -> dict[str, str]:
    """File name -> content, as cloud-init reads them."""
    files = {
        "meta-data": yaml.safe_dump(meta_data(scn), sort_keys=False),
        "user-data": user_data(scn),
        "network-config": yaml.safe_dump(network_config(scn), sort_keys=False),
    }
    if scn.vendor_data is not None:
        files["vendor-data"] = scn.vendor_data
    return files


class NoCloudPlatform(Platform):
    name = "nocloud"
    prefixes = ("/nocloud",)
    base_path = "/nocloud/"

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return dict(seed_files(scenario))

    def handle(self, req: Request) -> HandlerResult:
        if req.method not in ("GET", "HEAD"):
            return Response.text(405, "Method Not Allowed\n")
        segs = split(req.path)[1:]
        if not segs:
            return Response.text(200, "\n".join(self.tree.root) + "\n")
        try:
            node = self.tree.resolve(segs)
        except PathError:
            return Response.text(404, "Not Found\n")
        if not isinstance(node, str):
            return Response.text(404, "Not Found\n")
        return Response.text(200, node)
