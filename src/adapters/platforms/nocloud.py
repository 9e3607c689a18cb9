"""NoCloud (cloud-init's local seed): a seed directory, a `cidata` volume, or a seed URL.

Where the seed is read, first found wins (each `get()` looks again):

1. the seed directory `[NoCloud] seed_dir` (default /var/lib/cloud/seed/nocloud)
   under the root, when it holds `meta-data`;
2. a vfat or ISO9660 volume labelled `cidata` (any case), found and read
   without mounting (adapters/media.py: udev's by-label links, then every
   disk and partition in sysfs, label checked on the superblock);
3. `ds=nocloud;s=URL` (also `ds=nocloud-net`, and `seedfrom=` for `s=`) on
   the kernel command line (ROOT/proc/cmdline); `--metadata-url` (the
   provider options' `url`) replaces that URL, and makes this source
   available without the command line. `s=` may also name a local directory
   (`file:///path/` or `/path/`), read like the seed directory.

`i=` and `h=` on the command line override the seed's instance-id and
local-hostname, as in cloud-init.

Guards: each file is read up to 1 MiB (a larger one is refused, not cut:
meta-data refuses the seed, any other file holds the subsystems that read
it); YAML goes through `yaml.safe_load` (never object construction), and a
document nested past Python's recursion limit, not YAML, or not a value YAML
can build is refused with a reason, never a crash. The parser then bounds
what the loaded values stand for (aliases expanded), see
domain/platforms/nocloud.py. Over HTTP: no redirects, no proxies from the
environment, no compressed bodies (a gzip bomb is not a seed), a 404 on
user-data, vendor-data or network-config means absent, each body has a total
deadline as well as the per-read timeout.

Following: local media do not change while the system runs, so `watch()`
yields at most the one snapshot the caller has not seen and then only waits
for `close()`. A URL seed is polled every `[NoCloud] poll_interval` seconds
and a snapshot is yielded when the files (a digest of them) changed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import attrs

from guestagent.adapters import media
from guestagent.adapters.media import labelled_volume, read_files, under
from guestagent.adapters.platforms import http
from guestagent.adapters.platforms.http import fetch_file, shown_url
from guestagent.adapters.platforms.polling import files_tag, watch_snapshots
from guestagent.adapters.platforms.spec import ProviderOptions, ProviderSpec
from guestagent.domain.config import NoCloud
from guestagent.domain.platforms.common import Unreadable
from guestagent.domain.platforms.nocloud import PLATFORM, CmdlineSeed, cmdline_seed, parse_nocloud
from guestagent.ports.metadata import MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)

LABELS = ("cidata",)  # compared case-insensitively: CIDATA too
FILES = ("meta-data", "user-data", "vendor-data", "network-config")
FILE_MAX = 1024 * 1024
CMDLINE = "/proc/cmdline"
CMDLINE_MAX = 64 * 1024
REQUEST_TIMEOUT = (2.0, 10.0)


@attrs.frozen
class SeedLocation:
    """Where a seed was found: `kind` is "dir", "volume" or "url"."""

    kind: str
    shown: str  # for logs and reasons: never a URL's query
    path: str = ""  # "dir": the directory (under the root); "url": the base URL
    volume: media.Volume | None = None


def read_cmdline(root: str) -> CmdlineSeed | None:
    """`ds=nocloud...` from ROOT/proc/cmdline, or None (also when it cannot be read)."""
    try:
        with open(under(root, CMDLINE), "rb") as f:
            text = f.read(CMDLINE_MAX).decode("utf-8", "replace")
    except OSError:
        return None
    return cmdline_seed(text)


def file_url(base: str, name: str) -> str:
    """cloud-init's rule: `%s` in the base is replaced by the file name; otherwise the
    name is appended, after a `/` added when the base has neither one nor a query."""
    if "%s" in base:
        return base.replace("%s", name)
    if not base.endswith("/") and not urlsplit(base).query:
        base += "/"
    return base + name


def _read_local(path: str, name: str, limit: int) -> bytes | None:
    """A seed directory's file: None when absent; FileTooLarge past `limit`."""
    try:
        # O_NONBLOCK: a FIFO planted as meta-data must not hold the agent.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MetadataUnavailable(f"{name}: cannot open ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            return None
        if not stat.S_ISREG(info.st_mode):
            raise MetadataUnavailable(f"{name} is not a regular file")
        if info.st_size > limit:
            raise media.FileTooLarge(name, info.st_size, limit)
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise MetadataUnavailable(f"{name}: read failed ({exc.strerror})") from exc
    if len(data) > limit:
        raise media.FileTooLarge(name, len(data), limit)
    return data


