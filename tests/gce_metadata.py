"""GCE snapshots for tests, built the way the agent builds them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.domain.platforms.gce import GceExtras, GceNic, parse_gce


def gce_md(
    instance_id: str = "1",
    *,
    hostname: str = "",
    network_interfaces: Sequence[NetworkInterface] = (),
    nics: Sequence[GceNic] = (),
    **extras: Any,
) -> InstanceMetadata:
    """A GCE snapshot with GCE's extras given by keyword (oslogin_enabled=..., ...)."""
    return InstanceMetadata(
        "gce",
        instance_id,
        hostname=hostname,
        network_interfaces=tuple(network_interfaces),
        extras=GceExtras(nics=tuple(nics), **extras),
    )


def from_attributes(instance: Mapping[str, str], project: Mapping[str, str] | None = None) -> InstanceMetadata:
    """What the parser makes of these instance and project attributes."""
    return parse_gce(
        {"instance": {"id": 1, "attributes": dict(instance)}, "project": {"attributes": dict(project or {})}}
    )
