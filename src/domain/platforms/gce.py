"""GCE's recursive metadata JSON into the neutral model, plus GCE's own extras."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from guestagent.domain.jsondoc import json_type
from guestagent.domain.metadata import (
    InstanceMetadata,
    MetadataScript,
    NetworkInterface,
    Rejection,
    SshKey,
)
from guestagent.domain.scripts import KINDS, download_url, script_keys
from guestagent.domain.ssh_keys import dedupe, parse_user_key_lines
from guestagent.domain.values import canonical_ip, canonical_mac, canonical_network, parse_bool

PLATFORM = "gce"

# The attributes a subsystem acts on, with the subsystems that must keep their state
# when one of them is not a string (see Rejection.holds).
_KEY_ATTRIBUTES = ("ssh-keys", "sshKeys", "block-project-ssh-keys")
_ACTED_ON: dict[str, tuple[str, ...]] = {
    **{name: ("accounts",) for name in _KEY_ATTRIBUTES},
    "enable-oslogin": ("accounts", "oslogin"),
    **{key: ("scripts",) for kind in KINDS for key in script_keys(kind)},
}


class MetadataError(ValueError):
    """The document is not usable metadata (wrong shape, missing instance id)."""


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class GceNic:
    """The routes GCE asks for on one NIC (forwarded IPs, alias ranges)."""

    mac: str
    forwarded_ips: tuple[str, ...] = ()
    forwarded_ipv6s: tuple[str, ...] = ()
    target_instance_ips: tuple[str, ...] = ()
    ip_aliases: tuple[str, ...] = ()


@attrs.frozen
class GceExtras:
    """What only GCE has. Attributes are kept raw (instance and project apart),
    because OS Login and scripts follow GCE's own precedence rules."""

    project_id: str = ""
    numeric_project_id: str = ""
    oslogin_enabled: bool = False
    clock_drift_token: str | None = None
    nics: tuple[GceNic, ...] = ()
    instance_attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    project_attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)

    def attribute(self, key: str) -> str | None:
        """Instance value first, then the project's; None when neither sets it."""
        if key in self.instance_attributes:
            return self.instance_attributes[key]
        return self.project_attributes.get(key)


NO_EXTRAS = GceExtras()


def gce(metadata: InstanceMetadata) -> GceExtras:
    """GCE's extras of a snapshot; empty ones (nothing asked) on any other platform."""
    return metadata.extras if isinstance(metadata.extras, GceExtras) else NO_EXTRAS


# Every subsystem an attribute feeds: what a whole unreadable attributes object holds.
_FED_BY_ATTRIBUTES = tuple(sorted({s for subsystems in _ACTED_ON.values() for s in subsystems}))


def _unreadable(where: str, value: object, rejections: list[Rejection]) -> None:
    """A whole object keys come from is there but unreadable (null, a list...): never
    "no attributes", which would remove every managed key."""
    reason = f"is a JSON {json_type(value)}, not an object; kept the current state"
    rejections += Rejection.holding(where, reason, _FED_BY_ATTRIBUTES)


def _attributes(node: Mapping[str, Any], where: str, rejections: list[Rejection]) -> dict[str, str]:
    if "attributes" not in node:
        return {}
    raw = node["attributes"]
    if not isinstance(raw, Mapping):
        _unreadable(f"{where}/attributes", raw, rejections)
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            out[str(key)] = value
        elif key in _ACTED_ON:
            # Not absent: unreadable. Reading it as absent would, for ssh-keys, remove
            # every managed key and take everyone out of sudo.
            reason = f"is a JSON {json_type(value)}, not a string; kept the current state"
            rejections += Rejection.holding(f"{where}/attributes/{key}", reason, _ACTED_ON[key])
    return out


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
    for scope, name, attrs_ in sources:
        if name in attrs_:
            k, r = parse_user_key_lines(attrs_[name], f"{scope}/attributes/{name}")
            keys += k
            rejections += r
    return keys, rejections


