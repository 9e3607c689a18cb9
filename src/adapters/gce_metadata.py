"""GCE's metadata server over HTTP: one snapshot, a long-poll watch, guest attributes.

What this guards against, each seen in the field: proxies from the
environment turning metadata requests into request storms (trust_env off),
captive portals answering 200 with HTML (flavor header and content type are
checked before any parse), truncated bodies (urllib3 enforces
Content-Length; the JSON parse catches the rest), and a pending long poll
holding shutdown (the read timeout is the poll's own timeout plus a margin,
and the daemon never waits on this thread to stop).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator

import requests

from guestagent.domain.gce import MetadataError, parse_gce
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254/computeMetadata/v1/"
FLAVOR = {"Metadata-Flavor": "Google"}
# Guest-attribute writes run inside a reconcile pass, which SIGTERM waits for: a server that
# swallows a PUT may hold the pass only briefly. A lost write is repeated by a later pass.
WRITE_TIMEOUT = (1.0, 1.0)


class Backoff:
    """Capped exponential backoff with jitter, so a fleet does not retry in lockstep."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def reset(self) -> None:
        self.failures = 0


class GceMetadata:
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
        self._session = self._new_session()
        # Writes get their own connection: the watch thread owns the other one.
        self._write_session = self._new_session()
        self._write_lock = threading.Lock()

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxies, no .netrc: metadata is always link-local
        session.headers.update(FLAVOR)
        return session

    def _fetch(self, params: dict[str, str], read_timeout: float) -> tuple[object, str]:
        try:
            response = self._session.get(
                self.base_url,
                params=params,
                timeout=(self.connect_timeout, read_timeout),
                allow_redirects=False,
            )
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise MetadataUnavailable("metadata response was cut short (truncated body)") from exc
        except requests.Timeout as exc:
            raise MetadataUnavailable(f"metadata server did not answer within {read_timeout:g}s") from exc
        except requests.RequestException as exc:
            raise MetadataUnavailable(f"metadata server unreachable: {exc.__class__.__name__}") from exc
        if response.status_code != 200:
            raise MetadataUnavailable(f"metadata server answered HTTP {response.status_code}")
        if response.headers.get("Metadata-Flavor") != "Google":
            raise MetadataUnavailable("response lacks Metadata-Flavor: Google (not the metadata server)")
        content_type = response.headers.get("Content-Type", "")
        if "json" not in content_type:
            raise MetadataUnavailable(f"expected JSON, got Content-Type {content_type or 'none'!r}")
        try:
            document = response.json()
        except ValueError as exc:
            raise MetadataUnavailable("metadata body is not valid JSON (truncated?)") from exc
        return document, response.headers.get("ETag", "")

    def _snapshot(self, document: object, etag: str) -> Snapshot:
        try:
            return Snapshot(self._parse(document), etag)
        except MetadataError as exc:
            raise MetadataUnavailable(f"unusable metadata: {exc}") from exc

    def get(self) -> Snapshot:
        document, etag = self._fetch({"recursive": "true", "alt": "json"}, self.read_timeout)
        return self._snapshot(document, etag)

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        backoff = Backoff(cap=self.backoff_max)
        etag = last_etag or "NONE"
        failing_reason: str | None = None
        while not self._stop.is_set():
            params = {
                "recursive": "true",
                "alt": "json",
                "wait_for_change": "true",
                "last_etag": etag,
                "timeout_sec": str(self.poll_timeout_sec),
            }
            try:
                document, new_etag = self._fetch(params, self.poll_timeout_sec + 10)
                snapshot = self._snapshot(document, new_etag)
            except MetadataUnavailable as exc:
                if self._stop.is_set():
                    return
                delay = backoff.next_delay()
                if str(exc) != failing_reason:  # one line per kind of failure, not one per retry
                    log.warning("%s; retrying with backoff (next in %.1fs)", exc, delay)
                    failing_reason = str(exc)
                self._stop.wait(delay)
                continue
            if failing_reason is not None:
                log.info("metadata server is answering again")
                failing_reason = None
            backoff.reset()
            if not new_etag:
                # Without an ETag the server cannot hold the poll; pace ourselves instead.
                yield snapshot
                self._stop.wait(5.0)
            elif new_etag != etag:
                etag = new_etag
                yield snapshot

    def put_guest_attribute(self, key: str, value: str) -> None:
        url = self.base_url + "instance/guest-attributes/" + key
        try:
            with self._write_lock:
                response = self._write_session.put(url, data=value.encode(), timeout=WRITE_TIMEOUT)
        except requests.RequestException as exc:
            raise MetadataUnavailable(f"guest attribute write failed: {exc.__class__.__name__}") from exc
        if response.status_code != 200:
            raise MetadataUnavailable(f"guest attribute write answered HTTP {response.status_code}")

    def close(self) -> None:
        self._stop.set()
        for session in (self._session, self._write_session):
            session.close()
