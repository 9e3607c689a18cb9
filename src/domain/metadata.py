"""The platform-neutral instance model every provider produces.

Domain code never sees a wire format: each platform's parser (one module in
`domain/platforms/`) turns its own document into these values, so accounts,
hostname, networking and scripts are written once. What only one platform
has (GCE's project attributes, OS Login, drift token, forwarded IPs) travels
in `extras`, a typed value of that platform's own, read only by the
subsystems that belong to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs


def _frozen_scripts(
    value: Mapping[str, tuple[MetadataScript, ...]],
) -> Mapping[str, tuple[MetadataScript, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class SshKey:
    """One authorized_keys line meant for one user.

    `line` is the exact text to install (options, type, base64, comment),
    already validated; `expires_at` is None for keys that never expire.
    `user` is None for a key the platform gives without a name (EC2,
    NoCloud, OpenStack...): it belongs to the image's default user, which
    only the accounts configuration can name.
    """

    user: str | None
    line: str
    key_type: str
    expires_at: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@attrs.frozen
class Rejection:
    """A metadata input the agent refused, with a reason safe to log.

    `where` names the source (e.g. `instance/attributes/ssh-keys line 3`)
    and never carries key material. `concerns` is the subsystem the input
    was meant for: only that subsystem logs it and only it re-runs when it
    changes. `holds` marks an input that could not be read at all (a field
    of the wrong type): the subsystem then keeps the state it has rather
    than reading the field as empty, which for accounts would remove every
    managed key.
    """

    where: str
    reason: str
    concerns: str = "accounts"
    holds: bool = False

    def describe(self) -> str:
        return f"{self.where}: {self.reason}"

    @classmethod
    def holding(cls, where: str, reason: str, subsystems: tuple[str, ...]) -> list[Rejection]:
        """One holding rejection per subsystem: an input each of them would act on is
        unreadable, so each keeps its state (the parsers' `rejections += ...`)."""
        return [cls(where, reason, concerns=subsystem, holds=True) for subsystem in subsystems]


@attrs.frozen
class Route:
    """A route through one NIC: `destination` in CIDR form ("0.0.0.0/0" for the default)."""

    destination: str
    gateway: str | None = None


@attrs.frozen
class NetworkInterface:
    """One NIC as the platform describes it, found in the guest by MAC.

    `ip`, `prefix_length`, `ipv6` and the gateways say what the platform
    gave the NIC (on DHCP platforms, for information: the hostname line uses
    the primary address). `static` means the guest must configure them
    itself (OpenStack, DigitalOcean, SmartOS: no DHCP): `addresses` then
    lists every address to put on the link, v4 and v6, as "ADDR/PREFIX",
    and `routes` the routes through it beyond the on-link ones.
    """

    mac: str
    ip: str | None = None
    prefix_length: int | None = None
    ipv6: tuple[str, ...] = ()
    gateway: str | None = None
    gateway6: str | None = None
    mtu: int | None = None
    dns_servers: tuple[str, ...] = ()
    static: bool = False
    addresses: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()


@attrs.frozen
class MetadataScript:
    """One script metadata asks the guest to run."""

    key: str  # the metadata key, e.g. "startup-script-url"; also the log prefix
    is_url: bool
    value: str  # the download URL (already mapped to http(s)) or the script text
    scope: str  # where the key was found, e.g. "instance" or "project"

    def describe(self) -> str:
        # The query may hold a signed-URL token: never part of a log line.
        where = f" from {self.value.split('?')[0]}" if self.is_url else ""
        return f"run {self.key} ({self.scope} metadata){where}"


@attrs.frozen
class InstanceMetadata:
    """What one metadata snapshot says about this instance."""

    platform: str
    instance_id: str
    hostname: str = ""
    ssh_keys: tuple[SshKey, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    network_interfaces: tuple[NetworkInterface, ...] = ()
    # Resolvers and search domains for the whole instance (per-NIC ones are on the NIC).
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    # The user's data and the platform's (vendor) data, kept apart: the platform can
    # add its own instructions without wrapping the user's.
    user_data: bytes | None = None
    vendor_data: bytes | None = None
    # Scripts by kind ("startup", "shutdown", ...), each kind in the order they run.
    scripts: Mapping[str, tuple[MetadataScript, ...]] = attrs.field(
        factory=dict, converter=_frozen_scripts
    )
    # The platform's own typed values (e.g. GceExtras); None where it has none.
    extras: object = attrs.field(default=None, eq=True)

    def users(self) -> frozenset[str]:
        """The named users metadata gives keys to (the default user's keys have no name)."""
        return frozenset(key.user for key in self.ssh_keys if key.user is not None)

    def rejections_for(self, subsystem: str) -> tuple[Rejection, ...]:
        return tuple(r for r in self.rejections if r.concerns == subsystem)

    def held(self, subsystem: str) -> tuple[Rejection, ...]:
        """The unreadable inputs that make `subsystem` keep its current state."""
        return tuple(r for r in self.rejections if r.concerns == subsystem and r.holds)
