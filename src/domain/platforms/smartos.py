"""SmartOS / Triton metadata keys into the neutral model, plus SmartOS's extras.

The transport reads the keys in KEYS_READ over the metadata channel (one
session, see adapters/mdata_client.py) and hands over what the host answered:
the value of every key it answered SUCCESS for (bytes), and the message of
every key it answered FAILURE for. A key answered NOTFOUND is simply absent.

Keys, as Triton's data dictionary and the clients that read them (cloud-init,
mdata-fetch) use them:

    sdc:uuid              the instance id (required)
    hostname              the user's hostname (customer metadata; wins, as in cloud-init)
    sdc:hostname          the VM's hostname
    sdc:nics              JSON list: {mac, interface (net0...), primary, ips
                          ["ADDR/PREFIX" | "dhcp" | "addrconf"], older ip + netmask,
                          gateways (older gateway), mtu, nic_tag, ...}
    sdc:resolvers         JSON list of resolver addresses
    sdc:routes            JSON list of {dst, gateway, linklocal}
    root_authorized_keys  key lines for root
    user-script           a script the guest runs at every boot
    sdc:operator-script   the operator's script, run before user-script
    user-data             the user's data (bytes, no defined format)
    sdc:vendor-data       the platform's (vendor) data

SmartOS guests have no DHCP on most networks: a NIC with an `ADDR/PREFIX`
address is static (the guest configures it). As in cloud-init, gateways are
taken from the primary NIC only (the others' would add competing default
routes), and a route goes to the NIC whose static subnet holds its gateway
(`linklocal` routes: the NIC that owns the gateway address, routed on-link);
a route no NIC can reach stays at instance level, in SmartOsExtras.routes.

`user-script` runs at every boot on SmartOS (Triton's documentation, and
cloud-init's per-boot handling), so both scripts go to scripts["startup"]:
the operator's first, then the user's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.jsondoc import JsonRefused, json_type, loads
from guestagent.domain.metadata import (
    InstanceMetadata,
    MetadataScript,
    NetworkInterface,
    Rejection,
    Route,
    SshKey,
)
from guestagent.domain.platforms import common
from guestagent.domain.ssh_keys import dedupe
from guestagent.domain.values import canonical_ip, canonical_mac

PLATFORM = "smartos"

UUID = "sdc:uuid"
HOSTNAME = "hostname"
SDC_HOSTNAME = "sdc:hostname"
NICS = "sdc:nics"
RESOLVERS = "sdc:resolvers"
ROUTES = "sdc:routes"
ROOT_KEYS = "root_authorized_keys"
USER_SCRIPT = "user-script"
OPERATOR_SCRIPT = "sdc:operator-script"
USER_DATA = "user-data"
VENDOR_DATA = "sdc:vendor-data"
# Every key the parser reads, in the order the transport asks for them.
KEYS_READ = (
    UUID,
    HOSTNAME,
    SDC_HOSTNAME,
    NICS,
    RESOLVERS,
    ROUTES,
    ROOT_KEYS,
    OPERATOR_SCRIPT,
    USER_SCRIPT,
    USER_DATA,
    VENDOR_DATA,
)
# The user SmartOS gives keys to.
ROOT = "root"
# The script kind user-script and the operator's script belong to (they run every boot).
SCRIPT_KIND = "startup"

MAX_KEYS = 100
MAX_NICS = 32
MAX_ROUTES = 256
MAX_RESOLVERS = 16
MIN_MTU, MAX_MTU = 68, 65535

# The subsystems that act on NICs (the primary address names the host in /etc/hosts).
_NETWORK = ("nics", "routes", "hostname")
_DATA = "scripts"


class SmartOsError(ValueError):
    """What was read cannot describe an instance (no usable sdc:uuid)."""


def _frozen_bytes(value: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return MappingProxyType(dict(value))


def _frozen_text(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class SmartOsFetched:
    """Everything one session read, and nothing else.

    `values` maps each key the host answered SUCCESS for to its value;
    `failures` maps each key it answered FAILURE for to the host's message.
    A key in neither was answered NOTFOUND (or not asked for).
    """

    values: Mapping[str, bytes] = attrs.field(factory=dict, converter=_frozen_bytes, repr=False)
    failures: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_text)


@attrs.frozen
class SmartOsExtras:
    """What only SmartOS has.

    `interface_names` maps a NIC's MAC to its SmartOS name (net0, net1...);
    `nic_tags` maps it to its nic_tag (the host network it is attached to);
    `routes` are the sdc:routes no NIC's static subnet reaches (instance level).
    """

    interface_names: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_text)
    nic_tags: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_text)
    routes: tuple[Route, ...] = ()


NO_EXTRAS = SmartOsExtras()


def smartos(metadata: InstanceMetadata) -> SmartOsExtras:
    """SmartOS's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, SmartOsExtras) else NO_EXTRAS


