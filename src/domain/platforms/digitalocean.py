"""DigitalOcean's droplet metadata (`/metadata/v1.json`) into the neutral model, plus DO's extras.

Wire shape (DigitalOcean's Droplet Metadata API, `GET /metadata/v1.json`):

    {"droplet_id": 2756294, "hostname": "sample-droplet",
     "user_data": "...", "vendor_data": "#cloud-config\\n...",
     "public_keys": ["ssh-rsa AAAA... sammy@digitalocean.com"],
     "region": "nyc3", "tags": ["production"], "features": {"dhcp_enabled": false},
     "interfaces": {
       "public": [{"mac": "04:01:2a:0f:2a:01", "type": "public",
                   "ipv4": {"ip_address": "104.131.20.105", "netmask": "255.255.192.0",
                            "gateway": "104.131.0.1"},
                   "ipv6": {"ip_address": "2604:A880:0800:0010:0000:0000:017D:2001",
                            "cidr": 64, "gateway": "2604:A880:0800:0010:0000:0000:0000:0001"},
                   "anchor_ipv4": {"ip_address": "10.17.0.160", "netmask": "255.255.0.0",
                                   "gateway": "10.17.0.1"}}],
       "private": [{"mac": "04:01:2a:0f:2a:02", "type": "private",
                    "ipv4": {"ip_address": "10.132.6.205", "netmask": "255.255.0.0",
                             "gateway": "10.132.0.1"}}]},
     "floating_ip": {"ipv4": {"active": false}},
     "reserved_ip": {"ipv4": {"active": true, "ip_address": "45.55.96.17"}, "ipv6": {...}},
     "dns": {"nameservers": ["2001:4860:4860::8844", "8.8.8.8"]}}

Droplets get no DHCP (unless `features.dhcp_enabled`): every interface is
`static`, and the guest puts `addresses` ("ADDR/PREFIX", the netmask turned
into a prefix length) on the NIC with that MAC itself. The public NIC (the
first of `public`, else the first private one) is the primary and the only
one with gateways: a private interface's gateway is not a default route
(DigitalOcean's own images leave it out too). Its gateway may be off-link
(outside the NIC's prefix); whoever adds the route must allow that.

The anchor address and the floating/reserved IP belong to the platform, not
to the droplet's own configuration: the reserved IP is NATed by
DigitalOcean's edge to the anchor address, and DigitalOcean documents the
anchor as "an implementation detail of Reserved IPs". Neither is put in
`addresses`; both travel in DigitalOceanExtras. Metadata would "ask" the
guest to configure them only if it said so explicitly: a field or feature
flag naming the anchor or reserved address as one to put on the NIC (for
example a `features` entry for it, or an `anchor_ipv4` entry carrying a
`configure: true`). No field of today's v1.json does that, so nothing here
ever turns them into addresses.

Several accepted variations come from real droplets (cloud-init's fixtures):
`droplet_id` as a digit string, `public_keys` as one string, `tags: null`.
A `public_keys` entry of several lines is that many key lines, each checked
(and refused) on its own, as sshd would read them had they been written out.

User data and vendor data over DigitalOcean's 64 KiB (DATA_MAX), or of the
wrong type, hold only what reads them (user data: scripts and first boot;
vendor data: scripts); the rest of the document applies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from guestagent.domain.jsondoc import json_type
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, SshKey
from guestagent.domain.nics import Link
from guestagent.domain.platforms import common
from guestagent.domain.ssh_keys import dedupe, parse_default_user_keys, parse_key_text
from guestagent.domain.values import canonical_ip, canonical_mac

PLATFORM = "digitalocean"

# Who acts on NICs: the static network configuration ("network"), NIC bring-up (which
# leaves the first NIC alone) and the hostname line (the first NIC's address). A problem
# with the primary NIC holds all three: without it the second NIC would read as the first.
_NETWORK = "network"
_ALL_NETWORK = ("network", "nics", "hostname")
_PRIMARY = _ALL_NETWORK
_EXTRAS = "instance_setup"  # nothing acts on DO's extras yet; their refusals are logged there
_DATA = "scripts"
# What reads user data: scripts, and first boot (`[FirstBoot] run_user_data`), as on EC2.
_USER_DATA_READERS = (_DATA, "firstboot")
# DigitalOcean takes at most 64 KiB of user data: more did not come from it.
DATA_MAX = 64 * 1024
_MAX_ID = 2**63 - 1


class DigitalOceanMetadataError(ValueError):
    """The document cannot describe a droplet (not an object, no usable droplet_id)."""


@attrs.frozen
class DigitalOceanExtras:
    """What only DigitalOcean has. `floating_ip` is the active reserved (formerly
    "floating") IPv4 address, None when none is assigned; `anchor_ipv4` is the public
    NIC's anchor address as "ADDR/PREFIX". Both are the platform's: nothing configures them."""

    droplet_id: int
    region: str = ""
    tags: tuple[str, ...] = ()
    # The names of the features that are switched on (e.g. "dhcp_enabled").
    features: frozenset[str] = frozenset()
    floating_ip: str | None = None
    reserved_ipv6: str | None = None
    anchor_ipv4: str | None = None

    @property
    def dhcp_enabled(self) -> bool:
        return "dhcp_enabled" in self.features


def digitalocean(metadata: InstanceMetadata) -> DigitalOceanExtras | None:
    """DigitalOcean's extras of a snapshot; None on any other platform."""
    return metadata.extras if isinstance(metadata.extras, DigitalOceanExtras) else None


