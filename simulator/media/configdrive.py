"""OpenStack config drive: an ISO9660 volume labelled `config-2` holding
`openstack/<version>/...` (the metadata service's files) and
`ec2/latest/meta-data.json`, as Nova writes it."""

from __future__ import annotations

import json
from pathlib import Path

from ..platforms.ec2 import render_tree as ec2_tree
from ..platforms.openstack import VERSIONS, file_bytes, render_tree
from ..scenario import Scenario
from .iso import build_iso

LABEL = "config-2"


def config_drive_files(scn: Scenario) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    tree = render_tree(scn)
    for version in ("2012-08-10", VERSIONS[-1]):
        for name, node in tree.items():
            files[f"openstack/{version}/{name}"] = file_bytes(name, node)
    ec2 = ec2_tree(scn)
    files["ec2/latest/meta-data.json"] = json.dumps(ec2["meta-data"]).encode()
    if "user-data" in ec2:
        files["ec2/latest/user-data"] = str(ec2["user-data"]).encode()
    return files


def build_config_drive(scn: Scenario, out: Path) -> Path:
    return build_iso(config_drive_files(scn), out, LABEL)
