"""The normalized instance model every metadata source produces.

Domain code never sees a wire format: each platform's parser turns its own
document into these values, so accounts, routes, scripts and the rest are
written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class SshKey:
    """One authorized_keys line meant for one user.

    `line` is the exact text to install (options, type, base64, comment),
    already validated; `expires_at` is None for keys that never expire.
    """

    user: str
    line: str
    key_type: str
    expires_at: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@attrs.frozen
class Rejection:
    """A metadata line the agent refused, with a reason safe to log.

    `where` names the source (e.g. `instance/attributes/ssh-keys line 3`)
    and never carries key material, so the log can say why without leaking.
    """

    where: str
    reason: str


@attrs.frozen
class NetworkInterface:
    """One NIC as the platform describes it, found in the guest by MAC."""

    mac: str
    ip: str | None = None
    ipv6: tuple[str, ...] = ()
    prefix_length: int | None = None
    gateway: str | None = None
    mtu: int | None = None
    forwarded_ips: tuple[str, ...] = ()
    forwarded_ipv6s: tuple[str, ...] = ()
    target_instance_ips: tuple[str, ...] = ()
    ip_aliases: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()


@attrs.frozen
class InstanceMetadata:
    """What one metadata snapshot says about this instance.

    Attributes are kept raw as well (instance and project apart), because a
    few subsystems (scripts, OS Login) need the platform's precedence rules
    rather than a merged view.
    """

    platform: str
    instance_id: str
    hostname: str = ""
    ssh_keys: tuple[SshKey, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    oslogin_enabled: bool = False
    network_interfaces: tuple[NetworkInterface, ...] = ()
    clock_drift_token: str | None = None
    project_id: str = ""
    numeric_project_id: str = ""
    instance_attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    project_attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)

    def attribute(self, key: str) -> str | None:
        """Instance value first, then the project's; None when neither sets it."""
        if key in self.instance_attributes:
            return self.instance_attributes[key]
        return self.project_attributes.get(key)

    def users(self) -> frozenset[str]:
        return frozenset(key.user for key in self.ssh_keys)
