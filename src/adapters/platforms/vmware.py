"""VMware guestinfo, read through open-vm-tools' `vmware-rpctool "info-get guestinfo.KEY"`.

The RPC channel is the hypervisor's backdoor, which only VMware's tools
speak; this transport runs them through the CommandRunner port (argv lists,
a timeout on each call): `vmware-rpctool` when PATH has it, else `vmtoolsd
--cmd`. Neither installed: no metadata, said once per reason.

For each of guestinfo.metadata, .userdata and .vendordata the value is read,
then (when there is one) its `.encoding`. A key the host does not have is
answered with a non-zero exit and "No value found" on stderr: absent, not an
error. Any other failure (the tool crashing, timing out, not on VMware at
all) makes the whole read unavailable, retried with backoff like a server
that is down. A value larger than VALUE_MAX is refused.

guestinfo can change while the guest runs (vSphere lets an operator set keys
live), so `watch` reads again every `[VMware] poll_interval` seconds and
yields only when something changed (0: read once and wait for close()).

QEMU cannot emulate the backdoor: tests put a fake `vmware-rpctool` on PATH.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.cpio import read_product_uuid
from guestagent.adapters.platforms.nocloud import load_yaml
from guestagent.adapters.platforms.polling import content_tag, follow, watch_snapshots
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.platforms.common import Unreadable
from guestagent.domain.platforms.vmware import (
    KEYS,
    PLATFORM,
    VALUE_MAX,
    GuestinfoDecodeError,
    decode_guestinfo,
    dmi_says_vmware,
    is_empty,
    parse_vmware,
)
from guestagent.ports.commands import CommandRunner
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

RPCTOOL = "vmware-rpctool"
VMTOOLSD = "vmtoolsd"
NO_VALUE = "No value found"
CALL_TIMEOUT = 10.0
DEFAULT_POLL = 60.0


def _load_metadata(data: bytes) -> object:
    """guestinfo.metadata: JSON first (depth-checked), then YAML, as cloud-init reads it."""
    try:
        return loads(data)
    except JsonRefused:
        pass
    try:
        return load_yaml(data, "guestinfo.metadata")
    except MetadataUnavailable as exc:  # PyYAML missing: say so for this platform
        raise MetadataUnavailable(
            "guestinfo.metadata is not JSON, and reading YAML needs PyYAML (Debian: python3-yaml)"
        ) from exc


class VmwareMetadata:
    platform = PLATFORM

    def __init__(
        self,
        *,
        runner: CommandRunner | None = None,
        root: str = "/",
        poll_interval: float = DEFAULT_POLL,
        backoff_max: float = 30.0,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.runner: CommandRunner = runner if runner is not None else SubprocessRunner()
        self.root = root
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._stop = threading.Event()

    def tool(self) -> list[str]:
        """The argv prefix that runs one RPC: vmware-rpctool, else vmtoolsd --cmd."""
        path = self.runner.which(RPCTOOL)
        if path is not None:
            return [path]
        path = self.runner.which(VMTOOLSD)
        if path is not None:
            return [path, "--cmd"]
        raise MetadataUnavailable(f"neither {RPCTOOL} nor {VMTOOLSD} is installed (open-vm-tools)")

    def info_get(self, tool: list[str], key: str) -> str | None:
        """guestinfo.KEY's value; None when the host has none (or it is empty, or `---`)."""
        name = f"guestinfo.{key}"
        try:
            result = self.runner.run([*tool, f"info-get {name}"], timeout=self.timeout)
        except Exception as exc:  # e.g. output that is not text: the read failed, the watch lives
            raise MetadataUnavailable(f"{name}: {tool[0]} failed ({exc.__class__.__name__})") from exc
        if result.returncode != 0:
            if NO_VALUE in result.stderr or NO_VALUE in result.stdout:
                return None
            detail = result.stderr.strip().splitlines()[:1]
            raise MetadataUnavailable(
                f"{name}: {tool[0]} exit {result.returncode}{': ' + detail[0][:200] if detail else ''}"
            )
        value = result.stdout
        if len(value) > VALUE_MAX:
            raise MetadataUnavailable(f"{name} is larger than {VALUE_MAX} bytes")
        # The tool ends the value with a newline of its own.
        value = value[:-1] if value.endswith("\n") else value
        return None if is_empty(value) else value

    def read_raw(self) -> dict[str, tuple[str, str | None] | None]:
        """Per key, (value, encoding) as the host gave them, or None when absent."""
        tool = self.tool()
        raw: dict[str, tuple[str, str | None] | None] = {}
        for key in KEYS:
            value = self.info_get(tool, key)
            raw[key] = None if value is None else (value, self.info_get(tool, f"{key}.encoding"))
        return raw

    def get(self) -> Snapshot:
        raw = self.read_raw()
        if all(entry is None for entry in raw.values()):
            raise MetadataUnavailable("guestinfo has no metadata, userdata or vendordata")
        decoded: dict[str, bytes | Unreadable | None] = {}
        for key, entry in raw.items():
            if entry is None:
                decoded[key] = None
                continue
            try:
                decoded[key] = decode_guestinfo(*entry)
            except GuestinfoDecodeError as exc:
                decoded[key] = Unreadable(f"guestinfo.{key} {exc}")
        meta = decoded["metadata"]
        loaded = _load_metadata(meta) if isinstance(meta, bytes) else meta
        uuid = read_product_uuid(self.root)
        metadata = http.parse_or_unavailable(
            lambda document: parse_vmware(
                document, user_data=decoded["userdata"], vendor_data=decoded["vendordata"], product_uuid=uuid
            ),
            loaded,
            "VMware guestinfo",
        )
        parts: list[str] = [uuid or ""]
        for key in KEYS:
            entry = raw[key]
            parts += ["-"] if entry is None else ["+" + entry[0], entry[1] or ""]
        return Snapshot(metadata, content_tag(*parts))

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        if self.poll_interval > 0:
            return follow(
                lambda _etag: self.get(),
                last_etag,
                self._stop,
                backoff_max=self.backoff_max,
                pause=max(0.01, float(self.poll_interval)),
            )
        # 0: read once, then nothing more to say until close().
        return watch_snapshots(
            lambda: (self.get(), None), last_etag, self._stop, backoff_max=self.backoff_max, logger=log
        )

    def close(self) -> None:
        self._stop.set()


def _open(options: ProviderOptions) -> VmwareMetadata:
    return VmwareMetadata(
        root=options.root, poll_interval=options.config.VMware.poll_interval, backoff_max=options.backoff_max
    )


PROVIDER = ProviderSpec(name=PLATFORM, open=_open, dmi=dmi_says_vmware, local=None, probe=None)
