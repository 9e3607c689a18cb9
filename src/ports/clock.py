"""Time, as a port, so the domain never reads the clock itself."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall-clock time (key expiry is wall-clock)."""
        ...

    def monotonic(self) -> float: ...
