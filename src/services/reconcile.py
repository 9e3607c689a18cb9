"""One pass over the subsystems, and the memory that decides which are due next."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import attrs

from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.context import Context
from guestagent.services.journal import WarnOnce
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
    """Runs a subsystem when its inputs changed, its wake time came, or its retry is due.

    Passes may run from several threads at once (the daemon runs what waits for READY
    beside its loop): a lane belongs to one pass at a time, and a pass leaves out the
    lanes another is running. Whoever started that other pass looks again when it ends.
    """

    def __init__(self, subsystems: Sequence[Subsystem], lanes: Sequence[Sequence[str]] = ()) -> None:
        """`lanes` groups subsystem names that must run one after the other, in that order
        (NICs before routes); different lanes touch different files and run side by side,
        so a slow host-key generation does not hold up account creation. A subsystem in no
        lane gets a lane of its own."""
        self.subsystems = list(subsystems)
        lane_of = {name: i for i, lane in enumerate(lanes) for name in lane}
        self._lane = {s.name: lane_of.get(s.name, len(lanes) + i) for i, s in enumerate(self.subsystems)}
        self._state: dict[str, _State] = {s.name: _State() for s in self.subsystems}
        self._said = WarnOnce()
        self._lock = threading.Lock()
        self._busy: set[int] = set()  # lanes a pass is running

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
        if outcome.held:
            # Not run, so nothing settled: the next snapshot is looked at afresh. No retry
            # timer and no wake time (only new metadata can make the input readable; a wake
            # time left from an earlier pass would bring the loop straight back here).
            state.succeeded, state.retry_at, state.wake_at = False, None, None
            return
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
        """The earliest wake or retry time, leaving out lanes a pass is running: those are
        looked at when it ends, and a time already past there would make a loop spin."""
        with self._lock:
            busy = set(self._busy)
        times = [
            t
            for name, state in self._state.items()
            if self._lane[name] not in busy
            for t in (state.wake_at, state.retry_at)
            if t is not None
        ]
        return min(times, default=None)

    def _run_lane(self, ctx: Context, metadata: InstanceMetadata, lane: list[Subsystem]) -> list[Outcome]:
        try:
            return self._run_in_order(ctx, metadata, lane)
        finally:
            with self._lock:  # free as soon as it ends, not when the slowest lane of the pass does
                self._busy.discard(self._lane[lane[0].name])

    def _run_in_order(self, ctx: Context, metadata: InstanceMetadata, lane: list[Subsystem]) -> list[Outcome]:
        outcomes = []
        for subsystem in lane:
            held = metadata.held(subsystem.name)
            if not subsystem.enabled(ctx, metadata):
                outcome = Outcome(subsystem.name, skipped=True)
            elif held:
                for rejection in held:
                    self._said.warn(ctx.log, f"{subsystem.name}: kept as is: {rejection.describe()}")
                outcome = Outcome(subsystem.name, held=tuple(r.describe() for r in held))
            else:
                # Each refused input is the business of the subsystem it was meant for alone.
                for rejection in metadata.rejections_for(subsystem.name):
                    self._said.warn(ctx.log, f"{subsystem.name}: ignored {rejection.describe()}")
                outcome = run_one(ctx, subsystem, metadata)
            self.record(subsystem, metadata, outcome, ctx.clock.now())
            outcomes.append(outcome)
        return outcomes

    def run_due(
        self, ctx: Context, metadata: InstanceMetadata, *, before_ready: bool = False
    ) -> list[Outcome]:
        """Run what is due, lanes side by side; outcomes come back in registry order.

        `before_ready` leaves out the subsystems marked `after_ready` (first-boot
        scripts): the daemon's first pass, which sshd waits for, does not wait for them.
        """
        lanes: dict[int, list[Subsystem]] = {}
        with self._lock:
            for subsystem in self.due(metadata, ctx.clock.now()):
                if before_ready and getattr(subsystem, "after_ready", False):
                    continue
                lane = self._lane[subsystem.name]
                if lane not in self._busy:
                    lanes.setdefault(lane, []).append(subsystem)
            self._busy.update(lanes)
        if len(lanes) <= 1:
            results = [self._run_lane(ctx, metadata, lane) for lane in lanes.values()]
        else:
            with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="lane") as pool:
                results = list(pool.map(lambda lane: self._run_lane(ctx, metadata, lane), lanes.values()))
        by_name = {o.subsystem: o for lane_outcomes in results for o in lane_outcomes}
        return [by_name[s.name] for s in self.subsystems if s.name in by_name]
