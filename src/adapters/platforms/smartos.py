"""SmartOS / Triton: metadata over the serial port (KVM/bhyve) or a zone's unix socket.

The channel (first found wins):

1. `--metadata-url PATH` (the provider options' `url`): a device or a unix
   socket path, used as given (`unix:PATH` is accepted too);
2. an LX zone's socket, ROOT/native/.zonecontrol/metadata.sock;
3. `[SmartOS] device` under the root (default /dev/ttyS1, COM2).

Each snapshot is one session of adapters/mdata_client.py (locked, drained,
negotiated, version 2 only): every key of domain/platforms/smartos.py's
KEYS_READ is asked for, and the answers go to the pure parser. SmartOS has
no change notification: `watch()` reads again every `[SmartOS]
poll_interval` seconds and yields when the answers (a digest of them)
changed.

Write-back (ports.metadata.GuestAttributes): `put_guest_attribute(key,
value)` PUTs the customer-metadata key `guestagent:<key>`, e.g. the SSH
host keys as `guestagent:hostkeys/ssh-ed25519` and the readiness mark as
`guestagent:guest-agent/sshable` (the names GCE's guest attributes use,
under one prefix so they never collide with a user's keys). The host refuses
writes to `sdc:` keys.

Detection: DMI product name `SmartDC ...` (KVM and bhyve guests), or,
locally, a zone's metadata socket (or the configured device being a unix
socket). A serial device existing is no evidence: Linux creates ttyS0-3 on
every PC whether or not anything listens, and talking to another machine's
COM2 would write our requests to whatever is attached there.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator

from guestagent.adapters.mdata_client import ZONE_SOCKET, MdataClient, MdataFailure
from guestagent.adapters.media import under
from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.polling import content_tag, follow
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import SmartOS
from guestagent.domain.mdata import MdataProtocolError
from guestagent.domain.platforms.smartos import (
    KEYS_READ,
    PLATFORM,
    SmartOsFetched,
    dmi_says_smartos,
    parse_smartos,
)
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

# Every key the agent writes back starts with this (see the module doc).
GUEST_PREFIX = "guestagent:"
# How long a write waits for a session the watcher holds (a healthy one takes ~0.1 s).
WRITE_LOCK_WAIT = 5.0


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def channel_path(options: ProviderOptions) -> str:
    """The device or socket this provider talks to (see the module docstring)."""
    if options.url:
        url = options.url
        for prefix in ("unix://", "unix:", "file://"):
            if url.startswith(prefix):
                url = url[len(prefix) :]
                break
        return url
    zone = under(options.root, ZONE_SOCKET)
    if _is_socket(zone):
        return zone
    return under(options.root, options.config.SmartOS.device)


def fetched_tag(fetched: SmartOsFetched) -> str:
    parts: list[bytes | str] = []
    for key in KEYS_READ:
        if key in fetched.failures:
            parts.append("!" + fetched.failures[key])
        elif key in fetched.values:
            parts.append(b"+" + fetched.values[key])
        else:
            parts.append("-")
    return content_tag(*parts)


class SmartOsMetadata:
    platform = PLATFORM

    def __init__(
        self,
        path: str = SmartOS().device,
        *,
        poll_interval: float = SmartOS().poll_interval,
        backoff_max: float = 30.0,
        client: MdataClient | None = None,
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self._client = client if client is not None else MdataClient(path)
        self._stop = threading.Event()

    def read(self) -> SmartOsFetched:
        """Every key the parser reads, in one session; MetadataUnavailable when it fails."""
        values: dict[str, bytes] = {}
        failures: dict[str, str] = {}
        with self._client.session() as session:
            for key in KEYS_READ:
                try:
                    value = session.get(key)
                except MdataFailure as exc:
                    failures[key] = exc.message or "no message"
                    continue
                if value is not None:
                    values[key] = value
        return SmartOsFetched(values=values, failures=failures)

    def get(self) -> Snapshot:
        fetched = self.read()
        metadata = http.parse_or_unavailable(parse_smartos, fetched, "SmartOS metadata")
        return Snapshot(metadata, fetched_tag(fetched))

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        return follow(
            lambda _etag: self.get(),
            last_etag,
            self._stop,
            backoff_max=self.backoff_max,
            pause=max(0.01, float(self.poll_interval)),
        )

    def put_guest_attribute(self, key: str, value: str) -> None:
        """PUT `guestagent:<key>` = value; MetadataUnavailable when it did not go through."""
        name = GUEST_PREFIX + key
        try:
            # A reconcile pass waits for this: never long behind the watcher's session.
            with self._client.session(lock_wait=WRITE_LOCK_WAIT) as session:
                session.put(name, value.encode("utf-8"))
        except MdataProtocolError as exc:
            raise MetadataUnavailable(f"cannot write {name!r}: {exc}") from exc

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def _open(options: ProviderOptions) -> SmartOsMetadata:
    settings = options.config.SmartOS
    return SmartOsMetadata(
        channel_path(options),
        poll_interval=settings.poll_interval,
        backoff_max=options.backoff_max,
    )


def _local(options: ProviderOptions) -> str | None:
    """A zone's metadata socket, or the configured device being a unix socket."""
    if _is_socket(under(options.root, ZONE_SOCKET)):
        return f"zone metadata socket {ZONE_SOCKET} exists"
    device = options.config.SmartOS.device
    if _is_socket(under(options.root, device)):
        return f"[SmartOS] device {device} is a unix socket (a zone's or a simulator's metadata channel)"
    return None


PROVIDER = ProviderSpec(
    name=PLATFORM,
    open=_open,
    default_url=SmartOS().device,
    dmi=dmi_says_smartos,
    local=_local,
    probe=None,
    guest_attributes=True,
)
