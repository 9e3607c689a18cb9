"""DigitalOcean's droplet metadata over HTTP: `GET /metadata/v1.json`, polled.

DigitalOcean-specific guards (the shared ones are in http.py):

- The bootstrap problem. A droplet gets no DHCP: until the agent has put the
  addresses metadata lists on its NICs it has no address at all, and so no
  way to ask for them. Like DigitalOcean's own images, the source puts a
  temporary link-local address ("169.254.X.Y/16", chosen from the MAC, see
  domain.platforms.digitalocean.link_local_address) on the first Ethernet
  NIC (brought up if it is down) before a request, when no link that is up
  has an IPv4 address; the kernel's on-link route for 169.254.0.0/16 then
  reaches 169.254.169.254. The address is removed after a request once a
  link that is up has another IPv4 address (the droplet's own, put there by
  the network configuration, now reaches the service), and when the source
  is closed. If a request then
  finds the service unreachable through the droplet's own addresses, the
  temporary address comes back and stays until close(). An address the
  agent left behind (killed before close) is recognised by its MAC-derived
  value and removed the same way. Without netlink (a sandbox root) or with
  `[DigitalOcean] link_local = false` nothing is added: requests go out
  through whatever network the machine has.
- A captive portal answering 200 with HTML: the document must come as JSON
  (an HTML content type or a body starting with `<` is refused).
- Bounded body: at most 16 MiB; a larger answer is refused whole. The
  platform caps user data at 64 KiB, so a real document is far smaller, but
  a field that is too large must hold only what reads it (the parser holds
  scripts and first boot for user data over 64 KiB; the keys of the same
  document still apply), and a document is the one request a snapshot is.
- No long poll: watch() reads again every `[DigitalOcean] poll_interval`
  seconds and yields only when the body changed (a digest of it is the tag).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests

from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.polling import content_tag, follow
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import DigitalOcean
from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.digitalocean import (
    PLATFORM,
    DigitalOceanMetadataError,
    bootstrap_link,
    dmi_says_digitalocean,
    has_own_ipv4,
    link_local_address,
    parse_digitalocean,
)
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestagent.ports.netlink import Netlink, NetlinkFailure

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254/metadata/v1.json"
REQUEST_TIMEOUT = (2.0, 5.0)
# Detection's probe: the service answers at once when it is there at all.
PROBE_TIMEOUT = (1.0, 2.0)
DOCUMENT_MAX = 16 * 1024 * 1024


def document_url(url: str) -> str:
    """The v1.json address under a --metadata-url: kept as it is when it already names
    a `.json` document; `.../metadata/v1` or `.../metadata/v1/` (the text tree) gets
    `.json`; any other base (`http://169.254.169.254/`) gets `metadata/v1.json`."""
    text = url.strip()
    if urlsplit(text).path.endswith(".json"):
        return text
    base = text.rstrip("/")
    if base.endswith("/metadata/v1"):
        return base + ".json"
    return base + "/metadata/v1.json"


class _Unreachable(MetadataUnavailable):
    """No HTTP answer at all (refused, timed out, no route): the network may be the problem."""


class LinkLocalBootstrap:
    """The temporary link-local address that lets a droplet without addresses reach its
    metadata service (see the module docstring). Every call is safe from any thread."""

    def __init__(self, netlink: Callable[[], Netlink]) -> None:
        self._factory = netlink
        self._netlink: Netlink | None = None
        self._lock = threading.Lock()
        self.active: tuple[str, str] | None = None  # (interface, "ADDR/PREFIX") we put there
        self._sticky = False  # the droplet's own addresses did not reach the service: keep ours
        self._closed = False
        self._said: str | None = None

    def _nl(self) -> Netlink:
        if self._netlink is None:
            netlink = self._factory()
            namespace = netlink.namespace()
            if namespace is not None and not _in_namespace(namespace):
                netlink.close()
                # The address would go on a NIC this process's requests never leave through.
                raise NetlinkFailure(
                    f"netlink works in namespace {namespace!r} but this process's requests do not; "
                    f"run the agent inside it (ip netns exec {namespace} ...)"
                )
            self._netlink = netlink
        return self._netlink

    def _failed(self, what: str, exc: Exception) -> None:
        message = f"DigitalOcean link-local bootstrap: {what}: {exc}"
        if message != self._said:  # once per distinct failure, not per retry
            log.warning("%s", message)
            self._said = message

    def before_request(self) -> None:
        """Make sure the metadata service is reachable: add the address when needed."""
        with self._lock:
            if self._closed or self.active is not None:
                return
            try:
                links = self._nl().links()
                link = bootstrap_link(links)
                if link is None:
                    self._failed("no Ethernet link", RuntimeError("nothing to put the address on"))
                    return
                address = link_local_address(link.mac)
                ip = address.split("/", 1)[0]
                if ip in link.ipv4:
                    # Ours, from an earlier run (or a request ago): adopt it, so it is removed.
                    self.active = (link.name, address)
                    return
                if has_own_ipv4(links) and not self._sticky:
                    return
                if not link.up:
                    self._nl().set_link_up(link.name)
                self._nl().add_address(link.name, address)
            except (NetlinkFailure, OSError) as exc:
                self._failed("adding the temporary address", exc)
                return
            self.active = (link.name, address)
            self._said = None
            log.info(
                "DigitalOcean: put the temporary address %s on %s to reach the metadata service",
                address,
                link.name,
            )

    def after_request(self, *, answered: bool, unreachable: bool) -> None:
        """After a request: drop the address once the droplet's own addresses are up;
        keep it for good when they did not reach the service."""
        with self._lock:
            if self._closed:
                return
            if unreachable and self.active is None:
                if not self._sticky:
                    self._sticky = self._own_addresses()
                return
            if answered and self.active is not None and not self._sticky and self._own_addresses():
                self._remove("the droplet's own addresses are up")

    def _own_addresses(self) -> bool:
        try:
            return has_own_ipv4(self._nl().links(), ignore=self.active[1] if self.active else None)
        except (NetlinkFailure, OSError) as exc:
            self._failed("listing links", exc)
            return False

    def _remove(self, why: str) -> None:
        assert self.active is not None
        interface, address = self.active
        try:
            self._nl().delete_address(interface, address)
        except (NetlinkFailure, OSError) as exc:
            try:
                still_there = any(
                    link.name == interface and address.split("/", 1)[0] in link.ipv4
                    for link in self._nl().links()
                )
            except (NetlinkFailure, OSError):
                still_there = True
            if still_there:
                self._failed(f"removing {address} from {interface}", exc)
                return
            # Someone (the network configuration) removed it already: nothing left to do.
        self.active = None
        log.info("DigitalOcean: removed the temporary address %s from %s (%s)", address, interface, why)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.active is not None:
                self._remove("the metadata source is closed")
            if self._netlink is not None:
                netlink, self._netlink = self._netlink, None
                netlink.close()


def _in_namespace(name: str) -> bool:
    """Whether this process runs in the named network namespace (/run/netns/NAME)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(os.path.join("/run/netns", name)).st_ino
    except OSError:
        return False


