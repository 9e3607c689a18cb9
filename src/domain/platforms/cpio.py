"""The illumos CPIO metadata device's archive into the neutral model, plus its extras.

Some hypervisors offer no metadata service; the illumos metadata agent then
reads a block device whose LBA 0 starts with a cpio archive (no filesystem:
`cpio -o` output written to the raw disk). Its files, all optional:

    nodename         the hostname, on the first line
    authorized_keys  root's keys (the one platform whose keys are root's: the
                     device is the VM owner's, like the hypervisor itself).
                     Each key is SshKey(user="root"); the accounts layer
                     decides whether root may be managed.
    config.toml      overrides; `[network] skip = true` asks the agent not to
                     configure the network by DHCP (CpioExtras.network_skip)
    firstboot.sh     a script run once per instance (it must start with #!),
                     as metadata.scripts["firstboot"]

The archive itself is read by guestagent.domain.cpio (strict: regular files
only, bounded sizes). The device has no instance id of its own: the SMBIOS
UUID the transport read identifies the instance, or, without one (QEMU
gives none unless started with -uuid), a digest of the archive, so the same
device always means the same instance.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping

import attrs

from guestagent.domain.cpio import CpioError, CpioTruncated, parse_archive
from guestagent.domain.metadata import InstanceMetadata, MetadataScript, Rejection, SshKey
from guestagent.domain.platforms import common
from guestagent.domain.ssh_keys import dedupe

PLATFORM = "cpio"
NODENAME = "nodename"
AUTHORIZED_KEYS = "authorized_keys"
CONFIG_TOML = "config.toml"
FIRSTBOOT = "firstboot.sh"
FILES = (NODENAME, AUTHORIZED_KEYS, CONFIG_TOML, FIRSTBOOT)
# The device's keys are root's, as on illumos: said explicitly, never a default.
KEYS_USER = "root"
MAX_KEYS = 100
TOML_MAX = 64 * 1024
SCRIPT_KIND = "firstboot"
SCOPE = "cpio device"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NETWORK = ("nics", "routes")


class CpioMetadataError(ValueError):
    """The device's archive cannot be read (malformed, too large, not cpio); str() is safe to log.

    `truncated` says the bytes ended before the archive did: a transport that read
    only a prefix of the device may read more and parse again."""

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


@attrs.frozen
class CpioExtras:
    """What only the CPIO device has.

    `network_skip` is config.toml's `[network] skip` (False when absent or
    refused); `config` the whole config.toml, read-only; `files` the names
    the archive holds; `identity` says where the instance id came from
    ("smbios" or "archive"); `digest` is the SHA-256 of the archive.
    """

    device: str = ""
    archive_format: str = ""
    network_skip: bool = False
    config: Mapping[str, object] = attrs.field(factory=dict, converter=common.read_only)
    files: tuple[str, ...] = ()
    identity: str = ""
    digest: str = ""


NO_EXTRAS = CpioExtras()


def cpio(metadata: InstanceMetadata) -> CpioExtras:
    """The CPIO device's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, CpioExtras) else NO_EXTRAS


def smbios_uuid(text: str | None) -> str | None:
    """/sys/class/dmi/id/product_uuid as an instance id: lower case, or None when it is
    absent, not a UUID, or all zeros / all ones (firmware that has none)."""
    if text is None:
        return None
    value = text.strip().lower()
    if not _UUID.fullmatch(value):
        return None
    digits = value.replace("-", "")
    if digits in ("0" * 32, "f" * 32):
        return None
    return value


