"""GCE's metadata server over HTTP: one snapshot, a long-poll watch, guest attributes.

GCE-specific guards (the shared ones are in http.py): the Metadata-Flavor
header and a JSON content type are checked before any parse, and a pending
long poll never holds shutdown (the read timeout is the poll's own timeout
plus a margin, and the daemon never waits on this thread to stop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.polling import content_tag, follow
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import PLATFORM, dmi_says_gce, parse_gce
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

DEFAULT_URL = "http://169.254.169.254/computeMetadata/v1/"
FLAVOR = {"Metadata-Flavor": "Google"}
# Guest-attribute writes run inside a reconcile pass, which SIGTERM waits for: a server that
# swallows a PUT may hold the pass only briefly. A lost write is repeated by a later pass.
WRITE_TIMEOUT = (1.0, 1.0)
# Without an ETag the server cannot hold a poll: ask no more often than this.
UNTAGGED_PAUSE = 5.0


class GceMetadata:
    platform = PLATFORM

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        poll_timeout_sec: int = 60,
        backoff_max: float = 30.0,
        parse: Callable[[object], InstanceMetadata] = parse_gce,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.poll_timeout_sec = poll_timeout_sec
        self.backoff_max = backoff_max
        self._parse = parse
        self._stop = threading.Event()
        self._session = http.new_session(FLAVOR)
        # Writes get their own connection: the watch thread owns the other one.
        self._write_session = http.new_session(FLAVOR)
        self._write_lock = threading.Lock()
        self._untagged = False

    def _fetch(self, params: dict[str, str], read_timeout: float) -> Snapshot:
        response = http.request(
            self._session, "GET", self.base_url, params=params, timeout=(self.connect_timeout, read_timeout)
        )
        if response.status_code != 200:
            raise MetadataUnavailable(f"metadata server answered HTTP {response.status_code}")
        if response.headers.get("Metadata-Flavor") != "Google":
            raise MetadataUnavailable("response lacks Metadata-Flavor: Google (not the metadata server)")
        content_type = response.headers.get("Content-Type", "")
        if "json" not in content_type:
            raise MetadataUnavailable(f"expected JSON, got Content-Type {content_type or 'none'!r}")
        metadata = http.parse_or_unavailable(self._parse, http.json_body(response))
        etag = response.headers.get("ETag", "")
        self._untagged = not etag
        return Snapshot(metadata, etag or content_tag(response.content))

    def get(self) -> Snapshot:
        return self._fetch({"recursive": "true", "alt": "json"}, self.read_timeout)

    def _poll(self, etag: str) -> Snapshot:
        if self._untagged:
            self._stop.wait(UNTAGGED_PAUSE)
        params = {
            "recursive": "true",
            "alt": "json",
            "wait_for_change": "true",
            "last_etag": etag or "NONE",
            "timeout_sec": str(self.poll_timeout_sec),
        }
        return self._fetch(params, self.poll_timeout_sec + 10)

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        return follow(self._poll, last_etag, self._stop, backoff_max=self.backoff_max, pause=0.0)

    def put_guest_attribute(self, key: str, value: str) -> None:
        url = self.base_url + "instance/guest-attributes/" + key
        with self._write_lock:
            response = http.request(
                self._write_session, "PUT", url, data=value.encode(), timeout=WRITE_TIMEOUT
            )
        if response.status_code != 200:
            raise MetadataUnavailable(f"guest attribute write answered HTTP {response.status_code}")

    def close(self) -> None:
        self._stop.set()
        for session in (self._session, self._write_session):
            session.close()


def probe(options: ProviderOptions, timeout: float) -> str:
    """Detection's network probe: one GET of the base URL with the flavor header.

    Success iff HTTP 200 and the answer carries Metadata-Flavor: Google (a captive
    portal or another cloud's server answers without it). Otherwise raises
    MetadataUnavailable saying why. Bounded by `timeout` per phase (connect,
    read); the body is never read, no redirect is followed, no proxy is used.
    """
    url = options.url or DEFAULT_URL
    limit = max(timeout, 0.01)
    with http.new_session(FLAVOR) as session:
        response = http.request(session, "GET", url, timeout=(limit, limit), stream=True)
        with response:
            if response.status_code != 200:
                raise MetadataUnavailable(f"{url} answered HTTP {response.status_code}")
            if response.headers.get("Metadata-Flavor") != "Google":
                raise MetadataUnavailable(f"{url} answered without Metadata-Flavor: Google")
    return f"metadata server at {url} answered with Metadata-Flavor: Google"


def _open(options: ProviderOptions) -> GceMetadata:
    return GceMetadata(options.url or DEFAULT_URL, backoff_max=options.backoff_max)


PROVIDER = ProviderSpec(
    name=PLATFORM,
    default_url=DEFAULT_URL,
    open=_open,
    dmi=dmi_says_gce,
    probe=probe,
    guest_attributes=True,
)