class DigitalOceanMetadata:
    platform = PLATFORM

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        settings: DigitalOcean | None = None,
        backoff_max: float = 30.0,
        netlink: Callable[[], Netlink] | None = None,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        parse: Callable[[object], InstanceMetadata] = parse_digitalocean,
    ) -> None:
        self.url = document_url(url)
        self.settings = settings or DigitalOcean()
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self._parse = parse
        self._stop = threading.Event()
        # One connection per request: a kept-alive connection would still carry the
        # temporary address as its source after that address is gone, and hang.
        self._session = http.new_session({"Connection": "close"})
        self.bootstrap = (
            LinkLocalBootstrap(netlink) if netlink is not None and self.settings.link_local else None
        )

    def _fetch(self) -> bytes:
        response = _get(self._session, self.url, self.request_timeout)
        with response:
            if response.status_code != 200:
                raise MetadataUnavailable(f"DigitalOcean metadata answered HTTP {response.status_code}")
            return _body(response)

    def get(self) -> Snapshot:
        if self.bootstrap is not None:
            self.bootstrap.before_request()
        answered = unreachable = False
        try:
            body = self._fetch()
            answered = True
        except _Unreachable:
            unreachable = True
            raise
        finally:
            if self.bootstrap is not None:
                self.bootstrap.after_request(answered=answered, unreachable=unreachable)
        try:
            document = loads(body)
        except JsonRefused as exc:
            raise MetadataUnavailable(f"DigitalOcean metadata body refused: {exc}") from exc
        return Snapshot(http.parse_or_unavailable(self._parse, document), content_tag(body))

    def _poll(self, etag: str) -> Snapshot:
        return self.get()

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        pause = max(0.01, float(self.settings.poll_interval))
        return follow(self._poll, last_etag, self._stop, backoff_max=self.backoff_max, pause=pause)

    def close(self) -> None:
        self._stop.set()
        if self.bootstrap is not None:
            self.bootstrap.close()
        self._session.close()


