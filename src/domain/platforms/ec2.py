"""EC2's instance metadata (IMDS listings and leaves) into the neutral model, plus EC2's extras.

The transport walks the service and hands over only what it read: text
bodies keyed by their path under `meta-data/` (directory listings keep their
trailing slash, e.g. `public-keys/`), the user data and the identity
document. A path the service answered 404 for is simply absent. The parser
decides nothing about the network; the transport asks this module which
paths to fetch (`key_indices`, `mac_entries`, `NIC_FIELDS`), so the two
cannot drift apart.

Wire shapes (AWS's documentation):

    meta-data/                        ami-id\\nhostname\\ninstance-id\\n...\\npublic-keys/\\n...
    meta-data/public-keys/            0=my-key-pair            (404: no keys)
    meta-data/public-keys/0/openssh-key
                                      ssh-ed25519 AAAA... my-key-pair
    meta-data/network/interfaces/macs/
                                      0e:49:61:0f:c3:11/
    .../macs/<mac>/device-number      0
    .../macs/<mac>/local-ipv4s        172.31.5.10\\n172.31.5.11   (first: the NIC's primary)
    .../macs/<mac>/subnet-ipv4-cidr-block
                                      172.31.0.0/20
    .../macs/<mac>/ipv6s              2600:1f18::1              (404: none)
    user-data                         bytes                     (404: none)
    dynamic/instance-identity/document
                                      {"accountId": "...", "region": "...", ...}
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, SshKey
from guestagent.domain.platforms import common
from guestagent.domain.ssh_keys import dedupe, parse_default_user_keys
from guestagent.domain.values import canonical_ip, canonical_mac

PLATFORM = "ec2"

# Paths under meta-data/ the parser reads (the transport fetches exactly these).
INSTANCE_ID = "instance-id"
LOCAL_HOSTNAME = "local-hostname"
HOSTNAME = "hostname"
MAC = "mac"
KEYS = "public-keys/"
MACS = "network/interfaces/macs/"
NIC_FIELDS = ("device-number", "local-ipv4s", "subnet-ipv4-cidr-block", "ipv6s")
# Read when there is no identity document (some EC2-compatible services have none).
PLACEMENT_FALLBACK = {
    "region": "placement/region",
    "availability_zone": "placement/availability-zone",
    "instance_type": "instance-type",
}

# EC2 launches with one key pair; EC2-compatible clouds list a few. Far more is not
# metadata we can act on safely, and each entry costs the transport one request.
MAX_KEYS = 100
# The largest instances have a few dozen network cards; each costs a few requests.
MAX_NICS = 64

_KEY_ENTRY = re.compile(r"([0-9]{1,6})=(.*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The subsystems that act on NICs (their order gives the primary address too).
_NETWORK = ("nics", "routes", "hostname")


class Ec2MetadataError(ValueError):
    """What was read cannot describe an instance (no instance id)."""


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Ec2Fetched:
    """Everything the transport read in one walk, and nothing else.

    `meta_data` maps paths under `meta-data/` to the body the service
    answered (decoded text); a listing is keyed with its trailing slash. A
    path missing here was answered 404 or not asked for. `user_data` is
    None when the service has none (404); `identity` is the text of
    `dynamic/instance-identity/document`, None when absent.
    """

    meta_data: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    user_data: bytes | None = None
    identity: str | None = None
    # Why user data could not be read (e.g. larger than EC2 allows): it then holds only
    # what reads user data, and the keys in the same snapshot still apply.
    user_data_unreadable: str | None = None


@attrs.frozen
class Ec2Extras:
    """What only EC2 has (from the identity document, else placement/ and instance-type)."""

    region: str = ""
    availability_zone: str = ""
    instance_type: str = ""
    account_id: str = ""
    image_id: str = ""


NO_EXTRAS = Ec2Extras()


def ec2(metadata: InstanceMetadata) -> Ec2Extras:
    """EC2's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, Ec2Extras) else NO_EXTRAS


def key_path(index: str) -> str:
    return f"{KEYS}{index}/openssh-key"


