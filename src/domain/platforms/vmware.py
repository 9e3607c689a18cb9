"""VMware guestinfo into the neutral model, plus VMware's own extras.

On VMware the hypervisor hands the guest key/value pairs ("guestinfo") over
its backdoor RPC channel; from Linux, open-vm-tools' `vmware-rpctool
"info-get guestinfo.KEY"` reads one. The keys cloud-init's VMware datasource
reads, and so this agent:

    guestinfo.metadata      JSON or YAML mapping: instance-id, local-hostname,
                            public-keys (a line, a list of lines, or a mapping
                            of labels to either; every key is for the image's
                            default user), network (+ network.encoding)
    guestinfo.userdata      the user's data (bytes)
    guestinfo.vendordata    the vendor's data (bytes), kept apart
    guestinfo.KEY.encoding  "base64" (or "b64"), "gzip+base64" (or "gz+b64"),
                            or absent: the value as it is

A value that is empty or `---` (what cloud-init writes over a key it
redacts) counts as absent. Decoding is here (`decode_guestinfo`: base64 and
gzip are pure stdlib), bounded: a gzip member that would inflate past
`limit` bytes is refused as soon as it does, so a bomb costs no memory.

Without `instance-id` in the metadata, the SMBIOS UUID (product_uuid) is the
instance id, as cloud-init does. The transport loads the metadata's YAML
(this layer may not import PyYAML) and hands over plain Python values; a
value it could read but not use arrives as `Unreadable(reason)`.

DMI: VMware's virtual hardware says sys_vendor "VMware, Inc." and a
product_name starting with "VMware" (`dmi_says_vmware`).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.metadata import InstanceMetadata, Rejection, SshKey
from guestagent.domain.platforms.cpio import smbios_uuid
from guestagent.domain.platforms.nocloud import Unreadable, shape_problem
from guestagent.domain.ssh_keys import dedupe, parse_default_user_keys

PLATFORM = "vmware"
KEYS = ("metadata", "userdata", "vendordata")
# What one guestinfo value may be as read, and once decoded.
VALUE_MAX = 4 * 1024 * 1024
DECODED_MAX = 4 * 1024 * 1024
MAX_KEYS = 100
EMPTY = "---"
KEY_FIELDS = ("public-keys-data", "public_keys_data", "public-keys", "public_keys")

_INSTANCE_ID = re.compile(r"[\x21-\x7e]{1,255}")
_NOT_ONE_WORD = re.compile(r"[\x00-\x20\x7f]")
_BASE64_SPACE = re.compile(r"\s+")
_NETWORK = ("nics", "routes")
# Who runs what user-data asks: the script runners (see the first-boot subsystem).
_DATA = ("scripts", "firstboot")


class VmwareError(ValueError):
    """guestinfo cannot describe an instance (metadata unusable, no instance id)."""


class GuestinfoDecodeError(ValueError):
    """A guestinfo value does not decode as its `.encoding` says; str() is safe to log."""


def _frozen_mapping(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@attrs.frozen
class VmwareExtras:
    """What only VMware has: the whole metadata mapping (read-only; not in repr, it
    holds key lines) and its `network` value kept as given: a mapping (read-only),
    or the decoded bytes of an encoded string. None when absent or refused."""

    metadata: Mapping[str, object] = attrs.field(factory=dict, converter=_frozen_mapping, repr=False)
    network: object = None


NO_EXTRAS = VmwareExtras()


def vmware(metadata: InstanceMetadata) -> VmwareExtras:
    """VMware's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, VmwareExtras) else NO_EXTRAS


