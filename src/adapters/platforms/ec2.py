"""EC2's instance metadata service (IMDSv2 by default) over HTTP: one walk, polled.

EC2-specific guards (the shared ones are in http.py):

- IMDSv2 session tokens. The token PUT has a short timeout: past the hop
  limit its reply is dropped and the client only sees silence, which must
  cost seconds, not minutes. A token is reused until 80% of its lifetime and
  renewed on any 401 (that request is retried once). 403 means the endpoint
  is switched off (MetadataDisabled: callers stop asking). IMDSv1 (no
  token) only when the configuration allows it and the PUT got no usable
  answer; a 403 never falls back.
- A captive portal answering 200 with HTML: listings are text/plain, so an
  HTML content type or a body starting with `<` is refused.
- Bounded bodies: user data at most 16 KiB (EC2's own limit), everything
  else at most 1 MiB per walk; a larger answer is not EC2's and is refused.
- No long poll: watch() walks again every `EC2.poll_interval` seconds and
  yields only when what was read changed (a digest of it is the tag).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests

from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.polling import content_tag, follow
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import EC2
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.ec2 import (
    HOSTNAME,
    INSTANCE_ID,
    KEYS,
    LOCAL_HOSTNAME,
    MAC,
    MACS,
    MAX_KEYS,
    MAX_NICS,
    NIC_FIELDS,
    PLATFORM,
    Ec2Fetched,
    dmi_says_ec2,
    key_indices,
    key_path,
    mac_entries,
    nic_path,
    parse_ec2,
)
from guestagent.ports.metadata import MetadataDisabled, MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254/"
IPV6_URL = "http://[fd00:ec2::254]/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
# Past the hop limit the PUT's reply never arrives: this is all it may cost.
TOKEN_TIMEOUT = (1.0, 2.0)
REQUEST_TIMEOUT = (1.0, 5.0)
RENEW_AT = 0.8  # share of a token's lifetime after which a new one is asked for
# After a PUT that got no answer (IMDSv1 allowed), ask for a token again only after this.
V1_RETRY_AFTER = 300.0
USER_DATA_MAX = 16 * 1024
WALK_MAX = 1024 * 1024
TOKEN_MAX = 4096

# The leaves of meta-data/ the parser reads; `hostname` only when local-hostname is absent.
_LEAVES = (INSTANCE_ID, LOCAL_HOSTNAME, MAC)


def service_root(url: str) -> str:
    """The `latest/` address under a --metadata-url (`http://169.254.169.254/` or
    `http://[fd00:ec2::254]/`); a URL already ending in `latest/` is kept as it is."""
    base = url if url.endswith("/") else url + "/"
    return base if base.endswith("/latest/") else base + "latest/"


class _Walk:
    """One snapshot's reads: what was fetched and the byte budget left."""

    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        self.budget = WALK_MAX


