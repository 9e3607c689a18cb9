"""The platform-neutral scenario: one description of a VM, rendered by every
platform into its own wire format.

A scenario is a mapping (YAML/JSON file or dict). Every field is optional; an
empty mapping is a valid VM. A document with an `instances:` list is a fleet:
each entry is a scenario merged over the document's `defaults:`.
See simulator/API.md for the field list.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ScenarioError(ValueError):
    """The scenario document is not valid; the message names the field."""


@dataclass(frozen=True)
class SshKey:
    """One public key. `key` is `TYPE BASE64 [COMMENT]`; `options` is the
    authorized_keys options prefix; `expire_on` makes GCE render the
    `google-ssh {"userName":..,"expireOn":..}` form."""

    key: str
    options: str = ""
    expire_on: str | None = None
    google_user: str | None = None

    @property
    def type(self) -> str:
        return self.key.split()[0]

    @property
    def blob(self) -> str:
        parts = self.key.split()
        return parts[1] if len(parts) > 1 else ""

    def authorized_line(self) -> str:
        """The line as it goes into authorized_keys (no GCE expiry JSON)."""
        return f"{self.options} {self.key}" if self.options else self.key

    def gce_line(self, user: str) -> str:
        """The value after `USER:` in GCE's ssh-keys attribute."""
        if self.expire_on is None:
            return self.authorized_line()
        typ, blob = self.type, self.blob
        body = f"{self.options} {typ} {blob}" if self.options else f"{typ} {blob}"
        meta = {"userName": self.google_user or f"{user}@example.com", "expireOn": self.expire_on}
        return f"{body} google-ssh {json.dumps(meta, separators=(',', ':'))}"


@dataclass(frozen=True)
class User:
    name: str
    keys: tuple[SshKey, ...] = ()
    scope: str = "instance"  # GCE: "instance" or "project" ssh-keys
    sudo: bool = True
    password: str | None = None  # Azure/OVF only


@dataclass(frozen=True)
class Interface:
    mac: str
    ip: str | None = None
    prefix: int = 24
    gateway: str | None = None
    mtu: int = 1460
    ipv6: tuple[str, ...] = ()
    ipv6_prefix: int = 64
    ipv6_gateway: str | None = None
    forwarded_ips: tuple[str, ...] = ()
    forwarded_ipv6s: tuple[str, ...] = ()
    target_instance_ips: tuple[str, ...] = ()
    ip_aliases: tuple[str, ...] = ()
    public_ip: str | None = None
    network: str = "default"
    subnet: str = "default"
    dhcp: bool = True

    @property
    def netmask(self) -> str:
        bits = (0xFFFFFFFF << (32 - self.prefix)) & 0xFFFFFFFF
        return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))