def is_empty(value: str | None) -> bool:
    """cloud-init's rule: nothing, only whitespace, or `---` is no value."""
    return value is None or value.rstrip() in ("", EMPTY)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of `data`, refused once the output would pass `limit` bytes."""
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise GuestinfoDecodeError("is not valid gzip") from exc
        if len(out) > limit or inflater.unconsumed_tail:
            raise GuestinfoDecodeError(f"inflates to more than {limit} bytes")
        if not inflater.eof:
            raise GuestinfoDecodeError("is cut short (an incomplete gzip stream)")
        rest = inflater.unused_data
        if not rest.strip(b"\0"):
            return bytes(out)


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(_BASE64_SPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GuestinfoDecodeError("is not valid base64") from exc


def decode_guestinfo(value: str, encoding: str | None, *, limit: int = DECODED_MAX) -> bytes:
    """A guestinfo value's bytes, by its `.encoding` (None or empty: as it is).

    Raises GuestinfoDecodeError for an unknown encoding, bad base64 or gzip,
    or a result larger than `limit` bytes.
    """
    name = (encoding or "").strip().lower()
    if name in ("", EMPTY):
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:  # a lone surrogate no byte stands for
            raise GuestinfoDecodeError("is not text") from exc
    elif name in ("base64", "b64"):
        data = _unbase64(value)
    elif name in ("gzip+base64", "gz+b64"):
        return _gunzip(_unbase64(value), limit)
    else:
        raise GuestinfoDecodeError(f"has an unknown encoding {name[:40]!r} (base64 or gzip+base64)")
    if len(data) > limit:
        raise GuestinfoDecodeError(f"is larger than {limit} bytes")
    return data


def _held(where: str, reason: str, subsystems: tuple[str, ...]) -> list[Rejection]:
    return [Rejection(where, reason, concerns=s, holds=True) for s in subsystems]


def _freeze(value: object) -> object:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(sub) for key, sub in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(sub) for sub in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else f"a {type(value).__name__}"


def _metadata(value: object) -> dict[str, object]:
    if value is None:
        return {}
    if isinstance(value, Unreadable):
        raise VmwareError(f"guestinfo.metadata refused: {value.reason}")
    if not isinstance(value, Mapping):
        raise VmwareError(f"guestinfo.metadata is {_kind(value)}, not a mapping")
    problem = shape_problem(value)
    if problem:
        raise VmwareError(f"guestinfo.metadata {problem}")
    return {key: _freeze(sub) for key, sub in value.items() if isinstance(key, str)}


def _instance_id(meta: Mapping[str, object], product_uuid: str | None) -> str:
    raw = meta.get("instance-id")
    if raw is None:
        uuid = smbios_uuid(product_uuid)
        if uuid is None:
            raise VmwareError("guestinfo.metadata has no instance-id and the SMBIOS UUID is unreadable")
        return uuid
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise VmwareError(f"guestinfo.metadata instance-id is {_kind(raw)}, not a string")
    value = str(raw).strip()
    if not _INSTANCE_ID.fullmatch(value):
        raise VmwareError("guestinfo.metadata instance-id is not one printable word of 1 to 255 characters")
    return value


def _hostname(meta: Mapping[str, object], rejections: list[Rejection]) -> str:
    raw = meta.get("local-hostname")
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        reason = f"is {_kind(raw)}, not a string; hostname kept"
        rejections += _held("guestinfo.metadata local-hostname", reason, ("hostname",))
        return ""
    value = str(raw).strip()
    if _NOT_ONE_WORD.search(value):
        reason = "is not one word; hostname kept"
        rejections += _held("guestinfo.metadata local-hostname", reason, ("hostname",))
        return ""
    return value


def _lines(value: object, where: str, rejections: list[Rejection]) -> list[tuple[str, list[str]]]:
    if isinstance(value, str):
        return [(where, value.splitlines())]
    if isinstance(value, tuple):  # a list, frozen
        out: list[tuple[str, list[str]]] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                out.append((f"{where}[{index}]", item.splitlines()))
            elif item is not None:
                reason = f"is {_kind(item)}, not a key line; keys kept as they are"
                rejections += _held(f"{where}[{index}]", reason, ("accounts",))
        return out
    rejections += _held(where, f"is {_kind(value)}, not key lines; keys kept as they are", ("accounts",))
    return []


def _ssh_keys(meta: Mapping[str, object], rejections: list[Rejection]) -> list[SshKey]:
    field = next((f for f in KEY_FIELDS if f in meta), None)
    if field is None or meta[field] is None:
        return []
    raw, where = meta[field], f"guestinfo.metadata {field}"
    if isinstance(raw, Mapping):
        groups: list[tuple[str, list[str]]] = []
        for number, value in enumerate(raw.values(), start=1):
            if value is not None:
                groups += _lines(value, f"{where} entry {number}", rejections)
    else:
        groups = _lines(raw, where, rejections)
    keys: list[SshKey] = []
    for place, lines in groups:
        found, refused = parse_default_user_keys(lines, place)
        keys += found
        rejections += refused
    if len(keys) > MAX_KEYS:
        rejections += _held(where, f"holds more than {MAX_KEYS} keys; keys kept as they are", ("accounts",))
        keys = keys[:MAX_KEYS]
    return keys


def _network(meta: Mapping[str, object], rejections: list[Rejection]) -> object:
    raw = meta.get("network")
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        return raw  # frozen already
    if not isinstance(raw, str):
        rejections += _held("guestinfo.metadata network", f"is {_kind(raw)}; network kept as is", _NETWORK)
        return None
    encoding = meta.get("network.encoding")
    try:
        return decode_guestinfo(raw, encoding if isinstance(encoding, str) else None)
    except GuestinfoDecodeError as exc:
        rejections += _held("guestinfo.metadata network", f"{exc}; network kept as is", _NETWORK)
        return None


def _data(value: object, name: str, rejections: list[Rejection]) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, Unreadable):
        rejections += _held(name, f"{value.reason}; kept as it was", _DATA)
        return None
    raise VmwareError(f"{name} is {_kind(value)}, not bytes")


def parse_vmware(
    metadata: object,
    *,
    user_data: object = None,
    vendor_data: object = None,
    product_uuid: str | None = None,
) -> InstanceMetadata:
    """Parse guestinfo as the transport read and decoded it.

    `metadata` is the loaded JSON/YAML of guestinfo.metadata (None when
    absent, or Unreadable); `user_data` and `vendor_data` are the decoded
    bytes, None, or Unreadable; `product_uuid` is /sys/class/dmi/id/product_uuid
    as read. Raises VmwareError (a ValueError) when guestinfo cannot describe
    an instance, and nothing else.
    """
    meta = _metadata(metadata)
    instance_id = _instance_id(meta, product_uuid)
    rejections: list[Rejection] = []
    hostname = _hostname(meta, rejections)
    keys = _ssh_keys(meta, rejections)
    network = _network(meta, rejections)
    user = _data(user_data, "guestinfo.userdata", rejections)
    vendor = _data(vendor_data, "guestinfo.vendordata", rejections)
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        user_data=user,
        vendor_data=vendor,
        extras=VmwareExtras(metadata=meta, network=network),
    )


def dmi_says_vmware(dmi: Mapping[str, str]) -> str | None:
    """VMware's virtual hardware: sys_vendor "VMware, Inc.", or a product_name "VMware..."."""
    if dmi.get("sys_vendor", "").strip() == "VMware, Inc.":
        return "DMI sys_vendor is 'VMware, Inc.'"
    product = dmi.get("product_name", "").strip()
    if product.startswith("VMware"):
        return f"DMI product_name {product[:64]!r} names VMware"
    return None