def _droplet_id(document: Mapping[str, Any]) -> int:
    raw = document.get("droplet_id")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise DigitalOceanMetadataError(f"droplet_id is {json_type(raw)}, not a number")
    if isinstance(raw, str):
        text = raw.strip()
        # The length first: int() of a huge digit string is slow, and refused past 4300 digits.
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise DigitalOceanMetadataError("droplet_id is not a positive whole number")
        raw = int(text)
    if not 0 < raw <= _MAX_ID:
        raise DigitalOceanMetadataError("droplet_id is not a positive whole number")
    return raw


def _hostname(document: Mapping[str, Any], rejections: list[Rejection]) -> str:
    value = document.get("hostname")
    if value is None:
        return ""
    if not isinstance(value, str):
        rejections += Rejection.holding(
            "hostname", f"is {json_type(value)}, not a string; hostname kept", ("hostname",)
        )
        return ""
    name = value.strip()
    if common.NOT_ONE_WORD.search(name):
        rejections += Rejection.holding(
            "hostname", "has spaces or control characters; hostname kept", ("hostname",)
        )
        return ""
    return name


def _ssh_keys(document: Mapping[str, Any], rejections: list[Rejection]) -> list[SshKey]:
    value = document.get("public_keys")
    if value is None:
        return []
    if isinstance(value, str):
        # Older droplets give one string (possibly several lines) instead of a list.
        found, refused = parse_default_user_keys(value.split("\n"), "public_keys")
        rejections += refused
        return found
    if not isinstance(value, list):
        rejections += Rejection.holding(
            "public_keys", f"is {json_type(value)}, not a list; keys kept as they are", ("accounts",)
        )
        return []
    keys: list[SshKey] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            # The list cannot be trusted to be complete: accounts keep what they have.
            rejections += Rejection.holding(
                f"public_keys key {number}",
                f"is {json_type(item)}, not a string; keys kept as they are",
                ("accounts",),
            )
            continue
        found, refused = parse_key_text(None, item, f"public_keys key {number}")
        keys += found
        rejections += refused
    return keys


def _data(
    document: Mapping[str, Any], field: str, readers: tuple[str, ...], rejections: list[Rejection]
) -> bytes | None:
    """User or vendor data; what cannot be used holds only its `readers`."""
    value = document.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        rejections += Rejection.holding(
            field, f"is {json_type(value)}, not a string; kept as it was", readers
        )
        return None
    data = value.encode("utf-8", "surrogateescape")
    if len(data) > DATA_MAX:
        rejections += Rejection.holding(
            field, f"is larger than {DATA_MAX} bytes (DigitalOcean's limit); kept as it was", readers
        )
        return None
    return data


