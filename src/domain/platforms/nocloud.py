"""NoCloud's seed files into the neutral model, plus NoCloud's own extras.

A NoCloud seed (cloud-init's local seed: a directory, a volume labelled
`cidata`, or `ds=nocloud;s=URL` on the kernel command line) holds:

    meta-data        YAML mapping: instance-id (required), local-hostname,
                     public-keys (a string of lines, a list of lines, or a
                     mapping name -> line or list of lines, as cloud-init
                     accepts; the names are labels, every key is for the
                     image's default user)
    user-data        bytes, the user's (#cloud-config, a script, MIME...)
    vendor-data      bytes, the image or platform vendor's, kept apart
    network-config   YAML (netplan-like v1/v2), kept as is in NoCloudExtras

The transport loads the YAML (this layer may not import PyYAML) and hands
over plain Python values. A file it could read but not use (too large, not
YAML) arrives as `Unreadable(reason)`: meta-data then refuses the whole seed,
any other file holds the subsystems that read it.

YAML can describe far more than it spells: aliases make a few hundred bytes
stand for billions of values, and anchors can even point at themselves. Every
structure kept is measured first, counting each alias where it is used, and
refused past MAX_DEPTH levels or MAX_VALUES values (MAX_TEXT characters), so
no later reader can be made to walk or write it out without end.

The kernel command line's `ds=nocloud[-net];s=URL;i=ID;h=NAME` is parsed here
too (`cmdline_seed`): pure text in, values out.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.metadata import InstanceMetadata, Rejection, SshKey
from guestagent.domain.ssh_keys import dedupe, parse_default_user_keys

PLATFORM = "nocloud"

# The bounds on what a seed's YAML may stand for once aliases are expanded.
# Real meta-data nests two or three levels, network-config under ten.
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_TEXT = 8 * 1024 * 1024
# cloud-init images take a key or two; far more is not metadata we can act on safely.
MAX_KEYS = 100

_INSTANCE_ID = re.compile(r"[\x21-\x7e]{1,255}")
_NOT_ONE_WORD = re.compile(r"[\x00-\x20\x7f]")
# The subsystems that would act on network-config (static addressing, gateways, DNS).
_NETWORK = ("nics", "routes")
# The subsystem that runs what user-data and vendor-data ask for.
_DATA = "scripts"


class NoCloudError(ValueError):
    """The seed cannot describe an instance (meta-data unusable, no instance-id)."""


@attrs.frozen
class Unreadable:
    """A seed file the transport found but could not load; `reason` is safe to log."""

    reason: str


@attrs.frozen
class CmdlineSeed:
    """What `ds=nocloud...` on the kernel command line says.

    `seedfrom` is the `s=`/`seedfrom=` value (a URL or a local path), None
    when absent; `instance_id` and `hostname` (`i=`, `h=`) override the
    seed's meta-data, as cloud-init lets them.
    """

    ds: str  # the spelling found: "nocloud" or "nocloud-net"
    seedfrom: str | None = None
    instance_id: str | None = None
    hostname: str | None = None

    def overrides(self) -> dict[str, str]:
        """The meta-data values the command line sets, under their meta-data names."""
        out: dict[str, str] = {}
        if self.instance_id is not None:
            out["instance-id"] = self.instance_id
        if self.hostname is not None:
            out["local-hostname"] = self.hostname
        return out


def _frozen_mapping(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@attrs.frozen
class NoCloudExtras:
    """What only NoCloud has.

    `meta_data` is the whole meta-data mapping (string keys only), for the
    fields the neutral model has no place for (`network-interfaces`,
    `seedfrom`, vendors' own keys). `network_config` is the loaded YAML,
    frozen (mappings read-only, lists as tuples); None when the seed has
    none or it was refused (see the snapshot's rejections). `source` says
    where the seed was read, for logs.
    """

    source: str = ""
    # Not in repr: it holds the key lines, and logs never carry key material.
    meta_data: Mapping[str, object] = attrs.field(factory=dict, converter=_frozen_mapping, repr=False)
    network_config: object = None


NO_EXTRAS = NoCloudExtras()


def nocloud(metadata: InstanceMetadata) -> NoCloudExtras:
    """NoCloud's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, NoCloudExtras) else NO_EXTRAS


def _kind(value: object) -> str:
    """A YAML-ish name for a value's type, for reasons ('a YAML list')."""
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        bytes: "binary",
        list: "list",
        tuple: "list",
        dict: "mapping",
        set: "set",
        frozenset: "set",
        type(None): "null",
        datetime.date: "date",
        datetime.datetime: "timestamp",
    }
    for cls, name in names.items():
        if type(value) is cls:
            return f"a YAML {name}"
    if isinstance(value, Mapping):
        return "a YAML mapping"
    return f"a {type(value).__name__}"


def shape_problem(value: object, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> str | None:
    """Why `value` is too big to keep (a reason), or None when it is within bounds.

    Walks without recursion, counting every use of a shared (aliased) value,
    so a billion-laughs document and a self-referencing anchor are both
    refused in at most `max_values` steps.
    """
    values = text = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        values += 1
        if values > max_values:
            return f"holds more than {max_values} values once its aliases are expanded"
        if depth > max_depth:
            return f"is nested deeper than {max_depth} levels"
        if isinstance(item, str | bytes):
            text += len(item)
            if text > MAX_TEXT:
                return f"holds more than {MAX_TEXT} characters once its aliases are expanded"
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                stack.append((key, depth + 1))
                stack.append((sub, depth + 1))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((sub, depth + 1) for sub in item)
    return None


def _freeze(value: object) -> object:
    """A read-only copy: mappings behind MappingProxyType, lists as tuples, sets frozen.
    Only called on values `shape_problem` accepted (bounded, no cycles)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(sub) for key, sub in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(sub) for sub in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def _held(where: str, reason: str, subsystems: tuple[str, ...]) -> list[Rejection]:
    return [Rejection(where, reason, concerns=s, holds=True) for s in subsystems]


def _meta_data(meta_data: object) -> Mapping[str, object]:
    if isinstance(meta_data, Unreadable):
        raise NoCloudError(f"meta-data refused: {meta_data.reason}")
    if meta_data is None:
        raise NoCloudError("meta-data is empty (it needs at least instance-id)")
    if not isinstance(meta_data, Mapping):
        raise NoCloudError(f"meta-data is {_kind(meta_data)}, not a mapping")
    problem = shape_problem(meta_data)
    if problem:
        raise NoCloudError(f"meta-data {problem}")
    return {key: _freeze(value) for key, value in meta_data.items() if isinstance(key, str)}


def _instance_id(meta: Mapping[str, object]) -> str:
    raw = meta.get("instance-id")
    if raw is None:
        raise NoCloudError("meta-data has no instance-id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise NoCloudError(f"meta-data instance-id is {_kind(raw)}, not a string")
    value = str(raw).strip()
    if not _INSTANCE_ID.fullmatch(value):
        raise NoCloudError("meta-data instance-id is not one printable word of 1 to 255 characters")
    return value


def _hostname(meta: Mapping[str, object], rejections: list[Rejection]) -> str:
    raw = meta.get("local-hostname")
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        rejections += _held(
            "meta-data local-hostname", f"is {_kind(raw)}, not a string; hostname kept", ("hostname",)
        )
        return ""
    value = str(raw).strip()
    if _NOT_ONE_WORD.search(value):
        rejections += _held("meta-data local-hostname", "is not one word; hostname kept", ("hostname",))
        return ""
    return value


def _lines_of(value: object, where: str, rejections: list[Rejection]) -> list[tuple[str, list[str]]]:
    """(where, lines) for a string or a list of strings; anything else holds accounts."""
    if isinstance(value, str):
        return [(where, value.splitlines())]
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        out: list[tuple[str, list[str]]] = []
        for index, item in enumerate(items):
            place = f"{where}[{index}]"
            if isinstance(item, str):
                out.append((place, item.splitlines()))
            elif item is not None:
                # Often a key line whose comment holds ": " and so became a YAML mapping.
                # One unreadable entry: the list cannot be trusted to be complete.
                rejections += _held(
                    place, f"is {_kind(item)}, not a key line; keys kept as they are", ("accounts",)
                )
        return out
    rejections += _held(
        where, f"is {_kind(value)}, not a key line or a list of them; keys kept as they are", ("accounts",)
    )
    return []


def _ssh_keys(meta: Mapping[str, object], rejections: list[Rejection]) -> list[SshKey]:
    raw = meta.get("public-keys")
    where = "meta-data public-keys"
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        # cloud-init reads each value (a line or a list of lines) and ignores the names.
        # The names are not shown: a mis-indented key could be one.
        groups: list[tuple[str, list[str]]] = []
        for number, value in enumerate(raw.values(), start=1):
            if value is not None:
                groups += _lines_of(value, f"{where} entry {number}", rejections)
    elif isinstance(raw, str | list | tuple | set | frozenset):
        groups = _lines_of(raw, where, rejections)
    else:
        rejections += _held(where, f"is {_kind(raw)}, not keys; keys kept as they are", ("accounts",))
        return []
    keys: list[SshKey] = []
    for place, lines in groups:
        found, refused = parse_default_user_keys(lines, place)
        keys += found
        rejections += refused
    if len(keys) > MAX_KEYS:
        rejections += _held(where, f"holds more than {MAX_KEYS} keys; keys kept as they are", ("accounts",))
        keys = keys[:MAX_KEYS]
    return keys


def _data(value: object, name: str, rejections: list[Rejection]) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, Unreadable):
        rejections += _held(name, f"{value.reason}; kept as it was", (_DATA,))
        return None
    raise NoCloudError(f"{name} is {_kind(value)}, not bytes")


def _network_config(value: object, rejections: list[Rejection]) -> object:
    if value is None:
        return None
    if isinstance(value, Unreadable):
        rejections += _held("network-config", f"{value.reason}; network kept as is", _NETWORK)
        return None
    problem = shape_problem(value)
    if problem:
        rejections += _held("network-config", f"{problem}; network kept as is", _NETWORK)
        return None
    return _freeze(value)


def parse_nocloud(
    meta_data: object,
    *,
    user_data: object = None,
    vendor_data: object = None,
    network_config: object = None,
    source: str = "",
) -> InstanceMetadata:
    """Parse a NoCloud seed as the transport loaded it.

    `meta_data` is the loaded YAML of `meta-data` (or Unreadable);
    `user_data` and `vendor_data` are bytes, None when absent, or
    Unreadable; `network_config` is the loaded YAML, None when absent, or
    Unreadable. Raises NoCloudError (a ValueError) when the seed cannot
    describe an instance, and nothing else; smaller problems become
    Rejections and the rest of the seed is still used.
    """
    meta = _meta_data(meta_data)
    instance_id = _instance_id(meta)
    rejections: list[Rejection] = []
    hostname = _hostname(meta, rejections)
    keys = _ssh_keys(meta, rejections)
    user = _data(user_data, "user-data", rejections)
    vendor = _data(vendor_data, "vendor-data", rejections)
    network = _network_config(network_config, rejections)
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        user_data=user,
        vendor_data=vendor,
        extras=NoCloudExtras(source=source, meta_data=meta, network_config=network),
    )


_DS = re.compile(r"ds=(nocloud(?:-net)?)(?:;(.*))?", re.IGNORECASE | re.DOTALL)
_SHORT = {"s": "seedfrom", "i": "instance-id", "h": "local-hostname"}


def cmdline_seed(cmdline: str) -> CmdlineSeed | None:
    """`ds=nocloud[-net][;key=value...]` from a kernel command line, or None.

    Keys as cloud-init reads them: `s`/`seedfrom`, `i`/`instance-id`,
    `h`/`local-hostname`; others are ignored. The last `ds=` word wins, as
    in cloud-init. A word may be quoted (`"ds=nocloud;s=..."`).
    """
    found: CmdlineSeed | None = None
    for word in cmdline.split():
        word = word.strip("\"'")
        match = _DS.fullmatch(word)
        if not match:
            continue
        values: dict[str, str] = {}
        for item in (match.group(2) or "").split(";"):
            key, sep, value = item.partition("=")
            if sep:
                values[_SHORT.get(key, key)] = value
        found = CmdlineSeed(
            ds=match.group(1).lower(),
            seedfrom=values.get("seedfrom") or None,
            instance_id=values.get("instance-id") or None,
            hostname=values.get("local-hostname") or None,
        )
    return found
