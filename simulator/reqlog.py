"""The request log: one entry per request, what a test asserts on afterwards."""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

from .httpcore import Request, Response

MAX_ENTRIES = 100_000


class RequestLog:
    """Keeps (request, response, duration) and builds the dicts only when
    asked: recording stays cheap on the hot path (10,000 released polls)."""

    def __init__(self, maxlen: int = MAX_ENTRIES) -> None:
        self._entries: collections.deque[tuple[Request, Response | None, float]] = (
            collections.deque(maxlen=maxlen))
        self.total = 0

    def record(self, req: Request, resp: Response | None, duration: float) -> None:
        self.total += 1
        self._entries.append((req, resp, duration))

    @staticmethod
    def _entry(req: Request, resp: Response | None, duration: float) -> dict[str, Any]:
        status = resp.status if resp is not None else 0
        if resp is not None and resp.action.value != "send":
            outcome = resp.action.value
        else:
            outcome = "sent" if resp is not None else "client-closed"
        return {
            "time": dt.datetime.fromtimestamp(req.wall, dt.UTC).isoformat(timespec="milliseconds"),
            "client": f"{req.client[0]}:{req.client[1]}",
            "server_port": req.local[1],
            "instance": req.instance,
            "platform": req.platform,
            "method": req.method,
            "path": req.path,
            "query": dict(req.query),
            "headers": dict(req.headers),
            "status": status,
            "outcome": outcome,
            "fault": req.fault,
            "duration": round(duration, 6),
        }

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        """Entries with sequence number >= since (the first request ever is 0;
        the oldest entries drop out once more than MAX_ENTRIES are kept)."""
        first = self.total - len(self._entries)
        skip = max(0, since - first)
        return [self._entry(*e) for i, e in enumerate(self._entries) if i >= skip]

    def clear(self) -> None:
        self._entries.clear()
