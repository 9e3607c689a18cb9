"""OpenStack's metadata files (config drive or metadata service) into the neutral model.

One version directory, `openstack/latest/`, read from a config drive (a
volume labelled `config-2`) or from the metadata service; the transport
hands over the bytes of each file (None when absent, Unreadable when too
large) and this module decodes them (JSON through domain.jsondoc: depth
bounded, never an exception but the parser's own):

    meta_data.json      {"uuid": "...", "hostname": "vm.novalocal", "name": "vm",
                         "availability_zone": "nova", "project_id": "...",
                         "public_keys": {"mykey": "ssh-ed25519 AAAA... me"},
                         "keys": [{"name": "mykey", "type": "ssh", "data": "ssh-ed25519 ..."}],
                         "meta": {"role": "db"}, "random_seed": "...", ...}
    network_data.json   {"links": [{"id": "tap1", "type": "ovs", "mtu": 1450,
                                    "ethernet_mac_address": "fa:16:3e:..."}],
                         "networks": [{"id": "network0", "link": "tap1", "type": "ipv4",
                                       "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
                                       "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0",
                                                   "gateway": "10.0.0.1"}],
                                       "services": [{"type": "dns", "address": "10.0.0.2"}]}],
                         "services": [{"type": "dns", "address": "10.0.0.2"}]}
    user_data           bytes, the user's
    vendor_data.json    JSON: the operator's static vendor data (StaticJSON provider)
    vendor_data2.json   JSON: {provider name: that provider's JSON} (DynamicJSON providers)

What becomes of them:

- `uuid` is the instance id (required); `hostname`, else `name` when it is one
  word; every key in `public_keys` and `keys[]` (type "ssh") goes to the
  image's default user (SshKey.user None); `meta`, `name`,
  `availability_zone`, `project_id` go to OpenStackExtras.
- network_data: one NetworkInterface per MAC, in link order (the first is the
  primary). Static networks (`ipv4`, `ipv6`; also cloud-init's spellings
  `static`, `static6`) make the NIC `static` with "ADDR/PREFIX" addresses
  (netmask converted), the gateway from the 0.0.0.0/0 (::/0) route, other
  routes as Route values, DNS from the network's `services` (and
  `dns_nameservers`, which cloud-init also reads). DHCP and
  autoconfiguration types (`ipv4_dhcp`, `ipv6_dhcp`, `dhcp`, `ipv6_slaac`,
  `ipv6_dhcpv6-stateful`, `ipv6_dhcpv6-stateless`) leave it to the guest's
  DHCP/RA (their address, when given, is informational). Top-level
  `services` of type dns are the instance's resolvers.
- user_data is kept as bytes. vendor_data.json and vendor_data2.json are kept
  apart, both in extras, never merged: they come from different providers
  (the operator's static file; dynamic REST services keyed by their own
  names), Nova defines no merge, and a merge would let one provider's key
  shadow another's silently. The neutral `vendor_data` carries what
  cloud-init would run from them: vendor_data.json's payload (the document
  itself when it is a string, else its "cloud-init" member when that is a
  string), or when it has none vendor_data2.json's.

What holds (Rejection.holds, the subsystem keeps its state): anything in
network_data the network would be configured from that cannot be read (a
wrong type, a MAC, address, mask, gateway or MTU that is not one, a static
network without an address or mask) holds "network", "nics" and "hostname"
(the primary address goes into /etc/hosts) and no NIC is reported: a
half-read static network could strip a NIC of the address it needs. A
network the agent does not handle (unknown type, on a bond or VLAN link, on
a link that is not listed) is refused on its own and the rest applies.
Wrong-typed keys hold "accounts"; unreadable user data holds "scripts" and
"firstboot" (what reads it), unreadable vendor data "scripts"; a wrong-typed
hostname holds "hostname". A key text listed in both public_keys and keys[]
(Nova lists every key pair in both) is read once: a bad line is refused once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.jsondoc import JsonRefused, json_type, loads
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, Route, SshKey
from guestagent.domain.platforms import common
from guestagent.domain.platforms.common import Unreadable
from guestagent.domain.ssh_keys import dedupe, parse_default_user_keys
from guestagent.domain.values import canonical_mac

PLATFORM = "openstack"

META_DATA = "meta_data.json"
NETWORK_DATA = "network_data.json"
USER_DATA = "user_data"
VENDOR_DATA = "vendor_data.json"
VENDOR_DATA2 = "vendor_data2.json"
# The files of one version directory the transport reads, in this order.
FILES = (META_DATA, NETWORK_DATA, USER_DATA, VENDOR_DATA, VENDOR_DATA2)

# Nova launches with one key pair; far more is not metadata we can act on safely.
MAX_KEYS = 100
# Bounds on network_data: real instances have a handful of each.
MAX_LINKS = 64
MAX_NETWORKS = 256
MAX_ROUTES = 256
MAX_DNS = 32
# Nova allows 128 metadata items per instance (255 characters each).
MAX_META = 1024

# The subsystems that act on network_data (the primary NIC's address goes into /etc/hosts).
_NETWORK = ("network", "nics", "hostname")
# The subsystem that runs what user data and vendor data ask for.
_DATA = "scripts"
# What reads user data: scripts, and first boot (`[FirstBoot] run_user_data`), as on EC2.
_USER_DATA_READERS = (_DATA, "firstboot")
# What only OpenStack has and nobody acts on yet (extras).
_EXTRAS = "instance_setup"

STATIC_TYPES = frozenset({"ipv4", "ipv6", "static", "static6"})
AUTO_TYPES = frozenset(
    {
        "ipv4_dhcp",
        "ipv6_dhcp",
        "dhcp",
        "dhcp4",
        "dhcp6",
        "ipv6_slaac",
        "ipv6_dhcpv6-stateful",
        "ipv6_dhcpv6-stateless",
    }
)
# Link types whose MAC is not a NIC of their own: the agent configures neither.
UNSUPPORTED_LINKS = frozenset({"bond", "vlan"})

# DMI values Nova (and clouds built on it) give their guests.
DMI_NAMES = ("OpenStack Nova", "OpenStack Compute", "OpenStack Foundation")
DMI_ASSET_TAGS = (
    "OpenStack Nova",
    "OpenStack Compute",
    "OpenTelekomCloud",
    "SAP CCloud VM",
    "HUAWEICLOUD",
    "Samsung Cloud Platform",
)

_SHOWN_MAX = 64


class OpenStackError(ValueError):
    """The files cannot describe an instance (meta_data.json unusable, no uuid)."""


@attrs.frozen
class OpenStackFiles:
    """The files of one version directory as the transport read them.

    Each is bytes, None when absent, or Unreadable. `source` says where they
    were read ("iso9660 volume 'config-2' at /dev/sr0", "metadata service
    at 169.254.169.254"), for logs.
    """

    meta_data: bytes | Unreadable | None
    network_data: bytes | Unreadable | None = None
    user_data: bytes | Unreadable | None = None
    vendor_data: bytes | Unreadable | None = None
    vendor_data2: bytes | Unreadable | None = None
    source: str = ""


def _frozen_strings(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class OpenStackExtras:
    """What only OpenStack has.

    `meta` is the instance's user metadata (`nova boot --property k=v`),
    string values only. `vendor_data` and `vendor_data2` are the two vendor
    documents, decoded and read-only (mappings behind MappingProxyType,
    lists as tuples), None when absent or refused: never merged (see the
    module docstring). `network_data` is the decoded network_data.json, for
    what the neutral model has no place for (bonds, VLANs, network ids).
    """

    source: str = ""
    name: str = ""
    availability_zone: str = ""
    project_id: str = ""
    meta: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_strings)
    vendor_data: object = attrs.field(default=None, repr=False)
    vendor_data2: object = attrs.field(default=None, repr=False)
    network_data: object = attrs.field(default=None, repr=False)
    # Entropy for the guest's RNG: never shown.
    random_seed: str = attrs.field(default="", repr=False)


NO_EXTRAS = OpenStackExtras()


def openstack(metadata: InstanceMetadata) -> OpenStackExtras:
    """OpenStack's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, OpenStackExtras) else NO_EXTRAS


def dmi_says_openstack(dmi: Mapping[str, str]) -> str | None:
    """OpenStack's detection hint: Nova's SMBIOS manufacturer/product, or its chassis asset tag."""
    for field in ("product_name", "sys_vendor"):
        value = dmi.get(field, "").strip()
        if value in DMI_NAMES:
            return f"DMI {field} is {value!r}"
    tag = dmi.get("chassis_asset_tag", "").strip()
    if tag in DMI_ASSET_TAGS:
        return f"DMI chassis_asset_tag is {tag!r}"
    return None


# ------------------------------------------------------------------ small helpers


class _Held(Exception):
    """network_data cannot be read where `where` says: the network subsystems hold."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(reason)
        self.where = where
        self.reason = reason


def _shown(value: str) -> str:
    """A value from the document, safe and short enough for a log line."""
    text = value if len(value) <= _SHOWN_MAX else value[:_SHOWN_MAX] + "..."
    return repr(text)


def netmask_prefix(mask: object, version: int) -> int:
    """The prefix length a netmask stands for: "255.255.255.0", "ffff:ffff::", "24" or 24.

    ValueError when it is none (a mask whose ones are not contiguous, a host mask,
    a length out of range, a mask of the other IP version)."""
    width = 32 if version == 4 else 128
    if isinstance(mask, bool):
        raise ValueError("a netmask is not a boolean")
    if isinstance(mask, int):
        prefix = mask
    elif isinstance(mask, str):
        text = mask.strip()
        if text.isascii() and text.isdigit() and len(text) <= 3:
            prefix = int(text)
        else:
            if "%" in text:
                raise ValueError("a scoped address is not a netmask")
            address = ipaddress.ip_address(text)  # ValueError when not an address
            if address.version != version:
                raise ValueError(f"an IPv{address.version} netmask for an IPv{version} address")
            value = int(address)
            inverted = value ^ ((1 << width) - 1)
            if inverted & (inverted + 1):
                raise ValueError("the netmask's ones are not contiguous")
            prefix = width - inverted.bit_length()
    else:
        raise ValueError(f"a netmask is not a {json_type(mask)}")
    if not 0 <= prefix <= width:
        raise ValueError(f"prefix length {prefix} is out of range for IPv{version}")
    return prefix


# ------------------------------------------------------------------ meta_data.json


def _meta_data(raw: bytes | Unreadable | None) -> dict[str, object]:
    if raw is None:
        raise OpenStackError(f"there is no {META_DATA}")
    if isinstance(raw, Unreadable):
        raise OpenStackError(f"{META_DATA} refused: {raw.reason}")
    try:
        document = loads(raw)
    except JsonRefused as exc:
        raise OpenStackError(f"{META_DATA} refused: {exc}") from exc
    if not isinstance(document, dict):
        raise OpenStackError(f"{META_DATA} is a JSON {json_type(document)}, not an object")
    return document


def _instance_id(meta: Mapping[str, object]) -> str:
    raw = meta.get("uuid")
    if raw is None:
        raise OpenStackError(f"{META_DATA} has no uuid")
    if not isinstance(raw, str):
        raise OpenStackError(f"{META_DATA} uuid is a JSON {json_type(raw)}, not a string")
    value = raw.strip()
    if not common.ONE_WORD_ID.fullmatch(value):
        raise OpenStackError(f"{META_DATA} uuid is not one printable word of 1 to 255 characters")
    return value


def _hostname(meta: Mapping[str, object], rejections: list[Rejection]) -> str:
    raw = meta.get("hostname")
    where = f"{META_DATA} hostname"
    if raw is not None and not isinstance(raw, str):
        rejections += Rejection.holding(
            where, f"is a JSON {json_type(raw)}, not a string; hostname kept", ("hostname",)
        )
        return ""
    value = (raw or "").strip()
    if value:
        if common.NOT_ONE_WORD.search(value):
            rejections += Rejection.holding(where, "is not one word; hostname kept", ("hostname",))
            return ""
        return value
    # No hostname: Nova's display name, when it can be one (it may hold spaces).
    name = meta.get("name")
    if isinstance(name, str) and name.strip() and not common.NOT_ONE_WORD.search(name.strip()):
        return name.strip()
    return ""


def _key_lines(value: str, where: str, rejections: list[Rejection]) -> list[SshKey]:
    found, refused = parse_default_user_keys(value.splitlines(), where)
    rejections += refused
    return found


def _ssh_keys(meta: Mapping[str, object], rejections: list[Rejection]) -> list[SshKey]:
    keys: list[SshKey] = []
    # Nova lists each key pair twice (public_keys and keys[]): a text is read once, so a
    # bad line is refused once, not once per list.
    read: set[str] = set()
    public = meta.get("public_keys")
    where = f"{META_DATA} public_keys"
    # Names are shown by their position only: a mis-pasted key could be one.
    if isinstance(public, dict):
        for number, value in enumerate(public.values(), start=1):
            place = f"{where} entry {number}"
            if isinstance(value, str):
                if value not in read:
                    read.add(value)
                    keys += _key_lines(value, place, rejections)
            elif value is not None:
                rejections += Rejection.holding(
                    place,
                    f"is a JSON {json_type(value)}, not a key line; keys kept as they are",
                    ("accounts",),
                )
    elif public is not None:
        rejections += Rejection.holding(
            where, f"is a JSON {json_type(public)}, not an object; keys kept as they are", ("accounts",)
        )
    listed = meta.get("keys")
    where = f"{META_DATA} keys"
    if isinstance(listed, list):
        for number, entry in enumerate(listed, start=1):
            place = f"{where}[{number - 1}]"
            if not isinstance(entry, dict):
                rejections += Rejection.holding(
                    place,
                    f"is a JSON {json_type(entry)}, not an object; keys kept as they are",
                    ("accounts",),
                )
                continue
            kind = entry.get("type", "ssh")
            if kind != "ssh":
                continue  # x509 certificates (Nova's other key-pair type) are not SSH keys
            data = entry.get("data")
            if isinstance(data, str):
                if data not in read:
                    read.add(data)
                    keys += _key_lines(data, place, rejections)
            else:
                rejections += Rejection.holding(
                    f"{place} data",
                    f"is a JSON {json_type(data)}, not a key line; keys kept as they are",
                    ("accounts",),
                )
    elif listed is not None:
        rejections += Rejection.holding(
            where, f"is a JSON {json_type(listed)}, not an array; keys kept as they are", ("accounts",)
        )
    keys = list(dedupe(keys))
    if len(keys) > MAX_KEYS:
        rejections += Rejection.holding(
            f"{META_DATA} keys", f"holds more than {MAX_KEYS} keys; keys kept as they are", ("accounts",)
        )
        keys = keys[:MAX_KEYS]
    return keys


def _text_field(meta: Mapping[str, object], name: str, rejections: list[Rejection]) -> str:
    value = meta.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        rejections.append(
            Rejection(f"{META_DATA} {name}", f"is a JSON {json_type(value)}, not a string; ignored", _EXTRAS)
        )
        return ""
    return value


def _user_meta(meta: Mapping[str, object], rejections: list[Rejection]) -> dict[str, str]:
    raw = meta.get("meta")
    where = f"{META_DATA} meta"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        rejections.append(Rejection(where, f"is a JSON {json_type(raw)}, not an object; ignored", _EXTRAS))
        return {}
    out: dict[str, str] = {}
    skipped = 0
    for key, value in raw.items():
        if not isinstance(value, str):
            skipped += 1
            continue
        if len(out) >= MAX_META:
            rejections.append(
                Rejection(where, f"holds more than {MAX_META} items; the rest ignored", _EXTRAS)
            )
            break
        out[key] = value
    if skipped:
        rejections.append(Rejection(where, f"{skipped} item(s) are not strings; ignored", _EXTRAS))
    return out


# ------------------------------------------------------------------ network_data.json


def _list(doc: Mapping[str, object], key: str, where: str, bound: int) -> list[object]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Held(f"{where}{key}", f"is a JSON {json_type(value)}, not an array")
    if len(value) > bound:
        raise _Held(f"{where}{key}", f"lists more than {bound} entries")
    return value


def _object(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _Held(where, f"is a JSON {json_type(value)}, not an object")
    return value


def _string(entry: Mapping[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Held(f"{where}.{key}", f"is a JSON {json_type(value)}, not a string")
    return value.strip() or None


def _address(text: str, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        if "%" in text:
            raise ValueError("a scoped address")  # fe80::1%eth0 names a link, not an address
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise _Held(where, f"{_shown(text)} is not an IP address") from None


def _dns(services: list[object], where: str) -> list[str]:
    found: list[str] = []
    for index, raw in enumerate(services):
        place = f"{where}[{index}]"
        service = _object(raw, place)
        if service.get("type") != "dns":
            continue
        text = _string(service, "address", place)
        if text is None:
            raise _Held(f"{place}.address", "is missing")
        address = str(_address(text, f"{place}.address"))
        if address not in found:
            found.append(address)
    return found[:MAX_DNS]


@attrs.define
class _Nic:
    mac: str
    mtu: int | None
    ip: str | None = None
    prefix_length: int | None = None
    ipv6: list[str] = attrs.field(factory=list)
    gateway: str | None = None
    gateway6: str | None = None
    dns: list[str] = attrs.field(factory=list)
    static: bool = False
    addresses: list[str] = attrs.field(factory=list)
    routes: list[Route] = attrs.field(factory=list)

    def add_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int | None) -> None:
        text = str(address)
        if address.version == 4:
            if self.ip is None:
                self.ip, self.prefix_length = text, prefix
        elif text not in self.ipv6:
            self.ipv6.append(text)

    def neutral(self) -> NetworkInterface:
        return NetworkInterface(
            mac=self.mac,
            ip=self.ip,
            prefix_length=self.prefix_length,
            ipv6=tuple(self.ipv6),
            gateway=self.gateway,
            gateway6=self.gateway6,
            mtu=self.mtu,
            dns_servers=tuple(self.dns),
            static=self.static,
            addresses=tuple(self.addresses),
            routes=tuple(self.routes),
        )


def _mtu(link: Mapping[str, object], where: str) -> int | None:
    value = link.get("mtu")
    if value is None or (type(value) is int and value == 0):  # null (Nova), 0: the network's default
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Held(f"{where}.mtu", f"is a JSON {json_type(value)}, not a number")
    if not 68 <= value <= 65535:
        raise _Held(f"{where}.mtu", f"{value} is not an MTU (68 to 65535)")
    return value


def _mac(text: str, where: str) -> str:
    try:
        return canonical_mac(text)
    except ValueError:
        raise _Held(where, f"{_shown(text)} is not a MAC address") from None


def _prefix(network: Mapping[str, object], address_text: str, version: int, where: str) -> int | None:
    if "/" in address_text:
        try:
            return netmask_prefix(address_text.split("/", 1)[1], version)
        except ValueError as exc:
            raise _Held(f"{where}.ip_address", str(exc)) from None
    for key in ("netmask", "prefix"):
        value = network.get(key)
        if value is not None:
            try:
                return netmask_prefix(value, version)
            except ValueError as exc:
                raise _Held(f"{where}.{key}", str(exc)) from None
    return None


def _route(raw: object, where: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str | None]:
    route = _object(raw, where)
    network = _string(route, "network", where)
    if network is None:
        raise _Held(f"{where}.network", "is missing")
    base, _, inline = network.partition("/")
    destination = _address(base, f"{where}.network")
    mask: object = inline or route.get("netmask")
    if mask is None:
        raise _Held(f"{where}.netmask", "is missing")
    try:
        prefix = netmask_prefix(mask, destination.version)
    except ValueError as exc:
        raise _Held(f"{where}.netmask", str(exc)) from None
    try:
        net = ipaddress.ip_network(f"{destination}/{prefix}", strict=False)
    except ValueError:  # e.g. an IPv6 destination with a %scope
        raise _Held(f"{where}.network", f"{_shown(network)} is not a network") from None
    gateway_text = _string(route, "gateway", where)
    gateway = None
    if gateway_text is not None:
        address = _address(gateway_text, f"{where}.gateway")
        if address.version != net.version:
            raise _Held(f"{where}.gateway", f"an IPv{address.version} gateway for an IPv{net.version} route")
        gateway = str(address)
    return net, gateway


def _static(nic: _Nic, network: Mapping[str, object], where: str) -> None:
    text = _string(network, "ip_address", where)
    if text is None:
        raise _Held(f"{where}.ip_address", "is missing from a static network")
    address = _address(text.split("/", 1)[0], f"{where}.ip_address")
    prefix = _prefix(network, text, address.version, where)
    if prefix is None:
        raise _Held(f"{where}.netmask", "is missing from a static network")
    nic.static = True
    nic.add_address(address, prefix)
    entry = f"{address}/{prefix}"
    if entry not in nic.addresses:
        nic.addresses.append(entry)
    for index, raw in enumerate(_list(network, "routes", f"{where}.", MAX_ROUTES)):
        destination, gateway = _route(raw, f"{where}.routes[{index}]")
        if destination.prefixlen == 0 and gateway is not None:
            if destination.version == 4 and nic.gateway is None:
                nic.gateway = gateway
                continue
            if destination.version == 6 and nic.gateway6 is None:
                nic.gateway6 = gateway
                continue
        route = Route(str(destination), gateway)
        if route not in nic.routes:
            nic.routes.append(route)
    servers = _dns(_list(network, "services", f"{where}.", MAX_DNS * 4), f"{where}.services")
    # Not Nova's, but cloud-init reads it (the network-info spec's own example has it).
    for index, raw in enumerate(_list(network, "dns_nameservers", f"{where}.", MAX_DNS)):
        place = f"{where}.dns_nameservers[{index}]"
        if not isinstance(raw, str):
            raise _Held(place, f"is a JSON {json_type(raw)}, not a string")
        servers.append(str(_address(raw, place)))
    for server in servers:
        if server not in nic.dns and len(nic.dns) < MAX_DNS:
            nic.dns.append(server)


def _automatic(nic: _Nic, network: Mapping[str, object], where: str) -> None:
    """A DHCP/RA network: nothing to configure; its address, when given, is for information."""
    text = _string(network, "ip_address", where)
    if text is not None:
        address = _address(text.split("/", 1)[0], f"{where}.ip_address")
        nic.add_address(address, _prefix(network, text, address.version, where))


def _network_data(
    raw: bytes | Unreadable | None, rejections: list[Rejection]
) -> tuple[tuple[NetworkInterface, ...], tuple[str, ...], object]:
    """(NICs, instance resolvers, the decoded document) from network_data.json."""
    if raw is None:
        return (), (), None
    if isinstance(raw, Unreadable):
        rejections += Rejection.holding(NETWORK_DATA, f"{raw.reason}; network kept as is", _NETWORK)
        return (), (), None
    try:
        document = loads(raw)
    except JsonRefused as exc:
        rejections += Rejection.holding(NETWORK_DATA, f"{exc}; network kept as is", _NETWORK)
        return (), (), None
    try:
        doc = _object(document, NETWORK_DATA)
        nics, by_id, unsupported = _read_links(doc)
        refused: list[Rejection] = []
        for index, raw_network in enumerate(_list(doc, "networks", f"{NETWORK_DATA} ", MAX_NETWORKS)):
            where = f"{NETWORK_DATA} networks[{index}]"
            network = _object(raw_network, where)
            link = _string(network, "link", where)
            kind = _string(network, "type", where)
            if link is None or kind is None:
                missing = "link" if link is None else "type"
                refused.append(
                    Rejection(where, f"has no {missing}; this network is not configured", "network")
                )
                continue
            if link in unsupported:
                refused.append(
                    Rejection(
                        where,
                        f"is on a {unsupported[link]} link; the agent does not configure it",
                        "network",
                    )
                )
                continue
            nic = by_id.get(link)
            if nic is None:
                refused.append(
                    Rejection(
                        where, f"names link {_shown(link)}, which is not listed; not configured", "network"
                    )
                )
                continue
            if kind in STATIC_TYPES:
                _static(nic, network, where)
            elif kind in AUTO_TYPES:
                _automatic(nic, network, where)
            else:
                refused.append(
                    Rejection(
                        where,
                        f"has type {_shown(kind)}, which the agent does not know; not configured",
                        "network",
                    )
                )
        resolvers = tuple(
            _dns(_list(doc, "services", f"{NETWORK_DATA} ", MAX_DNS * 4), f"{NETWORK_DATA} services")
        )
    except _Held as held:
        rejections += Rejection.holding(held.where, f"{held.reason}; network kept as is", _NETWORK)
        return (), (), common.freeze(document)
    rejections += refused
    return tuple(nic.neutral() for nic in nics.values()), resolvers, common.freeze(document)


def _read_links(doc: Mapping[str, object]) -> tuple[dict[str, _Nic], dict[str, _Nic], dict[str, str]]:
    """(NICs by MAC in link order, NICs by link id, unsupported links by id -> what they are)."""
    nics: dict[str, _Nic] = {}
    by_id: dict[str, _Nic] = {}
    unsupported: dict[str, str] = {}
    for index, raw in enumerate(_list(doc, "links", f"{NETWORK_DATA} ", MAX_LINKS)):
        where = f"{NETWORK_DATA} links[{index}]"
        link = _object(raw, where)
        link_id = _string(link, "id", where)
        if link_id is None:
            raise _Held(f"{where}.id", "is missing")
        if link_id in by_id or link_id in unsupported:
            raise _Held(f"{where}.id", f"{_shown(link_id)} is listed twice")
        kind = _string(link, "type", where) or ""
        mtu = _mtu(link, where)
        if kind in UNSUPPORTED_LINKS:
            unsupported[link_id] = kind
            continue
        text = _string(link, "ethernet_mac_address", where)
        if text is None:
            unsupported[link_id] = "MAC-less"
            continue
        mac = _mac(text, f"{where}.ethernet_mac_address")
        nic = nics.get(mac)
        if nic is None:
            nic = nics[mac] = _Nic(mac=mac, mtu=mtu)
        by_id[link_id] = nic
    return nics, by_id, unsupported


# ------------------------------------------------------------------ user and vendor data


def _user_data(raw: bytes | Unreadable | None, rejections: list[Rejection]) -> bytes | None:
    if isinstance(raw, Unreadable):
        rejections += Rejection.holding(USER_DATA, f"{raw.reason}; kept as it was", _USER_DATA_READERS)
        return None
    return raw


def _vendor_document(raw: bytes | Unreadable | None, name: str, rejections: list[Rejection]) -> object:
    if raw is None:
        return None
    if isinstance(raw, Unreadable):
        rejections += Rejection.holding(name, f"{raw.reason}; kept as it was", (_DATA,))
        return None
    try:
        return common.freeze(loads(raw))
    except JsonRefused as exc:
        rejections += Rejection.holding(name, f"{exc}; kept as it was", (_DATA,))
        return None


def _payload(document: object, name: str, rejections: list[Rejection]) -> bytes | None:
    """What cloud-init would run from a vendor document: the document when it is a string,
    else its "cloud-init" member when that is one."""
    if isinstance(document, str):
        return document.encode("utf-8", "surrogatepass") if document else None
    if isinstance(document, Mapping):
        member = document.get("cloud-init")
        if isinstance(member, str):
            return member.encode("utf-8", "surrogatepass") if member else None
        if member is not None:
            rejections.append(
                Rejection(
                    f"{name} cloud-init",
                    f"is a JSON {_frozen_kind(member)}, not a string; kept in the extras only",
                    _DATA,
                )
            )
    return None


def _frozen_kind(value: object) -> str:
    """The JSON name of a frozen value's type (tuples were arrays, mappings objects)."""
    if isinstance(value, tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return json_type(value)


# ------------------------------------------------------------------ the parser


def parse_openstack(files: object) -> InstanceMetadata:
    """Turn one version directory (an OpenStackFiles) into the neutral model.

    Raises OpenStackError (a ValueError) when it cannot describe an instance
    (no meta_data.json, not a JSON object, no usable uuid), and nothing else;
    smaller problems become Rejections and the rest is used.
    """
    if not isinstance(files, OpenStackFiles):
        raise OpenStackError(f"expected what the OpenStack transport read, got {type(files).__name__}")
    meta = _meta_data(files.meta_data)
    instance_id = _instance_id(meta)
    rejections: list[Rejection] = []
    hostname = _hostname(meta, rejections)
    keys = _ssh_keys(meta, rejections)
    interfaces, resolvers, network_document = _network_data(files.network_data, rejections)
    user_data = _user_data(files.user_data, rejections)
    vendor = _vendor_document(files.vendor_data, VENDOR_DATA, rejections)
    vendor2 = _vendor_document(files.vendor_data2, VENDOR_DATA2, rejections)
    payload = _payload(vendor, VENDOR_DATA, rejections)
    payload2 = _payload(vendor2, VENDOR_DATA2, rejections)
    extras = OpenStackExtras(
        source=files.source,
        name=_text_field(meta, "name", rejections),
        availability_zone=_text_field(meta, "availability_zone", rejections),
        project_id=_text_field(meta, "project_id", rejections),
        meta=_user_meta(meta, rejections),
        vendor_data=vendor,
        vendor_data2=vendor2,
        network_data=network_document,
        random_seed=_text_field(meta, "random_seed", rejections),
    )
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=tuple(keys),
        rejections=tuple(rejections),
        network_interfaces=interfaces,
        dns_servers=resolvers,
        user_data=user_data,
        vendor_data=payload if payload is not None else payload2,
        extras=extras,
    )
