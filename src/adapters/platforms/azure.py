"""Azure's transport: the provisioning DVD, IMDS, and the WireServer the health report goes to.

Where each thing comes from:

- ovf-env.xml: a DVD, UDF (as Azure attaches it) or ISO9660, read without
  mounting (adapters/udf.py, adapters/media.py). Looked for under the
  provider options' root: udev's `/dev/disk/by-label/rd_rdfe_stable*` links,
  `/dev/sr0`, `/dev/cdrom`, every `sr*` in `/sys/block`, and only when none of
  those holds it, every other disk and partition (azure-init #66: the DVD is
  not always sr0). The DVD does not change while the system runs: once read
  (or once a full scan found none) the answer is kept for this process.
- IMDS: `GET {base}/metadata/instance?api-version=2021-08-01` with
  `Metadata: true`, never through a proxy (IMDS refuses proxied requests).
  404, 410 (the VM is not provisioned yet), 429 and 5xx answers and transport
  failures are retried with capped backoff for at most IMDS_RETRY_TOTAL
  seconds in all (each kind of failure logged once, and once that IMDS
  answers again); other answers, an HTML page or a body that is not JSON are
  refused at once (MetadataUnavailable, retried by the caller like a server
  that is down). An answer is at most 16 MiB (IMDS_MAX).
- The WireServer: `[Azure] wireserver` (HOST or HOST:PORT) when set; else,
  when `--metadata-url` points elsewhere (tests, the simulator), that URL's
  host and port, which the simulator serves both from; else DHCP option 245
  from the leases (dhclient's `/var/lib/dhcp*/…leases`, `option unknown-245
  a8:3f:81:10;`, or systemd-networkd's `/run/systemd/netif/leases/*`,
  `OPTION_245=A83F8110`); else 168.63.129.16. `[Azure] http_proxy`
  (waagent.conf HttpProxy.Host/Port) is used for the WireServer only.

The health report (ports.fabric.FabricHealth): check `/?comp=versions` once,
fetch the goal state (`/machine/?comp=goalstate`, headers `x-ms-agent-name`
and `x-ms-version: 2012-11-30`), POST the Health document to
`/machine?comp=health`. A failure anywhere (transport, 5xx, 410 after a new
goal state, a goal state that does not parse) starts again from the goal
state, with backoff, for at most REPORT_RETRY_TOTAL seconds; then
MetadataUnavailable, and the subsystem is retried later by the scheduler,
until the WireServer takes it.

`put_guest_attribute` (the generic write-back port the composition root hands
every platform that declares one) accepts and drops GCE-style attributes
(host keys, `sshable`): Azure has no such key/value channel.

Following: IMDS has no long poll; it is read again every `[Azure] poll_interval`
seconds (60) and a snapshot is yielded when what was read changed.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import urlsplit

import requests

from guestagent.adapters import media, udf
from guestagent.adapters.media import under
from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.polling import content_tag, follow
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.backoff import Backoff
from guestagent.domain.config import Azure
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.azure import (
    AGENT_NAME,
    DEFAULT_WIRESERVER,
    GOAL_STATE_MAX,
    IMDS_API_VERSION,
    OVF_FILE,
    OVF_MAX,
    PLATFORM,
    WIRE_VERSION,
    AzureFetched,
    AzureMetadataError,
    GoalState,
    HealthStatus,
    WireServerError,
    dmi_says_azure,
    parse_azure,
    parse_goal_state,
    parse_imds,
    parse_versions,
    render_health,
    wireserver_from_dhclient,
    wireserver_from_networkd,
)
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254/metadata/instance"
IMDS_PATH = "/metadata/instance"
REQUEST_TIMEOUT = (2.0, 10.0)
PROBE_TIMEOUT = (1.0, 2.0)
# Far above a real answer (Azure caps userData, which the agent does not read, at 64 KiB):
# a huge userData must not stop the keys of the same document.
IMDS_MAX = 16 * 1024 * 1024
IMDS_RETRY_TOTAL = 20.0
IMDS_RETRY_STATUSES = frozenset({404, 410, 429})
REPORT_RETRY_TOTAL = 30.0
LABEL_PREFIX = "rd_rdfe_stable"
MAX_CANDIDATES = 64
LEASE_MAX = 256 * 1024
LEASE_GLOBS = (
    "/var/lib/dhcp/*.leases",
    "/var/lib/dhclient/*.leases",
    "/var/lib/dhcp/*.lease",
    "/run/systemd/netif/leases/*",
)
_SKIPPED = ("fd", "ram", "zram")
_CHUNK = 64 * 1024


def imds_base(url: str) -> str:
    """`http://HOST[:PORT]` of a --metadata-url (`http://169.254.169.254/metadata/instance`,
    `http://127.0.0.1:8080/`, or just `http://127.0.0.1:8080`)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http URL: {url[:80]!r}")
    return f"{parts.scheme}://{parts.netloc}"