@dataclass(frozen=True)
class Scripts:
    startup: str | None = None
    startup_url: str | None = None
    shutdown: str | None = None
    shutdown_url: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str = "sim-vm"
    instance_id: str = "4520031799277581759"
    hostname: str | None = None  # default: NAME.c.PROJECT.internal
    zone: str = "us-central1-a"
    region: str | None = None  # default: the zone minus its last part
    machine_type: str = "e2-small"
    image: str = "debian-12"
    project_id: str = "sim-project"
    project_number: int = 123456789012
    users: tuple[User, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    project_attributes: dict[str, str] = field(default_factory=dict)
    user_data: str | None = None
    vendor_data: str | None = None
    scripts: Scripts = Scripts()
    interfaces: tuple[Interface, ...] = ()
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    drift_token: str = "0"  # noqa: S105 - a clock token, not a secret
    tags: tuple[str, ...] = ()
    # Raw per-platform additions, deep-merged over the rendered tree
    # ({"gce": {"instance": {...}}, "ec2": {...}}): the escape hatch for any
    # field the neutral form does not model.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Fleet routing: which client address or listening port gets this VM.
    match_client: str | None = None
    match_port: int | None = None

    @property
    def fqdn(self) -> str:
        return self.hostname or f"{self.name}.c.{self.project_id}.internal"

    @property
    def short_hostname(self) -> str:
        return self.fqdn.split(".")[0]

    @property
    def region_name(self) -> str:
        return self.region or self.zone.rsplit("-", 1)[0]

    @property
    def uuid(self) -> str:
        """A stable UUID for platforms that name instances by UUID."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"guestsim:{self.instance_id}"))

    @property
    def admin_user(self) -> User | None:
        return self.users[0] if self.users else None

    def all_keys(self) -> list[tuple[str, SshKey]]:
        return [(u.name, k) for u in self.users for k in u.keys]

    def named_keys(self) -> list[tuple[str, SshKey]]:
        """(key name, key): the user's name, then USER-1, USER-2 for extra keys
        (EC2 and OpenStack name keys, one name each)."""
        return [(u.name if n == 0 else f"{u.name}-{n}", k)
                for u in self.users for n, k in enumerate(u.keys)]


@dataclass(frozen=True)
class Fleet:
    instances: tuple[Scenario, ...]


ScenarioLike = Scenario | Fleet | dict[str, Any] | str | Path | None


# -- loading ------------------------------------------------------------------

def load_scenario(source: ScenarioLike) -> Scenario | Fleet:
    """Parse a dict, a YAML/JSON path, or pass a Scenario/Fleet through."""
    if isinstance(source, Scenario | Fleet):
        return source
    if source is None:
        return Scenario()
    if isinstance(source, str | Path):
        doc = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    else:
        doc = source
    if not isinstance(doc, dict):
        raise ScenarioError("a scenario must be a mapping")
    if "instances" in doc:
        defaults = doc.get("defaults") or {}
        entries = doc["instances"]
        if not isinstance(entries, list) or not entries:
            raise ScenarioError("instances: must be a non-empty list")
        return Fleet(tuple(parse(_merge(defaults, e), f"instances[{i}]")
                           for i, e in enumerate(entries)))
    return parse(doc)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def attr_value(value: Any) -> str:
    """Metadata attributes are strings; YAML booleans become "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def _expiry(value: Any, where: str) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return str(value.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if isinstance(value, str):
        return str(value)
    raise ScenarioError(f"{where}: expire_on must be a timestamp string")


def _key(raw: Any, where: str) -> SshKey:
    if isinstance(raw, str):
        return SshKey(key=raw.strip())
    if not isinstance(raw, dict) or "key" not in raw:
        raise ScenarioError(f"{where}: a key is a string or a mapping with `key`")
    expire = raw.get("expire_on")
    if expire is None and raw.get("expire_in") is not None:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(raw["expire_in"]))
        expire = when.replace(microsecond=0)
    return SshKey(
        key=str(raw["key"]).strip(),
        options=str(raw.get("options") or ""),
        expire_on=None if expire is None else _expiry(expire, where),
        google_user=raw.get("google_user"),
    )


def _user(raw: Any, where: str) -> User:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ScenarioError(f"{where}: a user needs a `name`")
    keys = raw.get("keys") or []
    if isinstance(keys, str):
        keys = [keys]
    scope = raw.get("scope", "instance")
    if scope not in ("instance", "project"):
        raise ScenarioError(f"{where}.scope: instance or project")
    return User(
        name=str(raw["name"]),
        keys=tuple(_key(k, f"{where}.keys[{i}]") for i, k in enumerate(keys)),
        scope=scope,
        sudo=bool(raw.get("sudo", True)),
        password=raw.get("password"),
    )