def nic_path(mac: str, field: str) -> str:
    return f"{MACS}{mac}/{field}"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def key_indices(listing: str) -> tuple[list[str], list[int]]:
    """The key indexes a `public-keys/` listing names, in order, and the numbers of the
    lines that are not `INDEX=name` (at most MAX_KEYS indexes are returned)."""
    indices: list[str] = []
    bad: list[int] = []
    for number, raw in enumerate(listing.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _KEY_ENTRY.fullmatch(line)
        if match is None:
            bad.append(number)
            continue
        index = str(int(match.group(1)))  # "007" and "7" are the same key
        if index not in indices:
            indices.append(index)
    return indices, bad


def mac_entries(listing: str) -> tuple[list[str], list[int]]:
    """The MACs a `network/interfaces/macs/` listing names, spelled as listed (the
    transport fetches them by that spelling), and the numbers of lines that are not MACs."""
    macs: list[str] = []
    bad: list[int] = []
    for number, raw in enumerate(listing.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        entry = line[:-1] if line.endswith("/") else line
        try:
            canonical_mac(entry)
        except ValueError:
            bad.append(number)
            continue
        if entry not in macs:
            macs.append(entry)
    return macs, bad


def _instance_id(meta: Mapping[str, str]) -> str:
    raw = meta.get(INSTANCE_ID)
    if raw is None:
        raise Ec2MetadataError("meta-data has no instance-id")
    value = raw.strip()
    if not common.ONE_WORD_ID.fullmatch(value):
        raise Ec2MetadataError("meta-data/instance-id is not one printable word")
    return value


def _hostname(meta: Mapping[str, str], rejections: list[Rejection]) -> str:
    for path in (LOCAL_HOSTNAME, HOSTNAME):
        words = (meta.get(path) or "").split()
        if not words:
            continue
        # A VPC whose DHCP options list several domains gets several names here,
        # space-separated (`ip-10-0-0-1.corp.example eu-west-1.compute.internal`): the
        # first is the instance's own.
        if _CONTROL.search(words[0]):
            # Not a name: keep the current one rather than reading it as absent.
            rejections += Rejection.holding(
                f"meta-data/{path}", "has control characters; hostname kept", ("hostname",)
            )
            return ""
        return words[0]
    return ""


def _ssh_keys(meta: Mapping[str, str], rejections: list[Rejection]) -> list[SshKey]:
    listing = meta.get(KEYS)
    if listing is None:
        return []  # 404: the instance has no key pair
    indices, bad = key_indices(listing)
    for number in bad:
        # One unreadable entry means the listing cannot be trusted to be complete:
        # accounts keep what they have (the readable keys are still reported).
        rejections += Rejection.holding(
            f"meta-data/{KEYS} line {number}", "is not 'INDEX=name'; keys kept as they are", ("accounts",)
        )
    if len(indices) > MAX_KEYS:
        rejections += Rejection.holding(
            f"meta-data/{KEYS}", f"lists more than {MAX_KEYS} keys; keys kept as they are", ("accounts",)
        )
        indices = indices[:MAX_KEYS]
    keys: list[SshKey] = []
    for index in indices:
        path = key_path(index)
        body = meta.get(path)
        if body is None:
            # Listed but not readable (removed between the listing and the read?).
            rejections += Rejection.holding(
                f"meta-data/{path}", "listed but missing; keys kept as they are", ("accounts",)
            )
            continue
        found, refused = parse_default_user_keys(body.split("\n"), f"meta-data/{path}")
        keys += found
        rejections += refused
    return keys


def _device_number(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        raise ValueError("device-number is not a number")
    return int(value)


def _nic(
    meta: Mapping[str, str], listed: str, primary: bool, rejections: list[Rejection]
) -> tuple[int | None, NetworkInterface]:
    mac = canonical_mac(listed)
    device = _device_number(meta.get(nic_path(listed, "device-number")))  # ValueError: caller holds

    ip = None
    addresses = _lines(meta.get(nic_path(listed, "local-ipv4s")) or "")
    if addresses:
        try:
            ip = canonical_ip(addresses[0])
        except ValueError:
            # The primary NIC's address goes into /etc/hosts: keep the line as it is.
            where = f"meta-data/{nic_path(listed, 'local-ipv4s')}"
            rejections.append(Rejection(where, "not an IP address", "hostname", holds=primary))

    prefix = None
    block = (meta.get(nic_path(listed, "subnet-ipv4-cidr-block")) or "").strip()
    if block:
        try:
            network = ipaddress.ip_network(block, strict=False)
            if network.version != 4:
                raise ValueError("not IPv4")
            prefix = network.prefixlen
        except ValueError:
            where = f"meta-data/{nic_path(listed, 'subnet-ipv4-cidr-block')}"
            rejections += Rejection.holding(where, "not an IPv4 network; addressing kept", ("nics",))

    ipv6: list[str] = []
    for line in _lines(meta.get(nic_path(listed, "ipv6s")) or ""):
        try:
            address = canonical_ip(line)
            if ":" not in address:
                raise ValueError("not IPv6")
            ipv6.append(address)
        except ValueError:
            where = f"meta-data/{nic_path(listed, 'ipv6s')}"
            rejections += Rejection.holding(
                where, "holds something that is not an IPv6 address; kept", ("nics",)
            )
            ipv6 = []
            break
    return device, NetworkInterface(mac=mac, ip=ip, prefix_length=prefix, ipv6=tuple(ipv6))


def _interfaces(meta: Mapping[str, str], rejections: list[Rejection]) -> tuple[NetworkInterface, ...]:
    listing = meta.get(MACS)
    if listing is None:
        return ()
    where = f"meta-data/{MACS}"
    macs, bad = mac_entries(listing)
    if bad:
        rejections += Rejection.holding(
            f"{where} line {bad[0]}", "is not a MAC address; network kept as is", _NETWORK
        )
        return ()
    if len(macs) > MAX_NICS:
        rejections += Rejection.holding(
            where, f"lists more than {MAX_NICS} NICs; network kept as is", _NETWORK
        )
        return ()
    primary_mac = None
    if (meta.get(MAC) or "").strip():
        try:
            primary_mac = canonical_mac(meta[MAC])
        except ValueError:
            # Which NIC is primary decides the order every network subsystem reads.
            rejections += Rejection.holding(
                f"meta-data/{MAC}", "is not a MAC address; network kept as is", _NETWORK
            )
            return ()
    found: list[tuple[bool, int, str, NetworkInterface]] = []
    seen: set[str] = set()
    for listed in macs:
        is_primary = canonical_mac(listed) == primary_mac
        try:
            device, nic = _nic(meta, listed, is_primary, rejections)
        except ValueError as exc:
            rejections += Rejection.holding(
                f"{where}{listed}/", f"unreadable ({exc}); network kept as is", _NETWORK
            )
            return ()
        if nic.mac in seen:
            continue
        seen.add(nic.mac)
        # The instance's own `mac` first, then by device number (unnumbered last).
        found.append((not is_primary, device if device is not None else MAX_NICS * 1000, nic.mac, nic))
    return tuple(entry[3] for entry in sorted(found, key=lambda e: e[:3]))


def _extras(fetched: Ec2Fetched, rejections: list[Rejection]) -> Ec2Extras:
    meta = fetched.meta_data
    values: dict[str, str] = {
        name: (meta.get(path) or "").strip() for name, path in PLACEMENT_FALLBACK.items()
    }
    if fetched.identity is not None:
        where = "dynamic/instance-identity/document"
        try:
            document = loads(fetched.identity)
        except JsonRefused as exc:
            rejections.append(Rejection(where, str(exc), "instance_setup"))
            document = None
        if document is not None and not isinstance(document, dict):
            rejections.append(Rejection(where, "is not a JSON object", "instance_setup"))
        elif isinstance(document, dict):
            fields = {
                "region": "region",
                "availability_zone": "availabilityZone",
                "instance_type": "instanceType",
                "account_id": "accountId",
                "image_id": "imageId",
            }
            for name, key in fields.items():
                value = document.get(key)
                if isinstance(value, str) and value.strip():
                    values[name] = value.strip()
                elif value is not None:
                    rejections.append(Rejection(f"{where} {key}", "is not a string", "instance_setup"))
    return Ec2Extras(**values)


def parse_ec2(fetched: object) -> InstanceMetadata:
    """Turn one walk of the IMDS (an Ec2Fetched) into the neutral model.

    Raises Ec2MetadataError when it cannot describe an instance (no
    instance-id); smaller problems (a bad key line, a bad address) become
    Rejections and the rest is used. An entry that cannot be read at all
    holds the subsystem it concerns (see Rejection.holds).
    """
    if not isinstance(fetched, Ec2Fetched):
        raise Ec2MetadataError(f"expected what the EC2 transport read, got {type(fetched).__name__}")
    meta = fetched.meta_data
    instance_id = _instance_id(meta)
    rejections: list[Rejection] = []
    keys = _ssh_keys(meta, rejections)
    interfaces = _interfaces(meta, rejections)
    hostname = _hostname(meta, rejections)
    extras = _extras(fetched, rejections)
    if fetched.user_data_unreadable is not None:
        rejections += Rejection.holding("user-data", fetched.user_data_unreadable, ("scripts", "firstboot"))
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        network_interfaces=interfaces,
        user_data=fetched.user_data,
        extras=extras,
    )


def dmi_says_ec2(dmi: Mapping[str, str]) -> str | None:
    """EC2's detection hint: Nitro's sys_vendor, or the Xen-era BIOS/product version."""
    if dmi.get("sys_vendor", "").strip() == "Amazon EC2":
        return "DMI sys_vendor is 'Amazon EC2'"
    for field in ("product_version", "bios_version"):
        value = dmi.get(field, "").strip()
        if "amazon" in value.lower():
            return f"DMI {field} {value[:64]!r} names Amazon"
    return None
