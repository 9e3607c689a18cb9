"""How every subsystem reports: what one apply pass did and what failed, and
warnings that are worth one log line per process rather than one per event."""

from __future__ import annotations

import logging
from typing import Protocol


class Describable(Protocol):
    def describe(self) -> str: ...


class ApplyJournal:
    """Every subsystem's apply loop keeps the same two lists and logs the same way.

    `prefix` (e.g. "routes: ") goes on the log lines only, not on the texts kept.
    """

    def __init__(self, log: logging.Logger, prefix: str = "") -> None:
        self._log = log
        self._prefix = prefix
        self.done: list[str] = []
        self.failures: list[str] = []

    def did(self, action: Describable) -> None:
        text = action.describe()
        self.done.append(text)
        self._log.info("%s%s", self._prefix, text)

    def failed(self, message: str) -> None:
        self.failures.append(message)
        self._log.error("%s%s", self._prefix, message)

    def result(self) -> tuple[list[str], list[str]]:
        return self.done, self.failures


class WarnOnce:
    """The daemon plans on every metadata change: the same refusal is worth one
    warning for the life of the process, not one per event."""

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._said: set[str] = set()

    def warn(self, log: logging.Logger, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning("%s%s", self._prefix, message)