def netmask_prefix(text: str) -> int:
    """The prefix length of a dotted IPv4 netmask ("255.255.192.0" -> 18); ValueError
    for anything else (a host mask such as "0.0.0.255" is not a netmask)."""
    try:
        mask = int(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError("not a dotted IPv4 netmask") from None
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise ValueError("not a contiguous netmask")
    return 32 - inverted.bit_length()


class _Unreadable(ValueError):
    """One field of an interface cannot be read; str() is the reason."""


def _ipv4(block: Mapping[str, Any]) -> tuple[str, int]:
    address, netmask = block.get("ip_address"), block.get("netmask")
    if not isinstance(address, str) or not isinstance(netmask, str):
        raise _Unreadable("ip_address and netmask must be strings")
    if "%" in address:
        raise _Unreadable("ip_address has a zone index")
    try:
        ip = ipaddress.ip_address(address.strip())
        prefix = netmask_prefix(netmask)
    except ValueError as exc:
        raise _Unreadable(f"not an IPv4 address and netmask ({exc})") from None
    if ip.version != 4:
        raise _Unreadable("ip_address is not IPv4")
    return str(ip), prefix


def _ipv6(block: Mapping[str, Any]) -> tuple[str, int]:
    address, cidr = block.get("ip_address"), block.get("cidr")
    if not isinstance(address, str):
        raise _Unreadable("ip_address must be a string")
    if "%" in address:
        raise _Unreadable("ip_address has a zone index")
    if isinstance(cidr, str) and cidr.strip().isascii() and cidr.strip().isdigit() and len(cidr.strip()) <= 3:
        cidr = int(cidr.strip())  # the text tree's spelling ("64")
    if isinstance(cidr, bool) or not isinstance(cidr, int) or not 0 < cidr <= 128:
        raise _Unreadable("cidr must be a prefix length from 1 to 128")
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        raise _Unreadable("ip_address is not an IP address") from None
    if ip.version != 6:
        raise _Unreadable("ip_address is not IPv6")
    return str(ip), cidr


def _gateway(block: Mapping[str, Any], version: int) -> str | None:
    value = block.get("gateway")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _Unreadable(f"gateway is {json_type(value)}, not a string")
    if "%" in value:
        raise _Unreadable("gateway has a zone index")
    try:
        gateway = canonical_ip(value)
    except ValueError:
        raise _Unreadable("gateway is not an IP address") from None
    if ipaddress.ip_address(gateway).version != version:
        raise _Unreadable(f"gateway is not IPv{version}")
    return gateway


def _block(entry: Mapping[str, Any], field: str) -> Mapping[str, Any] | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Unreadable(f"{field} is {json_type(value)}, not an object")
    return value


@attrs.frozen
class _Nic:
    nic: NetworkInterface
    anchor: str | None


def _nic(entry: object, public: bool) -> _Nic:
    """One interface entry; _Unreadable when a field the network acts on cannot be read."""
    if not isinstance(entry, dict):
        raise _Unreadable(f"is {json_type(entry)}, not an object")
    mac = entry.get("mac")
    if not isinstance(mac, str):
        raise _Unreadable(f"mac is {json_type(mac)}, not a string")
    try:
        mac = canonical_mac(mac)
    except ValueError:
        raise _Unreadable("mac is not a MAC address") from None
    addresses: list[str] = []
    ip = prefix = gateway = gateway6 = None
    ipv6: tuple[str, ...] = ()
    v4 = _block(entry, "ipv4")
    if v4 is not None:
        ip, prefix = _ipv4(v4)
        addresses.append(f"{ip}/{prefix}")
        # A private interface's gateway is not a default route.
        gateway = _gateway(v4, 4) if public else None
    v6 = _block(entry, "ipv6")
    if v6 is not None:
        address6, cidr = _ipv6(v6)
        ipv6 = (address6,)
        addresses.append(f"{address6}/{cidr}")
        gateway6 = _gateway(v6, 6) if public else None
    anchor = None
    anchor_block = entry.get("anchor_ipv4")
    if isinstance(anchor_block, dict):
        try:
            anchor_ip, anchor_prefix = _ipv4(anchor_block)
            anchor = f"{anchor_ip}/{anchor_prefix}"
        except _Unreadable:
            anchor = None  # the platform's, not configured here: nothing to hold
    nic = NetworkInterface(
        mac=mac,
        ip=ip,
        prefix_length=prefix,
        ipv6=ipv6,
        gateway=gateway,
        gateway6=gateway6,
        static=True,
        addresses=tuple(addresses),
    )
    return _Nic(nic, anchor)


def _interfaces(
    document: Mapping[str, Any], rejections: list[Rejection]
) -> tuple[tuple[NetworkInterface, ...], str | None]:
    value = document.get("interfaces")
    if value is None:
        return (), None
    if not isinstance(value, dict):
        rejections += Rejection.holding(
            "interfaces", f"is {json_type(value)}, not an object; network kept", _ALL_NETWORK
        )
        return (), None
    lists: dict[str, list[Any]] = {}
    for kind in ("public", "private"):
        entries = value.get(kind)
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            rejections += Rejection.holding(
                f"interfaces/{kind}", f"is {json_type(entries)}, not a list; network kept", _ALL_NETWORK
            )
            return (), None
        lists[kind] = entries
    found: list[NetworkInterface] = []
    anchor: str | None = None
    seen: set[str] = set()
    primary = True
    for kind, entries in lists.items():
        for index, entry in enumerate(entries):
            where = f"interfaces/{kind}/{index}"
            # Whatever is wrong with the primary NIC, the hostname line reads its address too.
            holds = _PRIMARY if primary else (_NETWORK,)
            primary = False
            try:
                parsed = _nic(entry, public=kind == "public")
            except _Unreadable as exc:
                rejections += Rejection.holding(where, f"{exc}; network kept", holds)
                continue
            if parsed.nic.mac in seen:
                rejections += Rejection.holding(
                    where, f"lists MAC {parsed.nic.mac} a second time; network kept", holds
                )
                continue
            seen.add(parsed.nic.mac)
            kind_field = entry.get("type")
            if kind_field is not None and kind_field != kind:
                rejections.append(
                    Rejection(
                        f"{where}/type",
                        f"is not {kind!r}; read as the {kind} interface it is listed as",
                        _NETWORK,
                    )
                )
            if kind == "public" and anchor is None:
                anchor = parsed.anchor
            found.append(parsed.nic)
    return tuple(found), anchor


def _nameservers(document: Mapping[str, Any], rejections: list[Rejection]) -> tuple[str, ...]:
    dns = document.get("dns")
    if dns is None:
        return ()
    if not isinstance(dns, dict):
        rejections += Rejection.holding("dns", f"is {json_type(dns)}, not an object; DNS kept", (_NETWORK,))
        return ()
    servers = dns.get("nameservers")
    if servers is None:
        return ()
    if not isinstance(servers, list):
        rejections += Rejection.holding(
            "dns/nameservers", f"is {json_type(servers)}, not a list; DNS kept", (_NETWORK,)
        )
        return ()
    out: list[str] = []
    for number, item in enumerate(servers, start=1):
        try:
            if not isinstance(item, str):
                raise ValueError(f"is {json_type(item)}, not a string")
            address = canonical_ip(item)
        except ValueError as exc:
            reason = str(exc) if not isinstance(item, str) else "not an IP address"
            rejections.append(Rejection(f"dns/nameservers entry {number}", reason, _NETWORK))
            continue
        if address not in out:
            out.append(address)
    return tuple(out)


def _string(document: Mapping[str, Any], field: str, rejections: list[Rejection]) -> str:
    value = document.get(field)
    if value is None:
        return ""
    if isinstance(value, str) and not common.NOT_ONE_WORD.search(value.strip()):
        return value.strip()
    rejections.append(Rejection(field, "is not one word", _EXTRAS))
    return ""


def _tags(document: Mapping[str, Any], rejections: list[Rejection]) -> tuple[str, ...]:
    value = document.get("tags")
    if value is None:
        return ()
    if not isinstance(value, list):
        rejections.append(Rejection("tags", f"is {json_type(value)}, not a list", _EXTRAS))
        return ()
    tags: list[str] = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, str) and item.strip() and not common.NOT_ONE_WORD.search(item.strip()):
            if item.strip() not in tags:
                tags.append(item.strip())
        else:
            rejections.append(Rejection(f"tags entry {number}", "is not one word", _EXTRAS))
    return tuple(tags)


