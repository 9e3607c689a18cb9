"""Following metadata on platforms without a long poll: fetch on an interval, yield on change.

Every watch, long poll or not, shares the same failure handling: capped
backoff with jitter, one log line per kind of failure (not per retry) and
one when the source answers again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping

from guestagent.domain.backoff import Backoff
from guestagent.domain.platforms.common import Unreadable
from guestagent.ports.metadata import MetadataDisabled, MetadataUnavailable, Snapshot

log = logging.getLogger(__name__)


def content_tag(*parts: bytes | str) -> str:
    """A stable version tag for platforms that have no ETag: a digest of what was read."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:32]


class FailureLog:
    """Says a failure once per distinct reason, and once that it is over."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self.failing: str | None = None

    def failed(self, exc: Exception, delay: float) -> None:
        if str(exc) != self.failing:
            self._log.warning("%s; retrying with backoff (next in %.1fs)", exc, delay)
            self.failing = str(exc)

    def answered(self) -> None:
        if self.failing is not None:
            self._log.info("metadata source is answering again")
            self.failing = None


def follow(
    fetch: Callable[[str], Snapshot],
    last_etag: str | None,
    stop: threading.Event,
    *,
    backoff_max: float,
    pause: float,
) -> Iterator[Snapshot]:
    """Yield each snapshot whose tag differs from the last one yielded.

    `fetch(etag)` may block (a long poll) or return at once (a poll); `pause`
    is how long to wait after an unchanged answer (0 for a long poll, which
    waits on the server side). MetadataDisabled ends the watch for good.
    """
    backoff = Backoff(cap=backoff_max)
    failures = FailureLog()
    etag = last_etag or ""
    while not stop.is_set():
        try:
            snapshot = fetch(etag)
        except MetadataDisabled as exc:
            log.error("%s; not asking again", exc)
            return
        except MetadataUnavailable as exc:
            if stop.is_set():
                return
            delay = backoff.next_delay()
            failures.failed(exc, delay)
            stop.wait(delay)
            continue
        failures.answered()
        backoff.reset()
        if snapshot.etag != etag:
            etag = snapshot.etag
            yield snapshot
        if pause:
            stop.wait(pause)


def files_tag(files: Mapping[str, bytes | Unreadable | None], *extra: str) -> str:
    """The content tag of what `read_files` read (and of `extra`, e.g. overrides)."""
    parts: list[bytes | str] = []
    for value in files.values():
        parts.append(b"-" if value is None else b"!" if isinstance(value, Unreadable) else b"+" + value)
    parts.extend(extra)
    return content_tag(*parts)


def watch_snapshots(
    read: Callable[[], tuple[Snapshot, Callable[[str], Snapshot] | None]],
    last_etag: str | None,
    stop: threading.Event,
    *,
    backoff_max: float,
    logger: logging.Logger,
    poll_interval: float = 0.0,
) -> Iterator[Snapshot]:
    """Read until a snapshot comes (capped backoff between failures, each reason logged
    once) and yield it unless the caller has it already. Then, when `read` gave a poller
    too (a source that can change), follow it every `poll_interval` seconds; when it gave
    None (media do not change while the system runs), wait for `stop`."""
    backoff = Backoff(cap=backoff_max)
    failures = FailureLog(logger)
    while not stop.is_set():
        try:
            snapshot, poller = read()
        except MetadataUnavailable as exc:
            if stop.is_set():
                return
            delay = backoff.next_delay()
            failures.failed(exc, delay)
            stop.wait(delay)
            continue
        failures.answered()
        if snapshot.etag != last_etag:
            yield snapshot
        if poller is None:
            break  # nothing more to say until close()
        if stop.wait(poll_interval):
            return
        pause = max(0.01, float(poll_interval))
        yield from follow(poller, snapshot.etag, stop, backoff_max=backoff_max, pause=pause)
        return
    stop.wait()
