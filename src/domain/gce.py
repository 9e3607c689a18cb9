"""GCE's recursive metadata JSON into the normalized InstanceMetadata."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, SshKey
from guestagent.domain.ssh_keys import dedupe, parse_user_key_lines
from guestagent.domain.values import (
    canonical_ip,
    canonical_mac,
    canonical_network,
    parse_bool,
)

PLATFORM = "gce"


class MetadataError(ValueError):
    """The document is not usable metadata (wrong shape, missing instance id)."""


def _attributes(node: Mapping[str, Any], where: str) -> dict[str, str]:
    raw = node.get("attributes") or {}
    if not isinstance(raw, Mapping):
        raise MetadataError(f"{where}/attributes is not an object")
    # Attribute values are strings on the wire; anything else is not ours to guess at.
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def _ssh_keys(
    instance: Mapping[str, str], project: Mapping[str, str]
) -> tuple[list[SshKey], list[Rejection]]:
    sources = [("instance", "ssh-keys", instance), ("instance", "sshKeys", instance)]
    # The legacy instance `sshKeys` blocks project keys just as the explicit switch does.
    blocked = parse_bool(instance.get("block-project-ssh-keys")) is True or "sshKeys" in instance
    if not blocked:
        sources += [("project", "ssh-keys", project), ("project", "sshKeys", project)]
    keys: list[SshKey] = []
    rejections: list[Rejection] = []
    for scope, name, attrs in sources:
        if name in attrs:
            k, r = parse_user_key_lines(attrs[name], f"{scope}/attributes/{name}")
            keys += k
            rejections += r
    return keys, rejections


def _strings(value: object) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _canonical_all(
    values: list[str], norm: Callable[[str], str], where: str, rejections: list[Rejection]
) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            out.append(norm(value))
        except ValueError:
            rejections.append(Rejection(where, "not an IP address or network"))
    return tuple(out)


def _interface(nic: Mapping[str, Any], index: int, rejections: list[Rejection]) -> NetworkInterface | None:
    where = f"instance/network-interfaces/{index}"
    try:
        mac = canonical_mac(str(nic.get("mac", "")))
    except ValueError:
        rejections.append(Rejection(where, "missing or invalid mac"))
        return None
    ip = None
    if isinstance(nic.get("ip"), str):
        found = _canonical_all([nic["ip"]], canonical_ip, f"{where}/ip", rejections)
        ip = found[0] if found else None
    mtu = nic.get("mtu")
    gateway = nic.get("gateway")
    return NetworkInterface(
        mac=mac,
        ip=ip,
        ipv6=_canonical_all(_strings(nic.get("ipv6s")), canonical_ip, f"{where}/ipv6s", rejections),
        gateway=gateway if isinstance(gateway, str) and gateway else None,
        mtu=mtu if isinstance(mtu, int) and not isinstance(mtu, bool) else None,
        forwarded_ips=_canonical_all(
            _strings(nic.get("forwardedIps")), canonical_ip, f"{where}/forwarded-ips", rejections
        ),
        forwarded_ipv6s=_canonical_all(
            _strings(nic.get("forwardedIpv6s")),
            canonical_network,
            f"{where}/forwarded-ipv6s",
            rejections,
        ),
        target_instance_ips=_canonical_all(
            _strings(nic.get("targetInstanceIps")),
            canonical_ip,
            f"{where}/target-instance-ips",
            rejections,
        ),
        ip_aliases=_canonical_all(
            _strings(nic.get("ipAliases")), canonical_network, f"{where}/ip-aliases", rejections
        ),
    )


def _oslogin(instance: Mapping[str, str], project: Mapping[str, str]) -> bool:
    for attrs in (instance, project):
        value = parse_bool(attrs.get("enable-oslogin"))
        if value is not None:
            return value
    return False


def parse_gce(document: object) -> InstanceMetadata:
    """Parse `/computeMetadata/v1/?recursive=true&alt=json`.

    Raises MetadataError when the document cannot describe an instance;
    smaller problems (a bad key line, a bad IP) become Rejections and the
    rest of the snapshot is still used.
    """
    if not isinstance(document, Mapping):
        raise MetadataError("metadata is not a JSON object")
    instance = document.get("instance")
    project = document.get("project") or {}
    if not isinstance(instance, Mapping) or not isinstance(project, Mapping):
        raise MetadataError("metadata has no instance object")
    instance_id = instance.get("id")
    if isinstance(instance_id, bool) or not isinstance(instance_id, int | str) or not str(instance_id):
        raise MetadataError("metadata has no instance id")
    instance_attrs = _attributes(instance, "instance")
    project_attrs = _attributes(project, "project")
    keys, rejections = _ssh_keys(instance_attrs, project_attrs)
    nics = instance.get("networkInterfaces") or []
    interfaces = []
    if isinstance(nics, list):
        for index, nic in enumerate(nics):
            if isinstance(nic, Mapping):
                found = _interface(nic, index, rejections)
                if found is not None:
                    interfaces.append(found)
    clock = instance.get("virtualClock")
    drift = clock.get("driftToken") if isinstance(clock, Mapping) else None
    hostname = instance.get("hostname")
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=str(instance_id),
        hostname=hostname if isinstance(hostname, str) else "",
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        oslogin_enabled=_oslogin(instance_attrs, project_attrs),
        network_interfaces=tuple(interfaces),
        clock_drift_token=None if drift is None else str(drift),
        project_id=str(project.get("projectId", "")),
        numeric_project_id=str(project.get("numericProjectId", "")),
        instance_attributes=instance_attrs,
        project_attributes=project_attrs,
    )