def _strs(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list")
    return tuple(str(x) for x in raw)


def _interface(raw: Any, index: int) -> Interface:
    where = f"network.interfaces[{index}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping")
    mac = str(raw.get("mac") or f"42:01:0a:80:00:{index + 2:02x}").lower()
    ip = raw.get("ip")
    prefix = int(raw.get("prefix", 24))
    if isinstance(ip, str) and "/" in ip:
        ip, _, p = ip.partition("/")
        prefix = int(p)
    return Interface(
        mac=mac,
        ip=ip,
        prefix=prefix,
        gateway=raw.get("gateway"),
        mtu=int(raw.get("mtu", 1460)),
        ipv6=_strs(raw.get("ipv6"), f"{where}.ipv6"),
        ipv6_prefix=int(raw.get("ipv6_prefix", 64)),
        ipv6_gateway=raw.get("ipv6_gateway"),
        forwarded_ips=_strs(raw.get("forwarded_ips"), f"{where}.forwarded_ips"),
        forwarded_ipv6s=_strs(raw.get("forwarded_ipv6s"), f"{where}.forwarded_ipv6s"),
        target_instance_ips=_strs(raw.get("target_instance_ips"), f"{where}.target_instance_ips"),
        ip_aliases=_strs(raw.get("ip_aliases"), f"{where}.ip_aliases"),
        public_ip=raw.get("public_ip"),
        network=str(raw.get("network", "default")),
        subnet=str(raw.get("subnet", "default")),
        dhcp=bool(raw.get("dhcp", True)),
    )


KNOWN = {
    "instance", "project", "users", "attributes", "project_attributes", "user_data",
    "vendor_data", "scripts", "network", "clock", "tags", "overrides", "match", "description",
}


def parse(doc: dict[str, Any], where: str = "scenario") -> Scenario:
    unknown = set(doc) - KNOWN
    if unknown:
        raise ScenarioError(f"{where}: unknown fields {sorted(unknown)}")
    inst = doc.get("instance") or {}
    proj = doc.get("project") or {}
    net = doc.get("network") or {}
    scripts = doc.get("scripts") or {}
    match = doc.get("match") or {}
    dns = net.get("dns") or {}
    d = Scenario()
    ifaces = net.get("interfaces")
    if ifaces is None:
        ifaces = [{"ip": "10.128.0.2", "prefix": 20, "gateway": "10.128.0.1"}]
    return Scenario(
        name=str(inst.get("name", d.name)),
        instance_id=str(inst.get("id", d.instance_id)),
        hostname=inst.get("hostname"),
        zone=str(inst.get("zone", d.zone)),
        region=inst.get("region"),
        machine_type=str(inst.get("machine_type", d.machine_type)),
        image=str(inst.get("image", d.image)),
        project_id=str(proj.get("id", d.project_id)),
        project_number=int(proj.get("numeric_id", d.project_number)),
        users=tuple(_user(u, f"{where}.users[{i}]") for i, u in enumerate(doc.get("users") or [])),
        attributes={str(k): attr_value(v) for k, v in (doc.get("attributes") or {}).items()},
        project_attributes={
            str(k): attr_value(v) for k, v in (doc.get("project_attributes") or {}).items()
        },
        user_data=doc.get("user_data"),
        vendor_data=None if doc.get("vendor_data") is None else attr_value(doc["vendor_data"]),
        scripts=Scripts(
            startup=scripts.get("startup"),
            startup_url=scripts.get("startup_url"),
            shutdown=scripts.get("shutdown"),
            shutdown_url=scripts.get("shutdown_url"),
        ),
        interfaces=tuple(_interface(x, i) for i, x in enumerate(ifaces)),
        nameservers=_strs(dns.get("nameservers"), f"{where}.network.dns.nameservers"),
        search=_strs(dns.get("search"), f"{where}.network.dns.search"),
        drift_token=str((doc.get("clock") or {}).get("drift_token", "0")),
        tags=_strs(doc.get("tags"), f"{where}.tags"),
        overrides=dict(doc.get("overrides") or {}),
        match_client=match.get("client"),
        match_port=None if match.get("port") is None else int(match["port"]),
    )


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; nested mappings merge; None deletes a key."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