def _list(nic: Mapping[str, Any], field: str, where: str, rejections: list[Rejection]) -> list[str]:
    """A list of strings; a wrong type holds the routes (reading it as empty removes them)."""
    value = nic.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        rejections += Rejection.holding(
            f"{where}/{field}", "is not a list of strings; routes kept", ("routes",)
        )
        return []
    return value


def _canonical_all(
    values: list[str], norm: Callable[[str], str], where: str, concerns: str, rejections: list[Rejection]
) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            out.append(norm(value))
        except ValueError:
            rejections.append(Rejection(where, "not an IP address or network", concerns))
    return tuple(out)


def _interface(
    nic: Mapping[str, Any], index: int, rejections: list[Rejection]
) -> tuple[NetworkInterface, GceNic]:
    where = f"instance/network-interfaces/{index}"
    mac = canonical_mac(str(nic.get("mac", "")))  # ValueError: the caller holds the NICs

    def routes(field: str, norm: Callable[[str], str], name: str) -> tuple[str, ...]:
        return _canonical_all(
            _list(nic, field, where, rejections), norm, f"{where}/{name}", "routes", rejections
        )

    ip = None
    if isinstance(nic.get("ip"), str):
        found = _canonical_all([nic["ip"]], canonical_ip, f"{where}/ip", "hostname", rejections)
        ip = found[0] if found else None
    mtu = nic.get("mtu")
    gateway = nic.get("gateway")
    neutral = NetworkInterface(
        mac=mac,
        ip=ip,
        ipv6=_canonical_all(
            _list(nic, "ipv6s", where, rejections), canonical_ip, f"{where}/ipv6s", "nics", rejections
        ),
        gateway=gateway if isinstance(gateway, str) and gateway else None,
        mtu=mtu if isinstance(mtu, int) and not isinstance(mtu, bool) else None,
    )
    extra = GceNic(
        mac=mac,
        forwarded_ips=routes("forwardedIps", canonical_ip, "forwarded-ips"),
        forwarded_ipv6s=routes("forwardedIpv6s", canonical_network, "forwarded-ipv6s"),
        target_instance_ips=routes("targetInstanceIps", canonical_ip, "target-instance-ips"),
        ip_aliases=routes("ipAliases", canonical_network, "ip-aliases"),
    )
    return neutral, extra


def _interfaces(
    instance: Mapping[str, Any], rejections: list[Rejection]
) -> tuple[tuple[NetworkInterface, ...], tuple[GceNic, ...]]:
    nics = instance.get("networkInterfaces")
    if nics is None:
        return (), ()
    where = "instance/network-interfaces"
    # The NIC list is positional (the first is the primary, the rest get DHCP): one
    # unreadable entry would shift the others, so any of them holds every network subsystem.
    network = ("nics", "routes", "hostname")
    if not isinstance(nics, list):
        rejections += Rejection.holding(where, "is not a list; network kept as is", network)
        return (), ()
    neutral: list[NetworkInterface] = []
    extras: list[GceNic] = []
    for index, nic in enumerate(nics):
        try:
            if not isinstance(nic, Mapping):
                raise ValueError("not an object")
            n, e = _interface(nic, index, rejections)
        except ValueError as exc:
            reason = f"unreadable ({'missing or invalid mac' if isinstance(nic, Mapping) else exc})"
            rejections += Rejection.holding(f"{where}/{index}", f"{reason}; network kept as is", network)
            return (), ()
        neutral.append(n)
        extras.append(e)
    return tuple(neutral), tuple(extras)


def _oslogin(instance: Mapping[str, str], project: Mapping[str, str]) -> bool:
    for attrs_ in (instance, project):
        value = parse_bool(attrs_.get("enable-oslogin"))
        if value is not None:
            return value
    return False