def _features(document: Mapping[str, Any], rejections: list[Rejection]) -> frozenset[str]:
    value = document.get("features")
    if value is None:
        return frozenset()
    if not isinstance(value, dict):
        rejections.append(Rejection("features", f"is {json_type(value)}, not an object", _EXTRAS))
        return frozenset()
    on: set[str] = set()
    for name, flag in value.items():
        if isinstance(flag, bool):
            if flag:
                on.add(str(name))
        else:
            rejections.append(
                Rejection(f"features/{name}"[:80], f"is {json_type(flag)}, not a boolean", _EXTRAS)
            )
    return frozenset(on)


def _active_ip(
    document: Mapping[str, Any], field: str, family: str, version: int, rejections: list[Rejection]
) -> str | None:
    """The address of `FIELD/FAMILY` when `active` is true; None otherwise."""
    outer = document.get(field)
    block = outer.get(family) if isinstance(outer, dict) else None
    if outer is not None and not isinstance(outer, dict):
        rejections.append(Rejection(field, f"is {json_type(outer)}, not an object", _EXTRAS))
        return None
    if not isinstance(block, dict) or block.get("active") is not True:
        return None
    address = block.get("ip_address")
    try:
        if not isinstance(address, str):
            raise ValueError
        ip = canonical_ip(address)
        if ipaddress.ip_address(ip).version != version:
            raise ValueError
    except ValueError:
        rejections.append(
            Rejection(f"{field}/{family}/ip_address", f"is not an IPv{version} address", _EXTRAS)
        )
        return None
    return ip