def _text(
    fetched: SmartOsFetched, key: str, subsystems: tuple[str, ...], rejections: list[Rejection]
) -> str | None:
    """A key's value as text; None when absent or unreadable (then `subsystems` hold)."""
    if key in fetched.failures:
        reason = f"the host answered FAILURE ({fetched.failures[key]}); kept as is"
        rejections += Rejection.holding(key, reason, subsystems)
        return None
    raw = fetched.values.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        rejections += Rejection.holding(key, "is not UTF-8 text; kept as is", subsystems)
        return None


def _json(
    fetched: SmartOsFetched, key: str, subsystems: tuple[str, ...], rejections: list[Rejection]
) -> object:
    text = _text(fetched, key, subsystems, rejections)
    if text is None or not text.strip():
        return None
    try:
        return loads(text)
    except JsonRefused as exc:
        rejections += Rejection.holding(key, f"{exc}; kept as is", subsystems)
        return None


# ------------------------------------------------------------------ identity


def _instance_id(fetched: SmartOsFetched) -> str:
    if UUID in fetched.failures:
        raise SmartOsError(f"the host answered FAILURE for {UUID} ({fetched.failures[UUID]})")
    raw = fetched.values.get(UUID)
    if raw is None:
        raise SmartOsError(f"the host has no {UUID}")
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise SmartOsError(f"{UUID} is not ASCII") from exc
    if not common.ONE_WORD_ID.fullmatch(value):
        raise SmartOsError(f"{UUID} is not one printable word of 1 to 255 characters")
    return value


def _hostname(fetched: SmartOsFetched, rejections: list[Rejection]) -> str:
    for key in (HOSTNAME, SDC_HOSTNAME):
        text = _text(fetched, key, ("hostname",), rejections)
        if any(r.where == key and r.holds for r in rejections):
            return ""  # unreadable: the hostname subsystem keeps what it has
        value = (text or "").strip()
        if not value:
            continue
        if common.NOT_ONE_WORD.search(value) or len(value) > 255:
            rejections += Rejection.holding(key, "is not one word; hostname kept", ("hostname",))
            return ""
        return value
    return ""


# ------------------------------------------------------------------ keys


def _ssh_keys(fetched: SmartOsFetched, rejections: list[Rejection]) -> list[SshKey]:
    text = _text(fetched, ROOT_KEYS, ("accounts",), rejections)
    if text is None:
        return []
    return common.user_key_file(text, ROOT, ROOT_KEYS, rejections, max_keys=MAX_KEYS)


# ------------------------------------------------------------------ network


class _Unreadable(ValueError):
    """One sdc:nics / sdc:routes entry that cannot be read: the network is kept as is."""


@attrs.define
class _Nic:
    mac: str
    primary: bool
    name: str | None
    tag: str | None
    static: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    gateways: list[str]
    mtu: int | None
    routes: list[Route] = attrs.field(factory=list)