def wireserver_base(setting: str) -> str:
    """`http://HOST[:PORT]` from `[Azure] wireserver` (HOST, HOST:PORT or a URL)."""
    text = setting.strip()
    if "://" in text:
        return imds_base(text)
    if not text or any(c in text for c in "/@ ?#"):
        raise ValueError(f"[Azure] wireserver {setting[:80]!r} is not HOST or HOST:PORT")
    return f"http://{text}"


def find_wireserver(root: str, now: datetime | None = None) -> tuple[str, str]:
    """(address, where it was found) from the DHCP leases under `root`, else the default."""
    when = now or datetime.now(UTC)
    checked = 0
    for pattern in LEASE_GLOBS:
        for path in sorted(glob.glob(under(root, pattern))):
            checked += 1
            if checked > MAX_CANDIDATES:
                break
            try:
                with open(path, "rb") as handle:
                    text = handle.read(LEASE_MAX).decode("utf-8", "replace")
            except OSError:
                continue
            found = (
                wireserver_from_networkd(text) if "/netif/" in path else wireserver_from_dhclient(text, when)
            )
            if found is not None:
                shown = "/" + os.path.relpath(path, root) if root not in ("", "/") else path
                return found, f"DHCP option 245 in {shown}"
    return DEFAULT_WIRESERVER, "the default address (no DHCP option 245 in the leases)"


# ---------------------------------------------------------------- the DVD


def _open_device(path: str) -> BinaryIO | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # absent, or an empty drive (ENOMEDIUM)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def _read_ovf(path: str) -> bytes | None:
    """ovf-env.xml from the UDF or ISO9660 volume at `path`; None when it has none.
    MediaError when the volume is one of those but cannot be read."""
    fp = _open_device(path)
    if fp is None:
        return None
    with fp:
        if udf.is_udf(fp):
            return udf.UdfVolume(fp).read(OVF_FILE, OVF_MAX)
    try:
        probed = media.probe(path)
    except (OSError, media.MediaError):
        return None
    if probed is None or probed[0] != "iso9660":
        return None
    with media.open_volume(media.Volume(path, "iso9660", probed[1])) as reader:
        return reader.read(OVF_FILE, OVF_MAX)


def _optical(root: str) -> list[str]:
    paths: list[str] = []
    by_label = under(root, "/dev/disk/by-label")
    for link in sorted(glob.glob(os.path.join(glob.escape(by_label), LABEL_PREFIX + "*"))):
        target = os.readlink(link) if os.path.islink(link) else link
        paths.append(
            under(root, target) if os.path.isabs(target) else os.path.normpath(os.path.join(by_label, target))
        )
    paths += [under(root, "/dev/sr0"), under(root, "/dev/cdrom")]
    try:
        names = sorted(os.listdir(under(root, "/sys/block")))
    except OSError:
        names = []
    paths += [under(root, f"/dev/{name}") for name in names if name.startswith("sr")]
    return paths