def _text(data: bytes, name: str, subsystems: tuple[str, ...], rejections: list[Rejection]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        rejections += Rejection.holding(name, "is not UTF-8 text; kept as it was", subsystems)
        return None


def _hostname(data: bytes | None, rejections: list[Rejection]) -> str:
    if data is None:
        return ""
    text = _text(data, NODENAME, ("hostname",), rejections)
    if text is None:
        return ""
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if common.NOT_ONE_WORD.search(first):
        rejections += Rejection.holding(NODENAME, "first line is not one word; hostname kept", ("hostname",))
        return ""
    return first


def _ssh_keys(data: bytes | None, rejections: list[Rejection]) -> list[SshKey]:
    if data is None:
        return []
    text = _text(data, AUTHORIZED_KEYS, ("accounts",), rejections)
    if text is None:
        return []
    return common.user_key_file(text, KEYS_USER, AUTHORIZED_KEYS, rejections, max_keys=MAX_KEYS)


def _config(data: bytes | None, rejections: list[Rejection]) -> tuple[Mapping[str, object], bool]:
    """config.toml, read-only, and its `[network] skip`; a file that cannot be read
    holds the network subsystems (skip may have been meant)."""
    if data is None:
        return {}, False
    if len(data) > TOML_MAX:
        rejections += Rejection.holding(
            CONFIG_TOML, f"is larger than {TOML_MAX} bytes; network kept as is", _NETWORK
        )
        return {}, False
    text = _text(data, CONFIG_TOML, _NETWORK, rejections)
    if text is None:
        return {}, False
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        rejections += Rejection.holding(
            CONFIG_TOML, f"is not valid TOML ({exc}); network kept as is", _NETWORK
        )
        return {}, False
    except ValueError:  # a value TOML spells but Python refuses (an integer of 5000 digits)
        rejections += Rejection.holding(
            CONFIG_TOML, "holds a value that cannot be read; network kept as is", _NETWORK
        )
        return {}, False
    except RecursionError:
        rejections += Rejection.holding(
            CONFIG_TOML, "is nested too deeply to read; network kept as is", _NETWORK
        )
        return {}, False
    frozen = {key: common.freeze(value) for key, value in document.items()}
    network = document.get("network", {})
    if not isinstance(network, dict):
        rejections += Rejection.holding(
            f"{CONFIG_TOML} network", "is not a table; network kept as is", _NETWORK
        )
        return frozen, False
    skip = network.get("skip", False)
    if not isinstance(skip, bool):
        rejections += Rejection.holding(
            f"{CONFIG_TOML} network.skip", "is not true or false; network kept as is", _NETWORK
        )
        return frozen, False
    return frozen, skip


def _scripts(data: bytes | None) -> dict[str, tuple[MetadataScript, ...]]:
    if data is None:
        return {}
    # Bytes survive the round trip: the runner encodes the same way.
    text = data.decode("utf-8", "surrogateescape")
    return {SCRIPT_KIND: (MetadataScript(key=FIRSTBOOT, is_url=False, value=text, scope=SCOPE),)}


def parse_cpio(archive: bytes, *, product_uuid: str | None = None, device: str = "") -> InstanceMetadata:
    """Parse the bytes read from the start of a CPIO metadata device.

    `product_uuid` is /sys/class/dmi/id/product_uuid as read (None when
    unreadable). Raises CpioMetadataError (a ValueError) when the archive is
    not one this agent accepts (see guestagent.domain.cpio), and nothing
    else; a file it cannot use becomes a Rejection and the rest still applies.
    """
    try:
        parsed = parse_archive(archive)
    except CpioError as exc:
        raise CpioMetadataError(str(exc), truncated=isinstance(exc, CpioTruncated)) from exc
    files = parsed.files
    rejections: list[Rejection] = []
    hostname = _hostname(files.get(NODENAME), rejections)
    keys = _ssh_keys(files.get(AUTHORIZED_KEYS), rejections)
    config, skip = _config(files.get(CONFIG_TOML), rejections)
    uuid = smbios_uuid(product_uuid)
    instance_id = uuid if uuid is not None else f"cpio-{parsed.digest[:32]}"
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=instance_id,
        hostname=hostname,
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        scripts=_scripts(files.get(FIRSTBOOT)),
        extras=CpioExtras(
            device=device,
            archive_format=parsed.format,
            network_skip=skip,
            config=config,
            files=tuple(sorted(files)),
            identity="smbios" if uuid is not None else "archive",
            digest=parsed.digest,
        ),
    )