def _address(text: str, netmask: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if "/" in text:
        return ipaddress.ip_interface(text.strip())
    if isinstance(netmask, str) and netmask.strip():
        address = ipaddress.ip_address(text.strip())
        if address.version != 4:
            raise ValueError("a netmask goes with an IPv4 address")
        return ipaddress.IPv4Interface(f"{address}/{netmask.strip()}")
    raise ValueError("an address without a prefix length or netmask")


def _addresses(entry: Mapping[str, object]) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    ips = entry.get("ips")
    if ips is None:
        ip = entry.get("ip")
        if ip is None:
            return []
        if not isinstance(ip, str):
            raise _Unreadable(f"ip is a JSON {json_type(ip)}, not a string")
        ips = [ip]
    if not isinstance(ips, list):
        raise _Unreadable(f"ips is a JSON {json_type(ips)}, not a list")
    static: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for item in ips:
        if not isinstance(item, str):
            raise _Unreadable(f"ips holds a JSON {json_type(item)}, not an address")
        if item.strip().lower() in ("dhcp", "addrconf"):
            continue  # dynamic: DHCP (v4) or SLAAC (v6)
        try:
            address = _address(item, entry.get("netmask"))
        except ValueError as exc:
            raise _Unreadable("ips holds something that is not ADDR/PREFIX, dhcp or addrconf") from exc
        if address not in static:
            static.append(address)
    return static


def _gateways(entry: Mapping[str, object]) -> list[str]:
    raw = entry.get("gateways")
    if raw is None:
        single = entry.get("gateway")
        raw = [] if single is None or single == "" else [single]
    if not isinstance(raw, list):
        raise _Unreadable(f"gateways is a JSON {json_type(raw)}, not a list")
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise _Unreadable(f"gateways holds a JSON {json_type(item)}, not an address")
        try:
            out.append(canonical_ip(item))
        except ValueError as exc:
            raise _Unreadable("gateways holds something that is not an IP address") from exc
    return out


def _mtu(entry: Mapping[str, object]) -> int | None:
    raw = entry.get("mtu")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise _Unreadable(f"mtu is a JSON {json_type(raw)}, not a number")
    text = str(raw).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not MIN_MTU <= int(text) <= MAX_MTU:
        raise _Unreadable(f"mtu is not a number from {MIN_MTU} to {MAX_MTU}")
    return int(text)


def _optional_text(entry: Mapping[str, object], name: str) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or common.NOT_ONE_WORD.search(value) or len(value) > 64:
        raise _Unreadable(f"{name} is not one word")
    return value


def _nic(entry: object) -> _Nic:
    if not isinstance(entry, dict):
        raise _Unreadable(f"is a JSON {json_type(entry)}, not an object")
    mac = entry.get("mac")
    if not isinstance(mac, str):
        raise _Unreadable("has no mac")
    try:
        canonical = canonical_mac(mac)
    except ValueError as exc:
        raise _Unreadable("mac is not a MAC address") from exc
    primary = entry.get("primary", False)
    if not isinstance(primary, bool):
        raise _Unreadable(f"primary is a JSON {json_type(primary)}, not a boolean")
    return _Nic(
        mac=canonical,
        primary=primary,
        name=_optional_text(entry, "interface"),
        tag=_optional_text(entry, "nic_tag"),
        static=_addresses(entry),
        gateways=_gateways(entry),
        mtu=_mtu(entry),
    )


def _nics(fetched: SmartOsFetched, rejections: list[Rejection]) -> list[_Nic] | None:
    """The NICs in order (primary first); None when the list cannot be read (network held)."""
    doc = _json(fetched, NICS, _NETWORK, rejections)
    if doc is None:
        return None if any(r.where == NICS for r in rejections) else []
    if not isinstance(doc, list):
        rejections += Rejection.holding(
            NICS, f"is a JSON {json_type(doc)}, not a list; network kept as is", _NETWORK
        )
        return None
    if len(doc) > MAX_NICS:
        rejections += Rejection.holding(
            NICS, f"lists more than {MAX_NICS} NICs; network kept as is", _NETWORK
        )
        return None
    nics: list[_Nic] = []
    seen: set[str] = set()
    for index, entry in enumerate(doc):
        try:
            nic = _nic(entry)
        except _Unreadable as exc:
            rejections += Rejection.holding(f"{NICS}[{index}]", f"{exc}; network kept as is", _NETWORK)
            return None
        if nic.mac not in seen:
            seen.add(nic.mac)
            nics.append(nic)
    # The primary NIC first (the first one marked primary; else the first listed).
    primary = next((n for n in nics if n.primary), nics[0] if nics else None)
    return sorted(nics, key=lambda n: n is not primary)


def _resolvers(fetched: SmartOsFetched, rejections: list[Rejection]) -> tuple[str, ...]:
    doc = _json(fetched, RESOLVERS, ("nics",), rejections)
    if doc is None:
        return ()
    if not isinstance(doc, list) or len(doc) > MAX_RESOLVERS:
        reason = f"is not a list of up to {MAX_RESOLVERS} addresses; DNS kept"
        rejections += Rejection.holding(RESOLVERS, reason, ("nics",))
        return ()
    out: list[str] = []
    for item in doc:
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            address = canonical_ip(item)
        except ValueError:
            rejections += Rejection.holding(
                RESOLVERS, "holds something that is not an IP address; DNS kept", ("nics",)
            )
            return ()
        if address not in out:
            out.append(address)
    return tuple(out)


def _route(entry: object) -> tuple[str, str, bool]:
    if not isinstance(entry, dict):
        raise _Unreadable(f"is a JSON {json_type(entry)}, not an object")
    dst, gateway, linklocal = entry.get("dst"), entry.get("gateway"), entry.get("linklocal", False)
    if not isinstance(dst, str) or not isinstance(gateway, str):
        raise _Unreadable("needs dst and gateway strings")
    if not isinstance(linklocal, bool):
        raise _Unreadable(f"linklocal is a JSON {json_type(linklocal)}, not a boolean")
    try:
        network = ipaddress.ip_network(dst.strip(), strict=False)
        hop = ipaddress.ip_address(gateway.strip())
    except ValueError as exc:
        raise _Unreadable("dst is not a network or gateway not an address") from exc
    if network.version != hop.version:
        raise _Unreadable("dst and gateway are of different IP versions")
    return str(network), str(hop), linklocal


def _routes(fetched: SmartOsFetched, nics: list[_Nic] | None, rejections: list[Rejection]) -> list[Route]:
    """Attach each route to its NIC; return the ones no NIC reaches (instance level)."""
    doc = _json(fetched, ROUTES, ("routes",), rejections)
    if doc is None:
        return []
    if not isinstance(doc, list) or len(doc) > MAX_ROUTES:
        rejections += Rejection.holding(
            ROUTES, f"is not a list of up to {MAX_ROUTES} routes; routes kept", ("routes",)
        )
        return []
    parsed: list[tuple[str, str, bool]] = []
    for index, entry in enumerate(doc):
        try:
            parsed.append(_route(entry))
        except _Unreadable as exc:
            rejections += Rejection.holding(f"{ROUTES}[{index}]", f"{exc}; routes kept", ("routes",))
            return []
    loose: list[Route] = []
    for dst, gateway, linklocal in parsed:
        hop = ipaddress.ip_address(gateway)
        home = None
        for nic in nics or []:
            if linklocal and any(a.ip == hop for a in nic.static):
                home = nic
                break
            if not linklocal and any(hop in a.network and a.ip != hop for a in nic.static):
                home = nic
                break
        route = Route(dst, None if linklocal else gateway)
        if home is None:
            loose.append(Route(dst, gateway))
        elif route not in home.routes:
            home.routes.append(route)
    return loose


def _interface(nic: _Nic, primary: bool) -> NetworkInterface:
    v4 = [a for a in nic.static if a.version == 4]
    v6 = [a for a in nic.static if a.version == 6]
    gateway = gateway6 = None
    if primary:
        gateway = next((g for g in nic.gateways if ":" not in g), None)
        gateway6 = next((g for g in nic.gateways if ":" in g), None)
    return NetworkInterface(
        mac=nic.mac,
        ip=str(v4[0].ip) if v4 else None,
        prefix_length=v4[0].network.prefixlen if v4 else None,
        ipv6=tuple(str(a.ip) for a in v6),
        gateway=gateway,
        gateway6=gateway6,
        mtu=nic.mtu,
        static=bool(nic.static),
        addresses=tuple(str(a) for a in nic.static),
        routes=tuple(nic.routes),
    )


# ------------------------------------------------------------------ scripts and data


def _scripts(fetched: SmartOsFetched, rejections: list[Rejection]) -> dict[str, tuple[MetadataScript, ...]]:
    found: list[MetadataScript] = []
    for key, scope in ((OPERATOR_SCRIPT, "operator"), (USER_SCRIPT, "instance")):
        text = _text(fetched, key, (_DATA,), rejections)
        if text is not None and text.strip():
            found.append(MetadataScript(key=key, is_url=False, value=text, scope=scope))
    return {SCRIPT_KIND: tuple(found)} if found else {}


def _data(fetched: SmartOsFetched, key: str, rejections: list[Rejection]) -> bytes | None:
    if key in fetched.failures:
        rejections += Rejection.holding(
            key, f"the host answered FAILURE ({fetched.failures[key]}); kept as is", (_DATA,)
        )
        return None
    return fetched.values.get(key)


# ------------------------------------------------------------------ the parser


def parse_smartos(fetched: object) -> InstanceMetadata:
    """Turn one session's answers (a SmartOsFetched) into the neutral model.

    Raises SmartOsError when they cannot describe an instance (no usable
    sdc:uuid), and nothing else; smaller problems become Rejections and the
    rest is used. A key that cannot be read at all (the host's FAILURE, not
    UTF-8, not JSON, a wrong type) holds the subsystems it concerns.
    """
    if not isinstance(fetched, SmartOsFetched):
        raise SmartOsError(f"expected what the SmartOS transport read, got {type(fetched).__name__}")
    instance_id = _instance_id(fetched)
    rejections: list[Rejection] = []
    hostname = _hostname(fetched, rejections)
    keys = _ssh_keys(fetched, rejections)
    nics = _nics(fetched, rejections)
    loose = _routes(fetched, nics, rejections)
    dns = _resolvers(fetched, rejections)
    interfaces = tuple(_interface(nic, index == 0) for index, nic in enumerate(nics or []))
    scripts = _scripts(fetched, rejections)
    user_data = _data(fetched, USER_DATA, rejections)
    vendor_data = _data(fetched, VENDOR_DATA, rejections)
    extras = SmartOsExtras(
        interface_names={n.mac: n.name for n in nics or [] if n.name},
        nic_tags={n.mac: n.tag for n in nics or [] if n.tag},
        routes=tuple(loose),
    )
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        network_interfaces=interfaces,
        dns_servers=dns,
        user_data=user_data,
        vendor_data=vendor_data,
        scripts=scripts,
        extras=extras,
    )


def dmi_says_smartos(dmi: Mapping[str, str]) -> str | None:
    """SmartOS's detection hint: KVM and bhyve guests show product name 'SmartDC ...'."""
    value = dmi.get("product_name", "").strip()
    if value.startswith("SmartDC"):
        return f"DMI product_name {value[:64]!r} starts with 'SmartDC'"
    return None