def _scripts(
    instance: Mapping[str, str], project: Mapping[str, str], rejections: list[Rejection]
) -> dict[str, tuple[MetadataScript, ...]]:
    """Per kind, URL script first then inline, each key instance over project on its own
    (an instance `startup-script` does not hide a project `startup-script-url`)."""
    out: dict[str, tuple[MetadataScript, ...]] = {}
    for kind in KINDS:
        found: list[MetadataScript] = []
        for key in script_keys(kind):
            if key in instance:
                value, scope = instance[key], "instance"
            elif key in project:
                value, scope = project[key], "project"
            else:
                continue
            if not value.strip():
                continue
            if key.endswith("-url"):
                try:
                    found.append(MetadataScript(key, True, download_url(value), scope))
                except ValueError as exc:
                    rejections.append(Rejection(f"{scope}/attributes/{key}", str(exc), "scripts"))
                continue
            found.append(MetadataScript(key, False, value, scope))
        out[kind] = tuple(found)
    return out


def _drift_token(instance: Mapping[str, Any], rejections: list[Rejection]) -> str | None:
    clock = instance.get("virtualClock")
    if clock is None:
        return None
    token = clock.get("driftToken") if isinstance(clock, Mapping) else clock
    if token is None:
        return None
    if isinstance(token, str) or (isinstance(token, int) and not isinstance(token, bool)):
        return str(token)
    # Made into a string, an object would be recorded as a token and resync the clock.
    rejections += Rejection.holding(
        "instance/virtual-clock/drift-token", "is not a string or number", ("clock",)
    )
    return None


def _hostname(instance: Mapping[str, Any], rejections: list[Rejection]) -> str:
    hostname = instance.get("hostname")
    if hostname is None or isinstance(hostname, str):
        return hostname or ""
    rejections += Rejection.holding("instance/hostname", "is not a string; hostname kept", ("hostname",))
    return ""


def _scalar(project: Mapping[str, Any], field: str, rejections: list[Rejection]) -> str:
    value = project.get(field)
    if value is None:
        return ""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    rejections += Rejection.holding(f"project/{field}", "is not a string or number", ("instance_setup",))
    return ""


def _user_data(attrs_: Mapping[str, str]) -> bytes | None:
    value = attrs_.get("user-data")
    return None if value is None else value.encode("utf-8", "surrogateescape")


def parse_gce(document: object) -> InstanceMetadata:
    """Parse `/computeMetadata/v1/?recursive=true&alt=json`.

    Raises MetadataError when the document cannot describe an instance;
    smaller problems (a bad key line, a bad IP) become Rejections and the
    rest of the snapshot is still used.
    """
    if not isinstance(document, Mapping):
        raise MetadataError("metadata is not a JSON object")
    instance = document.get("instance")
    if not isinstance(instance, Mapping):
        raise MetadataError("metadata has no instance object")
    project = document.get("project", {})
    rejections: list[Rejection] = []
    if not isinstance(project, Mapping):
        _unreadable("project", project, rejections)
        project = {}
    instance_id = instance.get("id")
    if isinstance(instance_id, bool) or not isinstance(instance_id, int | str) or not str(instance_id):
        raise MetadataError("metadata has no instance id")
    instance_attrs = _attributes(instance, "instance", rejections)
    project_attrs = _attributes(project, "project", rejections)
    keys, key_rejections = _ssh_keys(instance_attrs, project_attrs)
    rejections += key_rejections
    interfaces, nic_extras = _interfaces(instance, rejections)
    scripts = _scripts(instance_attrs, project_attrs, rejections)
    extras = GceExtras(
        project_id=_scalar(project, "projectId", rejections),
        numeric_project_id=_scalar(project, "numericProjectId", rejections),
        oslogin_enabled=_oslogin(instance_attrs, project_attrs),
        clock_drift_token=_drift_token(instance, rejections),
        nics=nic_extras,
        instance_attributes=instance_attrs,
        project_attributes=project_attrs,
    )
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=str(instance_id),
        hostname=_hostname(instance, rejections),
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        network_interfaces=interfaces,
        user_data=_user_data(instance_attrs),
        scripts=scripts,
        extras=extras,
    )


def dmi_says_gce(dmi: Mapping[str, str]) -> str | None:
    """GCE's detection hint: its DMI product name."""
    if dmi.get("product_name", "").strip() == "Google Compute Engine":
        return "DMI product_name is 'Google Compute Engine'"
    return None