class Ec2Metadata:
    platform = PLATFORM

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        settings: EC2 | None = None,
        backoff_max: float = 30.0,
        token_timeout: tuple[float, float] = TOKEN_TIMEOUT,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        parse: Callable[[object], InstanceMetadata] = parse_ec2,
    ) -> None:
        self.root = service_root(base_url)
        self.settings = settings or EC2()
        self.backoff_max = backoff_max
        self.token_timeout = token_timeout
        self.request_timeout = request_timeout
        self._clock = clock
        self._parse = parse
        self._stop = threading.Event()
        self._session = http.new_session()
        # get() and the watch thread may both ask; one token at a time.
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._v1_until: float | None = None  # IMDSv1 in use until then (fallback)
        self._said_v1 = False

    # -- tokens -------------------------------------------------------------------------
    def _ttl(self) -> int:
        return max(1, min(21600, int(self.settings.token_ttl)))

    @staticmethod
    def _disabled(what: str) -> MetadataDisabled:
        # Logged once by whoever handles it (follow() stops the watch with one line).
        return MetadataDisabled(
            f"EC2 instance metadata is switched off ({what} answered 403); enable it with "
            "`aws ec2 modify-instance-metadata-options --http-endpoint enabled`"
        )

    def _put_token(self) -> str:
        """A new session token; MetadataDisabled on 403, MetadataUnavailable otherwise."""
        ttl = self._ttl()
        response = http.request(
            self._session,
            "PUT",
            self.root + "api/token",
            headers={TTL_HEADER: str(ttl)},
            timeout=self.token_timeout,
            stream=True,
        )
        with response:
            if response.status_code == 403:
                raise self._disabled("the token PUT")
            if response.status_code != 200:
                raise MetadataUnavailable(f"IMDSv2 token PUT answered HTTP {response.status_code}")
            body = _read(response, TOKEN_MAX, "api/token")
        _refuse_html(response, body, "api/token")
        token = body.decode("ascii", "replace").strip()
        if not token or not token.isprintable() or any(c.isspace() for c in token):
            raise MetadataUnavailable("IMDSv2 token PUT answered something that is not a token")
        lifetime = float(ttl)
        granted = response.headers.get(TTL_HEADER, "")
        if granted.isdigit() and 0 < int(granted) < ttl:
            lifetime = float(granted)
        self._token = token
        self._renew_at = self._clock() + lifetime * RENEW_AT
        self._v1_until = None
        return token

    def _current_token(self) -> str | None:
        """The token to send, or None for IMDSv1; asks for one when there is none."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._renew_at:
                return self._token
            if self._v1_until is not None and now < self._v1_until:
                return None
            self._token = None
            try:
                return self._put_token()
            except MetadataDisabled:
                raise
            except MetadataUnavailable as exc:
                if not self.settings.allow_imdsv1:
                    raise MetadataUnavailable(
                        f"{exc} (IMDSv1 fallback is off: EC2 allow_imdsv1 = false)"
                    ) from exc
                if not self._said_v1:
                    log.warning("%s; falling back to IMDSv1 (EC2 allow_imdsv1 = true)", exc)
                    self._said_v1 = True
                self._v1_until = now + V1_RETRY_AFTER
                return None

    def _drop_token(self) -> None:
        with self._lock:
            self._token = None
            self._renew_at = 0.0
            self._v1_until = None  # a 401 in IMDSv1 mode: tokens are required now

    # -- reads --------------------------------------------------------------------------
    def _get(self, path: str, limit: int, *, check_body: bool = True) -> bytes | None:
        """The body at `latest/<path>`, None on 404. A 401 renews the token and retries once."""
        for attempt in (1, 2):
            token = self._current_token()
            headers = {TOKEN_HEADER: token} if token is not None else {}
            response = http.request(
                self._session,
                "GET",
                self.root + path,
                headers=headers,
                timeout=self.request_timeout,
                stream=True,
            )
            with response:
                status = response.status_code
                if status == 200:
                    body = _read(response, limit, path)
                    _refuse_html(response, body if check_body else b"", path)
                    return body
                if status == 404:
                    # "Absent" only once the answer is whole: a 404 cut short is a broken
                    # answer, and a snapshot must not be assembled around it.
                    _read(response, http.NOT_FOUND_MAX, f"{path} (HTTP 404)")
                    return None
            if status == 401 and attempt == 1:
                self._drop_token()
                continue
            if status == 403:
                raise self._disabled(f"GET {path}")
            raise MetadataUnavailable(f"EC2 metadata {path} answered HTTP {status}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _text(self, walk: _Walk, path: str) -> str | None:
        body = self._get("meta-data/" + path, walk.budget)
        if body is None:
            return None
        walk.budget -= len(body)
        text = body.decode("utf-8", "replace")
        walk.meta[path] = text
        return text

    def _walk(self) -> tuple[Ec2Fetched, str]:
        walk = _Walk()
        listing = self._text(walk, "")
        if listing is None:
            raise MetadataUnavailable("EC2 metadata meta-data/ answered HTTP 404")
        present = {line.strip() for line in listing.split("\n")}
        del walk.meta[""]
        for leaf in _LEAVES:
            if leaf in present:
                self._text(walk, leaf)
        if not (walk.meta.get(LOCAL_HOSTNAME) or "").strip() and HOSTNAME in present:
            self._text(walk, HOSTNAME)
        if KEYS in present:
            keys = self._text(walk, KEYS)
            for index in key_indices(keys or "")[0][:MAX_KEYS]:
                self._text(walk, key_path(index))
        if "network/" in present:
            macs = self._text(walk, MACS)
            for mac in mac_entries(macs or "")[0][:MAX_NICS]:
                for field in NIC_FIELDS:
                    self._text(walk, nic_path(mac, field))
        user_data: bytes | None = None
        user_data_unreadable = None
        try:
            user_data = self._get("user-data", USER_DATA_MAX, check_body=False)
        except http.BodyTooLarge as exc:  # not EC2's own (it caps at 16 KiB): hold what reads it
            user_data_unreadable = str(exc)
        identity_body = self._get("dynamic/instance-identity/document", walk.budget)
        identity = None if identity_body is None else identity_body.decode("utf-8", "replace")
        fetched = Ec2Fetched(
            meta_data=walk.meta,
            user_data=user_data,
            identity=identity,
            user_data_unreadable=user_data_unreadable,
        )
        parts: list[str | bytes] = []
        for path in sorted(walk.meta):
            parts += [path, walk.meta[path]]
        parts += [b"user-data", b"\x00" if user_data is None else b"\x01" + user_data]
        parts += [user_data_unreadable or ""]
        parts += [b"identity", identity_body if identity_body is not None else b"\x00"]
        return fetched, content_tag(*parts)

    def get(self) -> Snapshot:
        fetched, tag = self._walk()
        return Snapshot(http.parse_or_unavailable(self._parse, fetched), tag)

    def _poll(self, etag: str) -> Snapshot:
        return self.get()

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        pause = max(0.01, float(self.settings.poll_interval))
        return follow(self._poll, last_etag, self._stop, backoff_max=self.backoff_max, pause=pause)

    def close(self) -> None:
        self._stop.set()
        self._session.close()


def _read(response: requests.Response, limit: int, path: str) -> bytes:
    """At most `limit` bytes of a streamed body; more is refused, not cut."""
    return http.read_body(response, f"EC2 metadata {path}", limit)


def _refuse_html(response: requests.Response, body: bytes, path: str) -> None:
    """A captive portal or proxy answers 200 with a web page; IMDS never does."""
    content_type = response.headers.get("Content-Type", "")
    if "html" in content_type.lower() or body.lstrip().startswith(b"<"):
        raise MetadataUnavailable(
            f"EC2 metadata {path} answered an HTML page (Content-Type {content_type or 'none'!r}), "
            "not the metadata service"
        )


def _open(options: ProviderOptions) -> Ec2Metadata:
    return Ec2Metadata(
        options.url or DEFAULT_URL, settings=options.config.EC2, backoff_max=options.backoff_max
    )


def _probe(options: ProviderOptions, timeout: float) -> str | None:
    """Is an EC2 metadata service there? One token PUT (and, with IMDSv1 allowed, one
    GET of instance-id), all within `timeout` seconds."""
    root = service_root(options.url or DEFAULT_URL)
    deadline = time.monotonic() + max(0.0, timeout)

    def left() -> tuple[float, float]:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            raise MetadataUnavailable("no time left")
        connect = min(TOKEN_TIMEOUT[0], remaining / 2)
        return connect, min(TOKEN_TIMEOUT[1], remaining - connect)

    session = http.new_session()
    try:
        try:
            reason = _probe_token(session, root, left())
        except MetadataUnavailable:
            reason = None  # no answer (a hop-limit black hole looks like this too)
        if reason is not None or not options.config.EC2.allow_imdsv1:
            return reason
        response = http.request(session, "GET", root + "meta-data/instance-id", timeout=left(), stream=True)
        with response:
            if response.status_code != 200:
                return None
            body = _read(response, 256, "meta-data/instance-id")
            html = "html" in response.headers.get("Content-Type", "").lower()
        if not html and body.strip().startswith(b"i-"):
            return f"EC2 metadata (IMDSv1) answered at {_host(root)}"
        return None
    except MetadataUnavailable:
        return None
    finally:
        session.close()


def _probe_token(session: requests.Session, root: str, timeout: tuple[float, float]) -> str | None:
    response = http.request(
        session, "PUT", root + "api/token", headers={TTL_HEADER: "60"}, timeout=timeout, stream=True
    )
    with response:
        status = response.status_code
        body = _read(response, TOKEN_MAX, "api/token") if status == 200 else b""
        html = "html" in response.headers.get("Content-Type", "").lower() or body.lstrip().startswith(b"<")
        server = response.headers.get("Server", "")
    if status == 200 and body.strip() and not html:
        return f"EC2 IMDSv2 token service answered at {_host(root)}"
    if status == 403 and server == "EC2ws":
        return f"EC2 metadata service at {_host(root)} answered 403 (metadata switched off)"
    return None


def _host(url: str) -> str:
    return urlsplit(url).netloc


PROVIDER = ProviderSpec(
    name=PLATFORM,
    default_url=DEFAULT_URL,
    open=_open,
    dmi=dmi_says_ec2,
    probe=_probe,
)
