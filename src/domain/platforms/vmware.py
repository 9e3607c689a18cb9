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

import attrs

from guestagent.domain.metadata import InstanceMetadata, Rejection, SshKey
from guestagent.domain.platforms import common
from guestagent.domain.platforms.cpio import smbios_uuid
from guestagent.domain.ssh_keys import dedupe

PLATFORM = "vmware"
KEYS = ("metadata", "userdata", "vendordata")
# What one guestinfo value may be as read, and once decoded.
VALUE_MAX = 4 * 1024 * 1024
DECODED_MAX = 4 * 1024 * 1024
MAX_KEYS = 100
EMPTY = "---"
KEY_FIELDS = ("public-keys-data", "public_keys_data", "public-keys", "public_keys")

_BASE64_SPACE = re.compile(r"\s+")
_NETWORK = ("nics", "routes")
# Who runs what user-data asks: the script runners (see the first-boot subsystem).
_DATA = ("scripts", "firstboot")


class VmwareError(ValueError):
    """guestinfo cannot describe an instance (metadata unusable, no instance id)."""


class GuestinfoDecodeError(ValueError):
    """A guestinfo value does not decode as its `.encoding` says; str() is safe to log."""


@attrs.frozen
class VmwareExtras:
    """What only VMware has: the whole metadata mapping (read-only; not in repr, it
    holds key lines) and its `network` value kept as given: a mapping (read-only),
    or the decoded bytes of an encoded string. None when absent or refused."""

    metadata: Mapping[str, object] = attrs.field(factory=dict, converter=common.read_only, repr=False)
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


def _metadata(value: object) -> dict[str, object]:
    if value is None:
        return {}
    return common.meta_mapping(value, "guestinfo.metadata", VmwareError)


def _instance_id(meta: Mapping[str, object], product_uuid: str | None) -> str:
    raw = meta.get("instance-id")
    if raw is None:
        uuid = smbios_uuid(product_uuid)
        if uuid is None:
            raise VmwareError("guestinfo.metadata has no instance-id and the SMBIOS UUID is unreadable")
        return uuid
    return common.instance_id(raw, "guestinfo.metadata", VmwareError)


def _ssh_keys(meta: Mapping[str, object], rejections: list[Rejection]) -> list[SshKey]:
    field = next((f for f in KEY_FIELDS if f in meta), None)
    if field is None or meta[field] is None:
        return []
    # sets=False: a YAML set of keys holds accounts here (NoCloud, like cloud-init, reads one).
    where = f"guestinfo.metadata {field}"
    return common.public_keys(meta[field], where, rejections, max_keys=MAX_KEYS, sets=False)


def _network(meta: Mapping[str, object], rejections: list[Rejection]) -> object:
    raw = meta.get("network")
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        return raw  # frozen already
    if not isinstance(raw, str):
        rejections += Rejection.holding(
            "guestinfo.metadata network", f"is {common.yaml_kind(raw)}; network kept as is", _NETWORK
        )
        return None
    encoding = meta.get("network.encoding")
    try:
        return decode_guestinfo(raw, encoding if isinstance(encoding, str) else None)
    except GuestinfoDecodeError as exc:
        rejections += Rejection.holding("guestinfo.metadata network", f"{exc}; network kept as is", _NETWORK)
        return None


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
    hostname = common.local_hostname(meta, "guestinfo.metadata", rejections)
    keys = _ssh_keys(meta, rejections)
    network = _network(meta, rejections)
    user = common.data_bytes(user_data, "guestinfo.userdata", _DATA, VmwareError, rejections)
    vendor = common.data_bytes(vendor_data, "guestinfo.vendordata", _DATA, VmwareError, rejections)
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
