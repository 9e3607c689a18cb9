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
refused past the bounds in common.py (MAX_DEPTH levels, MAX_VALUES values,
MAX_TEXT characters), so no later reader can be made to walk or write it out
without end. What NoCloud's meta-data shares with VMware's guestinfo.metadata
(the mapping, instance-id, local-hostname, public-keys) is in common.py too.

The kernel command line's `ds=nocloud[-net];s=URL;i=ID;h=NAME` is parsed here
too (`cmdline_seed`): pure text in, values out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from guestagent.domain.metadata import InstanceMetadata, Rejection, SshKey
from guestagent.domain.platforms import common
from guestagent.domain.platforms.common import Unreadable, shape_problem
from guestagent.domain.ssh_keys import dedupe

PLATFORM = "nocloud"

# cloud-init images take a key or two; far more is not metadata we can act on safely.
MAX_KEYS = 100

# The subsystems that would act on network-config (static addressing, gateways, DNS).
_NETWORK = ("nics", "routes")
# The subsystem that runs what user-data and vendor-data ask for.
_DATA = "scripts"


class NoCloudError(ValueError):
    """The seed cannot describe an instance (meta-data unusable, no instance-id)."""


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
    meta_data: Mapping[str, object] = attrs.field(factory=dict, converter=common.read_only, repr=False)
    network_config: object = None


NO_EXTRAS = NoCloudExtras()


def nocloud(metadata: InstanceMetadata) -> NoCloudExtras:
    """NoCloud's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, NoCloudExtras) else NO_EXTRAS


def _meta_data(meta_data: object) -> Mapping[str, object]:
    if meta_data is None:
        raise NoCloudError("meta-data is empty (it needs at least instance-id)")
    return common.meta_mapping(meta_data, "meta-data", NoCloudError)


def _instance_id(meta: Mapping[str, object]) -> str:
    raw = meta.get("instance-id")
    if raw is None:
        raise NoCloudError("meta-data has no instance-id")
    return common.instance_id(raw, "meta-data", NoCloudError)


def _ssh_keys(meta: Mapping[str, object], rejections: list[Rejection]) -> list[SshKey]:
    raw = meta.get("public-keys")
    if raw is None:
        return []
    return common.public_keys(raw, "meta-data public-keys", rejections, max_keys=MAX_KEYS)


def _data(value: object, name: str, rejections: list[Rejection]) -> bytes | None:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return common.data_bytes(value, name, (_DATA,), NoCloudError, rejections)


def _network_config(value: object, rejections: list[Rejection]) -> object:
    if value is None:
        return None
    if isinstance(value, Unreadable):
        rejections += Rejection.holding("network-config", f"{value.reason}; network kept as is", _NETWORK)
        return None
    problem = shape_problem(value)
    if problem:
        rejections += Rejection.holding("network-config", f"{problem}; network kept as is", _NETWORK)
        return None
    return common.freeze(value)


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
    hostname = common.local_hostname(meta, "meta-data", rejections)
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