def _get(session: requests.Session, url: str, timeout: tuple[float, float]) -> requests.Response:
    try:
        return http.request(session, "GET", url, timeout=timeout, stream=True)
    except MetadataUnavailable as exc:
        raise _Unreachable(str(exc)) from exc


def _body(response: requests.Response) -> bytes:
    """The JSON document of a 200 answer, at most DOCUMENT_MAX bytes; an HTML page is refused."""
    content_type = response.headers.get("Content-Type", "")
    if "html" in content_type.lower():
        raise MetadataUnavailable(
            f"DigitalOcean metadata answered an HTML page (Content-Type {content_type!r}), "
            "not the metadata service"
        )
    body = http.read_body(response, "DigitalOcean metadata", DOCUMENT_MAX)
    if bytes(body[:64]).lstrip().startswith(b"<"):
        raise MetadataUnavailable("DigitalOcean metadata answered an HTML page, not the metadata service")
    return bytes(body)


def _open(options: ProviderOptions) -> DigitalOceanMetadata:
    return DigitalOceanMetadata(
        options.url or DEFAULT_URL,
        settings=options.config.DigitalOcean,
        backoff_max=options.backoff_max,
        netlink=options.netlink,
    )


def _probe(options: ProviderOptions, timeout: float) -> str | None:
    """Is a DigitalOcean metadata service there? One GET of v1.json within `timeout`
    seconds: a JSON object with a droplet_id says yes. No temporary address is added
    here (detection must not change a machine that may not be a droplet): on a droplet
    without addresses yet, DMI is what finds it."""
    url = document_url(options.url or DEFAULT_URL)
    deadline = time.monotonic() + max(0.0, timeout)
    remaining = deadline - time.monotonic()
    if remaining <= 0.05:
        return None
    connect = min(PROBE_TIMEOUT[0], remaining / 2)
    read = min(PROBE_TIMEOUT[1], remaining - connect)
    with http.new_session() as session:
        try:
            response = http.request(session, "GET", url, timeout=(connect, read), stream=True)
            with response:
                if response.status_code != 200:
                    return None
                body = _body(response)
            document = loads(body)
            metadata = parse_digitalocean(document)
        except (MetadataUnavailable, JsonRefused, DigitalOceanMetadataError):
            return None
    return f"DigitalOcean metadata answered at {urlsplit(url).netloc} (droplet {metadata.instance_id})"


PROVIDER = ProviderSpec(
    name=PLATFORM,
    default_url=DEFAULT_URL,
    open=_open,
    dmi=dmi_says_digitalocean,
    probe=_probe,
)
