"""OpenStack: a config drive first, the metadata service second.

Where the files of `openstack/latest/` are read (each `get()` looks again):

1. a vfat or ISO9660 volume labelled `config-2` (any case), found and read
   without mounting (adapters/media.py: udev's by-label links, then every disk
   and partition in sysfs, the label checked on the superblock), under the
   provider options' root;
2. the metadata service, `http://169.254.169.254/openstack/latest/`;
   `--metadata-url` (the provider options' `url`) replaces the base: a root
   (`http://HOST:PORT/`), `.../openstack/` or a version directory
   (`.../openstack/latest/`, which is what the simulator's `sim.url("openstack")`
   gives) are all understood.

Guards: every file at most 1 MiB (a larger one is refused, not cut:
meta_data.json refuses the snapshot, any other file holds the subsystems
that read it, see domain/platforms/openstack.py); JSON is decoded by the
parser through domain.jsondoc (depth bounded). Over HTTP: no redirects, no
proxies from the environment, no compressed bodies, a total deadline per
body as well as the per-read timeout; a 404 for anything but meta_data.json
means the file is absent (older Nova has no vendor_data2.json); a JSON file
answered with an HTML page (a captive portal, a proxy's error) refuses the
snapshot like a server that is down. A snapshot is all or nothing: any file
that fails, is cut short (a 404 included) or is refused makes the whole
snapshot unavailable, never one assembled from the other files.

Following: a config drive does not change while the system runs, so
`watch()` yields at most the one snapshot the caller has not seen and then
waits for `close()`. The metadata service has no long poll: it is read again
every `[OpenStack] poll_interval` seconds and a snapshot is yielded when the
files (a digest of them) changed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import attrs
import requests

from guestagent.adapters import media
from guestagent.adapters.media import labelled_volume, read_files
from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.http import fetch_file, shown_url
from guestagent.adapters.platforms.polling import files_tag, watch_snapshots
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import OpenStack
from guestagent.domain.platforms.common import Unreadable
from guestagent.domain.platforms.openstack import (
    FILES,
    META_DATA,
    PLATFORM,
    OpenStackFiles,
    dmi_says_openstack,
    parse_openstack,
)
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

LABELS = ("config-2",)  # compared case-insensitively: CONFIG-2 too
VERSION_DIR = "openstack/latest/"
DEFAULT_URL = "http://169.254.169.254/"
FILE_MAX = 1024 * 1024
REQUEST_TIMEOUT = (2.0, 10.0)
PROBE_TIMEOUT = (1.0, 2.0)
PROBE_MAX = 4096
_VERSION_URL = re.compile(r"(.*/)openstack/([^/]+)/")
_VERSION_LINE = re.compile(r"latest|\d{4}-\d{2}-\d{2}")


def service_urls(url: str) -> tuple[str, str]:
    """(service root, version directory) for a --metadata-url: `http://H/` gives
    (`http://H/`, `http://H/openstack/latest/`); `.../openstack/` and
    `.../openstack/VERSION/` are understood too."""
    base = url.strip()
    if not base.endswith("/"):
        base += "/"
    match = _VERSION_URL.fullmatch(base)
    if match:
        return match.group(1), base
    if base.endswith("/openstack/"):
        root = base[: -len("openstack/")]
        return root, root + VERSION_DIR
    return base, base + VERSION_DIR


@attrs.frozen
class Location:
    """Where the files are: a config drive (`volume`) or the service (`url`, its version directory)."""

    shown: str
    volume: media.Volume | None = None
    url: str = ""


class OpenStackMetadata:
    platform = PLATFORM

    def __init__(
        self,
        *,
        root: str = "/",
        url: str | None = None,
        poll_interval: float = OpenStack().poll_interval,
        backoff_max: float = 30.0,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        file_max: int = FILE_MAX,
    ) -> None:
        self.root = root
        self.service_root, self.service_url = service_urls(url or DEFAULT_URL)
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.file_max = file_max
        self._stop = threading.Event()
        # Identity only: requests would otherwise decode a gzip body of any size.
        self._session = http.new_session({"Accept-Encoding": "identity"})
        self._said_source: str | None = None

    # -------------------------------------------------------------- locating

    def locate(self) -> Location:
        """The config drive when there is one, else the metadata service."""
        volume = labelled_volume(self.root, LABELS)
        if volume is not None:
            return Location(f"config drive ({volume.describe(self.root)})", volume=volume)
        return Location(f"metadata service at {shown_url(self.service_url)}", url=self.service_url)

    # -------------------------------------------------------------- reading

    def _files(self, where: Location) -> dict[str, bytes | Unreadable | None]:
        if where.volume is not None:
            volume = where.volume
            try:
                with media.open_volume(volume) as reader:
                    return read_files(FILES, lambda name: reader.read(VERSION_DIR + name, self.file_max))
            except media.MediaError as exc:
                raise MetadataUnavailable(f"OpenStack {where.shown}: {exc}") from exc
        return read_files(FILES, lambda name: self._fetch(where.url, name))

    def _fetch(self, base: str, name: str) -> bytes | None:
        what = f"OpenStack metadata {name}"
        fetched = fetch_file(
            self._session, base + name, what, name, timeout=self.timeout, limit=self.file_max
        )
        if fetched is None:
            if name == META_DATA:
                raise MetadataUnavailable(f"{what} answered HTTP 404")
            return None
        body, content_type = fetched
        html = "html" in content_type.lower()
        if name.endswith(".json") and body.lstrip().startswith(b"<"):
            html = True
        if html:
            raise MetadataUnavailable(
                f"{what} answered an HTML page "
                f"(Content-Type {content_type or 'none'!r}), not the metadata service"
            )
        return body

    def read(self, where: Location) -> Snapshot:
        """One snapshot from `where`; MetadataUnavailable with a reason when it cannot be used."""
        files = self._files(where)
        if files[META_DATA] is None:
            raise MetadataUnavailable(f"OpenStack {where.shown} has no {VERSION_DIR}{META_DATA}")
        fetched = OpenStackFiles(
            meta_data=files[META_DATA],
            network_data=files["network_data.json"],
            user_data=files["user_data"],
            vendor_data=files["vendor_data.json"],
            vendor_data2=files["vendor_data2.json"],
            source=where.shown,
        )
        metadata = http.parse_or_unavailable(parse_openstack, fetched, f"OpenStack {where.shown}")
        return Snapshot(metadata, files_tag(files))

    # -------------------------------------------------------------- the port

    def get(self) -> Snapshot:
        where = self.locate()
        if where.shown != self._said_source:  # where the metadata comes from, said once
            log.info("OpenStack: reading the %s", where.shown)
            self._said_source = where.shown
        return self.read(where)

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        return watch_snapshots(
            self._read_located,
            last_etag,
            self._stop,
            backoff_max=self.backoff_max,
            logger=log,
            poll_interval=self.poll_interval,
        )

    def _read_located(self) -> tuple[Snapshot, Callable[[str], Snapshot] | None]:
        """A snapshot from wherever the files are now; the metadata service is polled from then on."""
        where = self.locate()
        snapshot = self.read(where)
        if where.volume is not None:
            return snapshot, None  # a config drive does not change
        return snapshot, lambda _etag: self.read(where)

    def close(self) -> None:
        self._stop.set()
        self._session.close()


def _open(options: ProviderOptions) -> OpenStackMetadata:
    return OpenStackMetadata(
        root=options.root,
        url=options.url,
        poll_interval=options.config.OpenStack.poll_interval,
        backoff_max=options.backoff_max,
    )


def _local(options: ProviderOptions) -> str | None:
    """A config drive on this machine."""
    volume = labelled_volume(options.root, LABELS)
    return None if volume is None else f"config drive {volume.describe(options.root)} found"


def _probe(options: ProviderOptions, timeout: float) -> str | None:
    """Is an OpenStack metadata service there? One GET of `/openstack` (the version list)
    within `timeout` seconds."""
    root, _ = service_urls(options.url or DEFAULT_URL)
    connect = min(PROBE_TIMEOUT[0], max(0.05, timeout / 2))
    read = min(PROBE_TIMEOUT[1], max(0.05, timeout - connect))
    session = http.new_session({"Accept-Encoding": "identity"})
    try:
        response = http.request(session, "GET", root + "openstack", timeout=(connect, read), stream=True)
        with response:
            if response.status_code != 200:
                return None
            if "html" in response.headers.get("Content-Type", "").lower():
                return None
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > PROBE_MAX:
                return None
            body = b""
            deadline = time.monotonic() + max(0.1, timeout)
            for chunk in response.iter_content(1024):
                body += chunk
                if len(body) > PROBE_MAX or time.monotonic() > deadline:
                    return None
    except (MetadataUnavailable, requests.RequestException):
        return None
    finally:
        session.close()
    lines = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
    if lines and all(_VERSION_LINE.fullmatch(line) for line in lines):
        return f"OpenStack metadata service answered at {urlsplit(root).netloc}"
    return None


PROVIDER = ProviderSpec(
    name=PLATFORM,
    default_url=DEFAULT_URL,
    open=_open,
    dmi=dmi_says_openstack,
    local=_local,
    probe=_probe,
)