def _other_disks(root: str) -> list[str]:
    sys_block = under(root, "/sys/block")
    try:
        disks = sorted(os.listdir(sys_block))
    except OSError:
        return []
    paths: list[str] = []
    for disk in disks:
        if disk.startswith(_SKIPPED) or disk.startswith("sr"):
            continue
        paths.append(under(root, "/dev/" + disk.replace("!", "/")))
        try:
            children = sorted(os.listdir(os.path.join(sys_block, disk)))
        except OSError:
            continue
        paths += [
            under(root, "/dev/" + child)
            for child in children
            if child.startswith(disk) and os.path.isfile(os.path.join(sys_block, disk, child, "partition"))
        ]
    return paths


def find_ovf(root: str, *, everywhere: bool = True) -> tuple[bytes, str] | None:
    """(ovf-env.xml, the device it came from) from the first volume holding one, or None.

    MediaError when a volume that holds an OVF DVD's filesystem could not be read and no
    other volume answered (a damaged DVD must not look like no DVD)."""
    seen: set[str] = set()
    failure: media.MediaError | None = None
    candidates = _optical(root)
    if everywhere:
        candidates += _other_disks(root)
    for path in candidates:
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        if len(seen) > MAX_CANDIDATES:
            break
        try:
            data = _read_ovf(path)
        except media.MediaError as exc:
            failure = failure or exc
            continue
        if data is not None:
            shown = "/" + os.path.relpath(path, root) if root not in ("", "/") else path
            return data, shown
    if failure is not None:
        raise failure
    return None


# ---------------------------------------------------------------- the transport


