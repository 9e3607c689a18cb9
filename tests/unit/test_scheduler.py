"""Which subsystems a pass runs: changed inputs, due wake times, retries after failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import gce
from guestagent.services.context import Context
from guestagent.services.reconcile import Scheduler
from guestagent.services.subsystem import Outcome
from tests.fakes import FixedClock
from tests.gce_metadata import gce_md

T0 = datetime(2026, 11, 23, tzinfo=UTC)


@attrs.define
class Probe:
    name: str
    key: str
    fail: bool = False
    crash: bool = False
    wake_in: timedelta | None = None
    runs: int = 0

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return True

    def inputs(self, metadata: InstanceMetadata) -> object:
        return gce(metadata).attribute(self.key)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        self.runs += 1
        if self.crash:
            raise RuntimeError("boom")
        wake = ctx.clock.now() + self.wake_in if self.wake_in else None
        return Outcome(self.name, failures=("nope",) if self.fail else (), wake_at=wake)


def ctx(clock: FixedClock) -> Context:
    return Context(config=Config(), fs=None, runner=None, users=None, clock=clock)  # type: ignore[arg-type]


def md(**attrs_: str) -> InstanceMetadata:
    return gce_md("1", instance_attributes=attrs_)


def test_only_subsystems_whose_inputs_changed_run_again() -> None:
    clock = FixedClock(T0)
    a, b = Probe("a", "ka"), Probe("b", "kb")
    scheduler = Scheduler([a, b])
    scheduler.run_due(ctx(clock), md(ka="1", kb="1"))
    scheduler.run_due(ctx(clock), md(ka="2", kb="1"))
    scheduler.run_due(ctx(clock), md(ka="2", kb="1"))
    assert (a.runs, b.runs) == (2, 1)


def test_a_crashing_subsystem_does_not_stop_the_others() -> None:
    clock = FixedClock(T0)
    bad, good = Probe("bad", "k", crash=True), Probe("good", "k")
    outcomes = Scheduler([bad, good]).run_due(ctx(clock), md(k="1"))
    assert [o.subsystem for o in outcomes] == ["bad", "good"]
    assert "crashed" in outcomes[0].failures[0]
    assert outcomes[1].ok


def test_failures_are_retried_with_growing_delays() -> None:
    clock = FixedClock(T0)
    flaky = Probe("flaky", "k", fail=True)
    scheduler = Scheduler([flaky])
    meta = md(k="1")
    scheduler.run_due(ctx(clock), meta)
    assert scheduler.next_wake() == T0 + timedelta(seconds=2)
    scheduler.run_due(ctx(clock), meta)  # not due yet
    assert flaky.runs == 1
    clock.at = T0 + timedelta(seconds=2)
    scheduler.run_due(ctx(clock), meta)
    assert flaky.runs == 2
    assert scheduler.next_wake() == clock.at + timedelta(seconds=4)


def test_a_wake_time_runs_the_subsystem_without_a_change() -> None:
    clock = FixedClock(T0)
    expiring = Probe("accounts", "k", wake_in=timedelta(seconds=30))
    scheduler = Scheduler([expiring])
    meta = md(k="1")
    scheduler.run_due(ctx(clock), meta)
    clock.at = T0 + timedelta(seconds=29)
    scheduler.run_due(ctx(clock), meta)
    assert expiring.runs == 1
    clock.at = T0 + timedelta(seconds=30)
    scheduler.run_due(ctx(clock), meta)
    assert expiring.runs == 2


def test_lanes_run_side_by_side_and_keep_their_order_inside() -> None:
    """Different lanes overlap (host keys need not wait for useradd); one lane keeps its order."""
    import threading

    met = threading.Event()
    order: list[str] = []

    @attrs.define
    class Waiter(Probe):
        def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
            order.append(self.name)
            # Only returns because the other lane runs at the same time and sets the event.
            assert met.wait(timeout=5), "lanes did not run side by side"
            return Outcome(self.name)

    @attrs.define
    class Setter(Probe):
        def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
            order.append(self.name)
            met.set()
            return Outcome(self.name)

    nics, routes, keys = Setter("nics", "k"), Setter("routes", "k"), Waiter("keys", "k")
    scheduler = Scheduler([keys, nics, routes], lanes=[("keys",), ("nics", "routes")])
    outcomes = scheduler.run_due(ctx(FixedClock(T0)), md(k="1"))
    assert [o.subsystem for o in outcomes] == ["keys", "nics", "routes"]  # registry order
    assert all(o.ok for o in outcomes)
    assert order.index("nics") < order.index("routes")


@attrs.define
class LateProbe(Probe):
    after_ready: bool = True


def test_after_ready_subsystems_wait_for_the_pass_after_ready() -> None:
    clock = FixedClock(T0)
    users, scripts = Probe("accounts", "k"), LateProbe("firstboot", "k")
    scheduler = Scheduler([users, scripts])
    first = scheduler.run_due(ctx(clock), md(k="1"), before_ready=True)
    assert [o.subsystem for o in first] == ["accounts"] and scripts.runs == 0
    second = scheduler.run_due(ctx(clock), md(k="1"))
    assert [o.subsystem for o in second] == ["firstboot"] and (users.runs, scripts.runs) == (1, 1)


def test_a_lane_belongs_to_one_pass_at_a_time_and_its_times_wait_for_it() -> None:
    """The daemon runs what waits for READY beside its loop: a pass started meanwhile leaves
    out the lane still running (a second ssh-keygen on the same key would race it), runs the
    others, and does not count the busy lane's past-due retry as a reason to wake."""
    import threading

    entered, release = threading.Event(), threading.Event()

    @attrs.define
    class Slow(Probe):
        def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
            self.runs += 1
            entered.set()
            assert release.wait(timeout=30), "never released"
            return Outcome(self.name)

    clock = FixedClock(T0)
    slow, flaky, users = Slow("host_keys", "k"), Probe("setup", "k", fail=True), Probe("accounts", "u")
    scheduler = Scheduler([flaky, slow, users], lanes=[("setup", "host_keys"), ("accounts",)])
    release.set()
    scheduler.run_due(ctx(clock), md(k="1", u="1"))  # setup fails; the lane goes on and ends
    release.clear()
    entered.clear()
    slow.runs, flaky.runs, users.runs = 0, 0, 0
    clock.at = T0 + timedelta(seconds=5)  # setup's retry (2 s) is past due
    background = threading.Thread(target=lambda: scheduler.run_due(ctx(clock), md(k="2", u="1")))
    background.start()
    try:
        assert entered.wait(timeout=30)
        outcomes = scheduler.run_due(ctx(clock), md(k="3", u="2"))
        assert [o.subsystem for o in outcomes] == ["accounts"]
        assert scheduler.next_wake() is None  # setup's past-due retry is in the busy lane
    finally:
        release.set()
        background.join(30)
    assert (flaky.runs, slow.runs, users.runs) == (1, 1, 1)
    assert scheduler.next_wake() is not None  # the lane is free: its retry counts again
    release.set()
    clock.at = T0 + timedelta(minutes=1)
    outcomes = scheduler.run_due(ctx(clock), md(k="3", u="2"))  # what the lane held back
    assert [o.subsystem for o in outcomes] == ["setup", "host_keys"] and slow.runs == 2