def load_yaml(data: bytes, name: str) -> object:
    """The YAML value of a seed file, or Unreadable(reason): never an exception."""
    try:
        import yaml  # only NoCloud needs PyYAML; other platforms run without it
    except ImportError as exc:
        raise MetadataUnavailable("reading a NoCloud seed needs PyYAML (Debian: python3-yaml)") from exc
    try:
        return yaml.safe_load(data)
    except RecursionError:
        return Unreadable(f"{name} is nested too deeply to read")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        return Unreadable(f"{name} is not valid YAML{where}: {exc.problem or exc.context or 'parse error'}")
    except yaml.YAMLError:
        return Unreadable(f"{name} is not valid YAML")
    except Exception as exc:  # e.g. an integer of a million digits, a bad date
        return Unreadable(f"{name} holds a value YAML cannot build ({exc.__class__.__name__})")


class NoCloudMetadata:
    platform = PLATFORM

    def __init__(
        self,
        *,
        root: str = "/",
        seed_dir: str = NoCloud().seed_dir,
        url: str | None = None,
        poll_interval: float = NoCloud().poll_interval,
        backoff_max: float = 30.0,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        file_max: int = FILE_MAX,
    ) -> None:
        self.root = root
        self.seed_dir = seed_dir
        self.url = url
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.file_max = file_max
        self._stop = threading.Event()
        # Identity only: requests would otherwise decode a gzip body of any size.
        self._session = http.new_session({"Accept-Encoding": "identity"})

    # -------------------------------------------------------------- locating

    def locate(self) -> tuple[SeedLocation, CmdlineSeed | None]:
        """The seed to read (first found, see the module docstring) and the command line's
        `ds=nocloud` values; MetadataUnavailable when there is none."""
        cmdline = read_cmdline(self.root)
        seed_dir = under(self.root, self.seed_dir)
        if os.path.lexists(os.path.join(seed_dir, "meta-data")):
            return SeedLocation("dir", f"seed directory {self.seed_dir}", path=seed_dir), cmdline
        volume = labelled_volume(self.root, LABELS)
        if volume is not None:
            return SeedLocation("volume", volume.describe(self.root), volume=volume), cmdline
        seedfrom = self.url or (cmdline.seedfrom if cmdline else None)
        if seedfrom:
            return self._seedfrom(seedfrom), cmdline
        said = (
            f"ds={cmdline.ds} on the kernel command line names no s=URL"
            if cmdline
            else ("no ds=nocloud;s=URL on the kernel command line")
        )
        raise MetadataUnavailable(
            f"no NoCloud seed: no meta-data in {self.seed_dir}, no volume labelled cidata, {said}"
        )

    def _seedfrom(self, value: str) -> SeedLocation:
        if value.startswith("file://"):
            value = value[len("file://") :]
        if value.startswith("/"):
            return SeedLocation("dir", f"seed directory {value}", path=under(self.root, value))
        scheme = urlsplit(value).scheme.lower()
        if scheme not in ("http", "https"):
            raise MetadataUnavailable(
                f"NoCloud seedfrom {scheme or value[:40]!r} is neither http(s) nor a local path"
            )
        return SeedLocation("url", f"seed URL {shown_url(value)}", path=value)

    # -------------------------------------------------------------- reading

    def _files(self, seed: SeedLocation) -> dict[str, bytes | Unreadable | None]:
        if seed.kind == "dir":
            return read_files(
                FILES, lambda name: _read_local(os.path.join(seed.path, name), name, self.file_max)
            )
        if seed.kind == "volume":
            assert seed.volume is not None
            try:
                with media.open_volume(seed.volume) as reader:
                    return read_files(FILES, lambda name: reader.read(name, self.file_max))
            except media.MediaError as exc:
                raise MetadataUnavailable(f"{seed.shown}: {exc}") from exc
        return read_files(FILES, lambda name: self._fetch(seed.path, name))

    def _fetch(self, base: str, name: str) -> bytes | None:
        url = file_url(base, name)
        fetched = fetch_file(
            self._session, url, f"NoCloud seed {name}", name, timeout=self.timeout, limit=self.file_max
        )
        if fetched is None and name == "meta-data":
            raise MetadataUnavailable(f"NoCloud seed URL {shown_url(url)} answered 404 for meta-data")
        return None if fetched is None else fetched[0]

    def read(self, seed: SeedLocation, cmdline: CmdlineSeed | None) -> Snapshot:
        """One snapshot from `seed`; MetadataUnavailable with a reason when it cannot be used."""
        files = self._files(seed)
        raw_meta = files["meta-data"]
        if raw_meta is None:
            raise MetadataUnavailable(f"NoCloud {seed.shown} has no meta-data")
        if isinstance(raw_meta, Unreadable):
            raise MetadataUnavailable(f"NoCloud {seed.shown} refused: {raw_meta.reason}")
        meta = load_yaml(raw_meta, "meta-data")
        if isinstance(meta, Unreadable):
            raise MetadataUnavailable(f"NoCloud {seed.shown} refused: {meta.reason}")
        overrides = cmdline.overrides() if cmdline else {}
        if overrides and isinstance(meta, dict):
            meta = {**meta, **overrides}
        network: object = files["network-config"]
        if isinstance(network, bytes):
            network = load_yaml(network, "network-config")
        metadata = http.parse_or_unavailable(
            lambda document: parse_nocloud(
                document,
                user_data=files["user-data"],
                vendor_data=files["vendor-data"],
                network_config=network,
                source=seed.shown,
            ),
            meta,
            f"NoCloud {seed.shown}",
        )
        return Snapshot(metadata, files_tag(files, repr(sorted(overrides.items()))))

    # -------------------------------------------------------------- the port

    def get(self) -> Snapshot:
        seed, cmdline = self.locate()
        return self.read(seed, cmdline)

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
        """A snapshot from wherever the seed is now; a URL seed is polled from then on."""
        seed, cmdline = self.locate()
        snapshot = self.read(seed, cmdline)
        if seed.kind != "url":
            return snapshot, None  # local media do not change
        return snapshot, lambda _etag: self.read(seed, cmdline)

    def close(self) -> None:
        self._stop.set()
        self._session.close()


def _open(options: ProviderOptions) -> NoCloudMetadata:
    settings = options.config.NoCloud
    return NoCloudMetadata(
        root=options.root,
        seed_dir=settings.seed_dir,
        url=options.url,
        poll_interval=settings.poll_interval,
        backoff_max=options.backoff_max,
    )


def _local(options: ProviderOptions) -> str | None:
    """A seed on this machine: the seed directory, a cidata volume, or ds=nocloud on the command line."""
    seed_dir = options.config.NoCloud.seed_dir
    if os.path.lexists(os.path.join(under(options.root, seed_dir), "meta-data")):
        return f"seed directory {seed_dir} holds meta-data"
    volume = labelled_volume(options.root, LABELS)
    if volume is not None:
        return f"{volume.describe(options.root)} found"
    cmdline = read_cmdline(options.root)
    if cmdline is not None:
        return f"ds={cmdline.ds} on the kernel command line"
    return None


PROVIDER = ProviderSpec(name=PLATFORM, open=_open, local=_local, probe=None)