class AzureMetadata:
    platform = PLATFORM

    def __init__(
        self,
        *,
        root: str = "/",
        url: str | None = None,
        settings: Azure | None = None,
        backoff_max: float = 30.0,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        imds_retry_total: float = IMDS_RETRY_TOTAL,
        report_retry_total: float = REPORT_RETRY_TOTAL,
        parse: Callable[[object], InstanceMetadata] = parse_azure,
    ) -> None:
        self.root = root
        self.settings = settings or Azure()
        self.url_given = url is not None
        self.imds = imds_base(url or DEFAULT_URL)
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.imds_retry_total = imds_retry_total
        self.report_retry_total = report_retry_total
        self._parse = parse
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._session = http.new_session({"Accept-Encoding": "identity"})
        self._wire_session = http.new_session({"Accept-Encoding": "identity"})
        # The IMDS failure last said (it is said once, and once that it is over).
        self._imds_failing: str | None = None
        if self.settings.http_proxy:
            self._wire_session.proxies = {"http": self.settings.http_proxy, "https": self.settings.http_proxy}
        self._ovf: tuple[bytes, str] | None = None
        self._ovf_searched = False
        self._versions_checked = False
        self._wireserver: tuple[str, str] | None = None

    # -------------------------------------------------------------- the DVD

    def ovf(self) -> tuple[bytes | None, str | None, str | None]:
        """(ovf-env.xml, its device, why it was unreadable): read once per process."""
        with self._lock:
            if self._ovf is not None:
                return self._ovf[0], self._ovf[1], None
            if self._ovf_searched:
                return None, None, None
            try:
                found = find_ovf(self.root)
            except media.MediaError as exc:
                return None, None, f"provisioning DVD unreadable: {exc}"
            self._ovf_searched = True
            if found is None:
                log.info("no Azure provisioning DVD (ovf-env.xml) found; provisioning from IMDS alone")
                return None, None, None
            self._ovf = found
            return found[0], found[1], None

    # -------------------------------------------------------------- IMDS

    def _imds_once(self) -> bytes:
        url = f"{self.imds}{IMDS_PATH}?api-version={IMDS_API_VERSION}"
        response = http.request(
            self._session, "GET", url, timeout=self.timeout, headers={"Metadata": "true"}, stream=True
        )
        with response:
            status = response.status_code
            if status != 200:
                raise _Status(status)
            content_type = response.headers.get("Content-Type", "")
            body = _bounded(response, IMDS_MAX, "IMDS")
        if "html" in content_type.lower() or body.lstrip().startswith(b"<"):
            raise _NotImds(
                f"IMDS answered an HTML page (Content-Type {content_type or 'none'!r}), "
                "not the metadata service"
            )
        return body

    def imds_document(self) -> bytes:
        """IMDS's instance document, retried on its transient answers for a bounded time."""
        deadline = time.monotonic() + self.imds_retry_total
        backoff = Backoff(cap=min(5.0, max(0.1, self.backoff_max)))
        while True:
            try:
                body = self._imds_once()
            except _Status as exc:
                if not (exc.status in IMDS_RETRY_STATUSES or 500 <= exc.status <= 599):
                    raise MetadataUnavailable(f"IMDS answered HTTP {exc.status}") from None
                reason = f"IMDS answered HTTP {exc.status}"
            except _NotImds:
                raise
            except MetadataUnavailable as exc:
                reason = str(exc)
            else:
                if self._imds_failing is not None:
                    log.info("IMDS is answering again")
                    self._imds_failing = None
                return body
            delay = backoff.next_delay()
            if self._stop.is_set() or time.monotonic() + delay > deadline:
                raise MetadataUnavailable(f"{reason} (retried for {self.imds_retry_total:g}s)")
            if reason != self._imds_failing:  # once per kind of failure, not per retry
                log.warning("%s; retrying for up to %gs", reason, self.imds_retry_total)
                self._imds_failing = reason
            self._stop.wait(delay)

    # -------------------------------------------------------------- the port

    def get(self) -> Snapshot:
        body = self.imds_document()
        ovf, source, unreadable = self.ovf()
        fetched = AzureFetched(imds=body, ovf=ovf, ovf_source=source, ovf_unreadable=unreadable)
        metadata = http.parse_or_unavailable(self._parse, fetched, "Azure metadata")
        return Snapshot(metadata, content_tag(body, b"-" if ovf is None else b"+" + ovf, unreadable or ""))

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        yield from follow(
            lambda _etag: self.get(),
            last_etag,
            self._stop,
            backoff_max=self.backoff_max,
            pause=max(0.01, float(self.settings.poll_interval)),
        )

    def close(self) -> None:
        self._stop.set()
        self._session.close()
        self._wire_session.close()

    def put_guest_attribute(self, key: str, value: str) -> None:
        """Azure has no key/value write-back: GCE-style attributes are accepted and dropped."""
        log.debug("Azure has no guest attribute channel; %s not published", key)

    # -------------------------------------------------------------- the WireServer

    def wireserver(self) -> tuple[str, str]:
        """(base URL, why this one) of the WireServer, decided once per process."""
        if self._wireserver is None:
            if self.settings.wireserver:
                self._wireserver = (wireserver_base(self.settings.wireserver), "[Azure] wireserver")
            elif self.url_given:
                self._wireserver = (self.imds, "the --metadata-url host")
            else:
                address, why = find_wireserver(self.root)
                self._wireserver = (f"http://{address}", why)
            log.info("Azure WireServer at %s (%s)", self._wireserver[0], self._wireserver[1])
        return self._wireserver

    def _wire(
        self, method: str, path: str, *, body: bytes | None = None, limit: int = GOAL_STATE_MAX
    ) -> bytes:
        base, _ = self.wireserver()
        headers = {"x-ms-agent-name": AGENT_NAME, "x-ms-version": WIRE_VERSION}
        if body is not None:
            headers["Content-Type"] = "text/xml;charset=utf-8"
        response = http.request(
            self._wire_session,
            method,
            base + path,
            timeout=self.timeout,
            headers=headers,
            data=body,
            stream=True,
        )
        with response:
            status = response.status_code
            data = _bounded(response, limit, "WireServer")
        if status != 200:
            raise MetadataUnavailable(f"WireServer {method} {path.split('?')[0]} answered HTTP {status}")
        return data

    def goal_state(self) -> GoalState:
        if not self._versions_checked:
            try:
                versions = parse_versions(self._wire("GET", "/?comp=versions"))
            except WireServerError as exc:
                raise MetadataUnavailable(str(exc)) from exc
            if WIRE_VERSION not in versions:
                log.warning(
                    "WireServer does not list protocol %s (it lists %s); trying it anyway",
                    WIRE_VERSION,
                    ", ".join(versions[:5]) or "none",
                )
            self._versions_checked = True
        try:
            return parse_goal_state(self._wire("GET", "/machine/?comp=goalstate"))
        except WireServerError as exc:
            raise MetadataUnavailable(str(exc)) from exc

    def report_health(self, status: HealthStatus) -> None:
        """POST the health report; retried from the goal state on with backoff for at most
        report_retry_total seconds (close() does not shorten that). MetadataUnavailable when
        it was never accepted."""
        deadline = time.monotonic() + self.report_retry_total
        backoff = Backoff(cap=min(5.0, max(0.1, self.backoff_max)))
        said: str | None = None
        while True:
            try:
                goal = self.goal_state()
                self._wire("POST", "/machine?comp=health", body=render_health(goal, status))
                log.info(
                    "reported %s to the Azure fabric (incarnation %s)", status.describe(), goal.incarnation
                )
                return
            except MetadataUnavailable as exc:
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    raise MetadataUnavailable(f"health report not accepted: {exc}") from exc
                if str(exc) != said:  # once per kind of failure, not per retry
                    log.warning(
                        "health report %s: %s; retrying for up to %gs",
                        status.state,
                        exc,
                        self.report_retry_total,
                    )
                    said = str(exc)
                # Not cut short by close(): the one-shot commands close the source once they
                # have their snapshot, before the subsystems (and this report) run.
                time.sleep(delay)