def parse_digitalocean(document: object) -> InstanceMetadata:
    """Turn the parsed `/metadata/v1.json` into the neutral model.

    Raises DigitalOceanMetadataError when it cannot describe a droplet (not
    an object, no usable droplet_id); smaller problems become Rejections and
    the rest is used. A field a subsystem acts on that has the wrong type
    holds that subsystem (see Rejection.holds).
    """
    if not isinstance(document, dict):
        raise DigitalOceanMetadataError(f"metadata is {json_type(document)}, not a JSON object")
    droplet_id = _droplet_id(document)
    rejections: list[Rejection] = []
    keys = _ssh_keys(document, rejections)
    interfaces, anchor = _interfaces(document, rejections)
    hostname = _hostname(document, rejections)
    dns = _nameservers(document, rejections)
    user_data = _data(document, "user_data", _USER_DATA_READERS, rejections)
    vendor_data = _data(document, "vendor_data", (_DATA,), rejections)
    floating = _active_ip(document, "floating_ip", "ipv4", 4, rejections)
    reserved = _active_ip(document, "reserved_ip", "ipv4", 4, rejections)
    extras = DigitalOceanExtras(
        droplet_id=droplet_id,
        region=_string(document, "region", rejections),
        tags=_tags(document, rejections),
        features=_features(document, rejections),
        floating_ip=floating or reserved,
        reserved_ipv6=_active_ip(document, "reserved_ip", "ipv6", 6, rejections),
        anchor_ipv4=anchor,
    )
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=str(droplet_id),
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        network_interfaces=interfaces,
        dns_servers=dns,
        user_data=user_data,
        vendor_data=vendor_data,
        extras=extras,
    )


def dmi_says_digitalocean(dmi: Mapping[str, str]) -> str | None:
    """DigitalOcean's detection hint: its SMBIOS system manufacturer."""
    if dmi.get("sys_vendor", "").strip() == "DigitalOcean":
        return "DMI sys_vendor is 'DigitalOcean'"
    return None


# -- reaching the metadata service before the droplet has an address ----------------------


def link_local_address(mac: str) -> str:
    """The temporary address ("169.254.X.Y/16") the agent puts on a NIC to reach the
    metadata service before the droplet's own addresses are up.

    Chosen from the NIC's MAC, so a restarted agent picks the same one and can tell
    its own leftover address from anyone else's; X and Y stay inside RFC 3927's usable
    range (169.254.1.0 to 169.254.254.255), and never in 169.254.169.0/24, where the
    metadata service itself lives. ValueError for something that is not a MAC.
    """
    octets = [int(part, 16) for part in canonical_mac(mac).split(":")]
    x = 1 + (octets[3] ^ octets[4]) % 254
    if x == 169:
        x = 170
    y = 1 + octets[5] % 254
    return f"169.254.{x}.{y}/16"


def _usable(link: Link) -> bool:
    try:
        mac = canonical_mac(link.mac)
    except ValueError:
        return False  # loopback, tunnels: no Ethernet address
    return link.name != "lo" and mac != "00:00:00:00:00:00"


def bootstrap_link(links: Sequence[Link]) -> Link | None:
    """The NIC to carry the temporary address: the first Ethernet link by index (the
    public NIC on a droplet), as DigitalOcean's own images choose it; None if there is none."""
    candidates = sorted((link for link in links if _usable(link)), key=lambda link: link.index)
    return candidates[0] if candidates else None


def has_own_ipv4(links: Sequence[Link], ignore: str | None = None) -> bool:
    """Whether a link that is up carries an IPv4 address other than `ignore` ("ADDR" or
    "ADDR/PREFIX", the temporary address): the droplet's own addresses are configured.

    A link-local address someone else put there (avahi-autoipd, or a test network
    that is link-local throughout) counts too: its on-link route reaches the service
    just as well as the temporary address would.
    """
    skip = ignore.split("/", 1)[0] if ignore else None
    for link in links:
        if not link.up or not _usable(link):
            continue
        for address in link.ipv4:
            if address == skip:
                continue
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified:
                return True
    return False
