"""Following metadata on platforms without a long poll: fetch on an interval, yield on change.

Every watch, long poll or not, shares the same failure handling: capped
backoff with jitter, one log line per kind of failure (not per retry) and
one when the source answers again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator

from guestagent.domain.backoff import Backoff
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