class _NotImds(MetadataUnavailable):
    """An answer that is not IMDS's (a captive portal's page): not worth a retry here."""


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _bounded(response: requests.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise MetadataUnavailable(f"{what} answer larger than {limit} bytes")
    body = bytearray()
    try:
        for chunk in response.iter_content(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise MetadataUnavailable(f"{what} answer larger than {limit} bytes")
    except requests.RequestException as exc:
        raise MetadataUnavailable(f"{what} answer was cut short ({exc.__class__.__name__})") from exc
    return bytes(body)


def _open(options: ProviderOptions) -> AzureMetadata:
    return AzureMetadata(
        root=options.root, url=options.url, settings=options.config.Azure, backoff_max=options.backoff_max
    )


def _local(options: ProviderOptions) -> str | None:
    """An Azure provisioning DVD (optical drives and rd_rdfe_stable* labels only: quick)."""
    try:
        found = find_ovf(options.root, everywhere=False)
    except media.MediaError:
        return None
    return None if found is None else f"Azure provisioning DVD ({OVF_FILE}) at {found[1]}"


def _probe(options: ProviderOptions, timeout: float) -> str | None:
    """Is Azure's IMDS there? One GET with `Metadata: true` within `timeout` seconds."""
    base = imds_base(options.url or DEFAULT_URL)
    connect = min(PROBE_TIMEOUT[0], max(0.05, timeout / 2))
    read = min(PROBE_TIMEOUT[1], max(0.05, timeout - connect))
    session = http.new_session({"Accept-Encoding": "identity"})
    try:
        response = http.request(
            session,
            "GET",
            f"{base}{IMDS_PATH}?api-version={IMDS_API_VERSION}",
            timeout=(connect, read),
            headers={"Metadata": "true"},
            stream=True,
        )
        with response:
            if response.status_code != 200 or "json" not in response.headers.get("Content-Type", "").lower():
                return None
            body = _bounded(response, IMDS_MAX, "IMDS")
        parse_imds(body)
    except (MetadataUnavailable, AzureMetadataError, requests.RequestException):
        return None
    finally:
        session.close()
    return f"Azure IMDS answered at {urlsplit(base).netloc}"


PROVIDER = ProviderSpec(
    name=PLATFORM,
    default_url=DEFAULT_URL,
    open=_open,
    dmi=dmi_says_azure,
    local=_local,
    probe=_probe,
    # The source is the write-back channel (the health report, ports.fabric.FabricHealth).
    guest_attributes=True,
)
