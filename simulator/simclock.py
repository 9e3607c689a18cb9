"""The simulator's own clock: wall time plus an offset a test may move.

Token expiry and key expiry are judged against this clock so tests can jump
hours ahead without sleeping and without touching the machine's clock.
"""

from __future__ import annotations

import time


class SimClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
