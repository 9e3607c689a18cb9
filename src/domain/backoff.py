"""Capped exponential backoff with jitter: the one retry policy of every metadata client."""

from __future__ import annotations

import random


class Backoff:
    """Doubling delays up to `cap`, each drawn from its upper half so a fleet
    restarted together does not retry in lockstep."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def reset(self) -> None:
        self.failures = 0
