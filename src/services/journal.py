"""What one apply pass did and what failed, logged as it happens."""

from __future__ import annotations

import logging
from typing import Protocol


class Describable(Protocol):
    def describe(self) -> str: ...


class ApplyJournal:
    """Every subsystem's apply loop keeps the same two lists and logs the same way."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self.done: list[str] = []
        self.failures: list[str] = []

    def did(self, action: Describable) -> None:
        text = action.describe()
        self.done.append(text)
        self._log.info("%s", text)

    def failed(self, message: str) -> None:
        self.failures.append(message)
        self._log.error("%s", message)

    def result(self) -> tuple[list[str], list[str]]:
        return self.done, self.failures
