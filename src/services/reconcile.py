"""One pass over the subsystems, and the memory that decides which are due next."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.context import Context
from guestagent.services.subsystem import Outcome, Subsystem

RETRY_BASE = timedelta(seconds=2)
RETRY_CAP = timedelta(minutes=5)


def run_one(ctx: Context, subsystem: Subsystem, metadata: InstanceMetadata) -> Outcome:
    """Reconcile one subsystem; whatever it raises becomes a failure, never a crash."""
    try:
        return subsystem.reconcile(ctx, metadata)
    except Exception as exc:  # one subsystem must never stop the others
        ctx.log.exception("%s: unexpected error", subsystem.name)
        return Outcome(subsystem.name, failures=(f"{subsystem.name} crashed: {exc!r}",))


@attrs.define
class _State:
    inputs: object = None
    succeeded: bool = False
    wake_at: datetime | None = None
    retry_at: datetime | None = None
    failures_in_row: int = 0


class Scheduler:
    """Runs a subsystem when its inputs changed, its wake time came, or its retry is due."""

    def __init__(self, subsystems: Sequence[Subsystem]) -> None:
        self.subsystems = list(subsystems)
        self._state: dict[str, _State] = {s.name: _State() for s in self.subsystems}

    def due(self, metadata: InstanceMetadata, now: datetime) -> list[Subsystem]:
        out = []
        for subsystem in self.subsystems:
            state = self._state[subsystem.name]
            changed = not state.succeeded or state.inputs != subsystem.inputs(metadata)
            if state.retry_at is not None:
                changed = changed and state.retry_at <= now
            woke = state.wake_at is not None and state.wake_at <= now
            if changed or woke:
                out.append(subsystem)
        return out

    def record(
        self, subsystem: Subsystem, metadata: InstanceMetadata, outcome: Outcome, now: datetime
    ) -> None:
        state = self._state[subsystem.name]
        state.inputs = subsystem.inputs(metadata)
        state.wake_at = outcome.wake_at
        if outcome.ok:
            state.succeeded, state.retry_at, state.failures_in_row = True, None, 0
        else:
            state.succeeded = False
            state.failures_in_row += 1
            delay = min(RETRY_CAP, RETRY_BASE * (2 ** (state.failures_in_row - 1)))
            state.retry_at = now + delay

    def next_wake(self) -> datetime | None:
        times = [t for s in self._state.values() for t in (s.wake_at, s.retry_at) if t is not None]
        return min(times, default=None)

    def run_due(self, ctx: Context, metadata: InstanceMetadata) -> list[Outcome]:
        outcomes = []
        for subsystem in self.due(metadata, ctx.clock.now()):
            if not subsystem.enabled(ctx, metadata):
                outcome = Outcome(subsystem.name)
            else:
                outcome = run_one(ctx, subsystem, metadata)
            self.record(subsystem, metadata, outcome, ctx.clock.now())
            outcomes.append(outcome)
        return outcomes
