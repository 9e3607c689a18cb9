"""The daemon's loop in a thread against the fakes: first pass, following changes, outages,
a watch that breaks, a switched-off metadata service, a prompt stop, a held subsystem.

Time bounds must hold on a loaded 2-core CI machine: waits are generous upper bounds that
end as soon as the condition holds; the loop's own constants are made small instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import attrs
import pytest

from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata, Rejection
from guestagent.entrypoints import daemon as daemon_mod
from guestagent.entrypoints.daemon import Daemon
from guestagent.services.accounts import AccountsSubsystem
from guestagent.services.context import Context
from guestagent.services.subsystem import Outcome, Subsystem
from tests.fakes import FakeMetadataSource, FixedClock, InMemoryFileSystem, InMemoryUsers, RecordingRunner
from tests.gce_metadata import from_attributes
from tests.keys import ED25519, ED25519_BOB, RSA

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MARK = "# Added by Google"
# Upper bounds only: every wait returns as soon as its condition holds.
PROMPT = 10.0


def wait_until(condition: Callable[[], object], timeout: float = PROMPT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.01)


@attrs.define
class Probe:
    """A subsystem that records the hostname of each snapshot it reconciled."""

    name: str = "probe"
    seen: list[str] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return True

    def inputs(self, metadata: InstanceMetadata) -> object:
        return metadata.hostname

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        with self._lock:
            self.seen.append(metadata.hostname)
        return Outcome(self.name, actions=(f"saw {metadata.hostname}",))

    def last(self) -> str | None:
        with self._lock:
            return self.seen[-1] if self.seen else None


def md(hostname: str, **keys: list[str]) -> InstanceMetadata:
    value = "\n".join(f"{u}:{k}" for u, ks in keys.items() for k in ks)
    return attrs.evolve(from_attributes({"ssh-keys": value} if keys else {}), hostname=hostname)


@attrs.define
class Harness:
    source: FakeMetadataSource
    fs: InMemoryFileSystem
    users: InMemoryUsers
    runner: RecordingRunner
    ctx: Context
    notified: list[str]
    stop: threading.Event = attrs.field(factory=threading.Event)
    thread: threading.Thread | None = None
    returned: list[int] = attrs.field(factory=list)

    def start(self, subsystems: Sequence[Subsystem], lanes: Sequence[Sequence[str]] = ()) -> Daemon:
        daemon = Daemon(self.ctx, self.source, subsystems, lanes, backoff_max=1.0, stop=self.stop)
        self.thread = threading.Thread(target=lambda: self.returned.append(daemon.run()), daemon=True)
        self.thread.start()
        return daemon

    def stop_and_join(self) -> float:
        """Set the stop flag; how long run() took to return after it."""
        assert self.thread is not None
        started = time.monotonic()
        self.stop.set()
        self.thread.join(PROMPT)
        took = time.monotonic() - started
        assert not self.thread.is_alive(), f"run() still running {PROMPT}s after stop"
        assert self.returned == [0]
        return took

    def keys(self, user: str) -> str | None:
        return self.fs.read_text(f"/home/{user}/.ssh/authorized_keys")


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setattr(daemon_mod, "TICK", 0.02)
    monkeypatch.setattr(daemon_mod, "FIRST_FETCH_BACKOFF_MAX", 0.05)
    monkeypatch.setattr(daemon_mod, "WATCH_RESTART_MAX", 0.05)
    notified: list[str] = []

    def sd_notify(message: str) -> bool:
        notified.append(message)
        return True

    monkeypatch.setattr(daemon_mod, "sd_notify", sd_notify)

    fs = InMemoryFileSystem()
    fs.add_dir("/etc/skel")
    fs.add_dir("/home")
    users = InMemoryUsers(fs)
    runner = RecordingRunner(respond=users.respond)
    ctx = Context(config=Config(), fs=fs, runner=runner, users=users, clock=FixedClock(T0))
    h = Harness(FakeMetadataSource(platform="gce"), fs, users, runner, ctx, notified)
    yield h
    # never leave a loop running behind a failed test
    h.stop.set()
    h.source.close()
    if h.thread is not None:
        h.thread.join(PROMPT)


def test_first_pass_then_published_changes_are_followed(harness: Harness) -> None:
    probe = Probe()
    first = harness.source.publish(md("h1", alice=[ED25519]))
    harness.start([AccountsSubsystem(), probe], lanes=(("accounts", "probe"),))

    wait_until(lambda: probe.last() == "h1")
    assert harness.keys("alice") == f"{MARK}\n{ED25519}\n"
    assert "READY=1\nSTATUS=provisioned; watching metadata" in harness.notified
    assert harness.source.wait_calls("watch", 1)
    assert ("watch", first.etag) in harness.source.calls

    harness.source.publish(md("h2", alice=[RSA], bob=[ED25519_BOB]))
    wait_until(lambda: probe.last() == "h2")
    assert harness.keys("alice") == f"{MARK}\n{RSA}\n"
    assert harness.keys("bob") == f"{MARK}\n{ED25519_BOB}\n"

    # a snapshot that changes only what the probe reads runs only the probe
    harness.source.wait_watching()
    writes = sum(harness.fs.writes.values())
    harness.source.publish(md("h3", alice=[RSA], bob=[ED25519_BOB]))
    wait_until(lambda: probe.last() == "h3")
    assert sum(harness.fs.writes.values()) == writes
    assert probe.seen == ["h1", "h2", "h3"]

    harness.stop_and_join()
    assert harness.source.closed
    assert harness.notified[-1] == "STOPPING=1"


def test_an_unexpected_error_in_the_first_fetch_does_not_kill_the_daemon(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    harness.source.raise_next(RecursionError("maximum recursion depth exceeded"), times=2)
    harness.source.fail_next(1, "connection refused")
    harness.start([probe])

    # it keeps asking: the two crashes, the outage, then "nothing published yet"
    assert harness.source.wait_calls("get", 5)
    assert probe.seen == []
    assert harness.thread is not None and harness.thread.is_alive()

    harness.source.publish(md("recovered"))
    wait_until(lambda: probe.last() == "recovered")
    assert any("metadata fetch failed (RecursionError)" in m for m in caplog.messages)
    harness.stop_and_join()


def test_a_watch_that_raises_at_once_is_started_again(harness: Harness) -> None:
    probe = Probe()
    first = harness.source.publish(md("h1"))
    harness.source.raise_next(RuntimeError("a bug in the watch"), where="watch")
    harness.start([probe])

    assert harness.source.wait_calls("watch", 2)
    assert [c for c in harness.source.calls if c[0] == "watch"][:2] == [("watch", first.etag)] * 2
    harness.source.publish(md("h2"))
    wait_until(lambda: probe.last() == "h2")
    harness.stop_and_join()


def test_a_watch_that_raises_while_waiting_is_started_again_and_later_snapshots_applied(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    harness.source.publish(md("h1"))
    harness.start([probe])
    wait_until(lambda: probe.last() == "h1")
    harness.source.publish(md("h2"))
    wait_until(lambda: probe.last() == "h2")
    assert harness.source.wait_watching()

    harness.source.raise_next(ValueError("garbage from the server"), where="watch")
    assert harness.source.wait_calls("watch", 2)
    # the new watch starts from the last snapshot seen, not from the first pass's
    assert harness.source.calls[-1] == ("watch", harness.source.current.etag)  # type: ignore[union-attr]
    harness.source.publish(md("h3"))
    wait_until(lambda: probe.last() == "h3")
    assert probe.seen == ["h1", "h2", "h3"]
    assert "metadata watch failed; starting it again" in caplog.messages
    harness.stop_and_join()


def test_metadata_disabled_at_first_fetch_stops_asking_but_stops_promptly(harness: Harness) -> None:
    probe = Probe()
    harness.source.publish(md("h1"))
    harness.source.disable("the instance metadata service is disabled (HTTP 403)")
    harness.start([probe])

    wait_until(lambda: any(n.startswith("READY=1") for n in harness.notified))
    # well past many retries at the (shortened) first-fetch backoff: no second request
    time.sleep(0.5)
    assert harness.source.count("get") == 1
    assert probe.seen == []
    assert "disabled" in harness.notified[0]

    assert harness.stop_and_join() < PROMPT


def test_stop_during_a_blocked_watch_returns_promptly(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_mod, "TICK", 0.25)  # the real one
    probe = Probe()
    harness.source.publish(md("h1"))
    harness.start([probe])
    assert harness.source.wait_watching()

    assert harness.stop_and_join() < PROMPT
    assert harness.source.closed
    wait_until(lambda: harness.source.watching == 0)


def test_stop_during_a_hanging_first_fetch_returns_promptly(harness: Harness) -> None:
    probe = Probe()
    harness.source.publish(md("h1"))
    harness.source.hang_gets()
    harness.start([probe])
    assert harness.source.wait_calls("get", 1)

    assert harness.stop_and_join() < PROMPT
    assert probe.seen == []


def test_a_held_subsystem_keeps_its_state_while_others_run(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    harness.source.publish(md("h1", alice=[ED25519]))
    # the probe runs after accounts in one lane: once it saw a snapshot, accounts is done with it
    harness.start([AccountsSubsystem(), probe], lanes=(("accounts", "probe"),))
    wait_until(lambda: probe.last() == "h1")
    assert harness.keys("alice") == f"{MARK}\n{ED25519}\n"
    harness.runner.calls.clear()
    harness.fs.reset_counts()

    # ssh-keys could not be read (not a string): read as empty it would take alice's keys away
    unreadable = Rejection("instance/attributes/ssh-keys", "is a JSON number, not a string", holds=True)
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        harness.source.publish(attrs.evolve(md("h2"), rejections=(unreadable,)))
        wait_until(lambda: probe.last() == "h2")
        harness.source.publish(attrs.evolve(md("h3"), rejections=(unreadable,)))
        wait_until(lambda: probe.last() == "h3")

    assert harness.keys("alice") == f"{MARK}\n{ED25519}\n"
    assert harness.fs.operations == []
    assert harness.runner.calls == []
    kept = [m for m in caplog.messages if m.startswith("accounts: kept as is")]
    assert kept == ["accounts: kept as is: instance/attributes/ssh-keys: is a JSON number, not a string"]

    # readable again: accounts acts on it at once
    harness.source.publish(md("h4", bob=[ED25519_BOB]))
    wait_until(lambda: probe.last() == "h4")
    assert harness.keys("alice") == ""
    assert harness.keys("bob") == f"{MARK}\n{ED25519_BOB}\n"
    harness.stop_and_join()


def test_a_key_expiring_while_running_is_removed_at_its_time_without_a_metadata_event(
    harness: Harness,
) -> None:
    clock = harness.ctx.clock
    assert isinstance(clock, FixedClock)
    key = " ".join(ED25519.split()[:2])  # without its comment: google-ssh's JSON is the comment
    expiring = f'{key} google-ssh {{"userName":"a@example.com","expireOn":"2026-03-01T00:05:00+0000"}}'
    harness.source.publish(md("h1", alice=[expiring], bob=[ED25519_BOB]))
    harness.start([AccountsSubsystem()])
    wait_until(lambda: harness.keys("alice") is not None and "expireOn" in harness.keys("alice"))  # type: ignore[operator]
    assert harness.source.wait_watching()

    clock.advance(6 * 60)
    wait_until(lambda: harness.keys("alice") == "")
    assert harness.keys("bob") == f"{MARK}\n{ED25519_BOB}\n"
    assert harness.source.count("get") == 1
    harness.stop_and_join()


def test_a_held_subsystem_past_its_wake_time_does_not_spin_the_loop(harness: Harness) -> None:
    clock = harness.ctx.clock
    assert isinstance(clock, FixedClock)
    harness.source.publish(md("h1", alice=[ED25519]))
    daemon = harness.start([AccountsSubsystem()])
    wait_until(lambda: harness.keys("alice") is not None)
    unreadable = Rejection("instance/attributes/ssh-keys", "is a JSON number, not a string", holds=True)
    harness.source.publish(attrs.evolve(md("h2"), rejections=(unreadable,)))
    assert harness.source.wait_watching()
    time.sleep(0.1)  # let the loop take the held snapshot

    passes = 0
    run_due = daemon.scheduler.run_due

    def counting(ctx: Context, metadata: InstanceMetadata) -> list[Outcome]:
        nonlocal passes
        passes += 1
        return run_due(ctx, metadata)

    daemon.scheduler.run_due = counting  # type: ignore[method-assign]
    # past the accounts subsystem's wake time (its periodic full pass): one look is due,
    # and the loop then waits again; it must not run pass after pass while nothing changes
    clock.advance(11 * 60)
    time.sleep(0.5)
    assert passes <= 5, f"{passes} passes in 0.5 s with nothing changing"
    assert harness.keys("alice") == f"{MARK}\n{ED25519}\n"
    harness.stop_and_join()


@attrs.define
class SlowAfterReady(Probe):
    """Like a first-boot script or an RSA key under TCG: runs after READY and takes long
    (until the test releases it)."""

    name: str = "slow"
    after_ready: bool = True
    release: threading.Event = attrs.field(factory=threading.Event)

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        outcome = super().reconcile(ctx, metadata)
        assert self.release.wait(timeout=60), "never released"
        return outcome


def test_what_runs_after_ready_does_not_hold_up_a_key_added_meanwhile(harness: Harness) -> None:
    slow, probe = SlowAfterReady(), Probe()
    harness.source.publish(md("h1", alice=[ED25519]))
    harness.start([AccountsSubsystem(), probe, slow], lanes=(("accounts", "probe"), ("slow",)))
    wait_until(lambda: slow.last() == "h1")  # the pass after READY is under way, and stays so
    assert harness.source.wait_watching()

    harness.source.publish(md("h2", alice=[ED25519], bob=[ED25519_BOB]))
    wait_until(lambda: probe.last() == "h2")
    assert harness.keys("bob") == f"{MARK}\n{ED25519_BOB}\n"
    assert slow.seen == ["h1"]  # not started a second time beside itself

    slow.release.set()
    wait_until(lambda: slow.last() == "h2")  # what it held back, with the newest snapshot
    assert slow.seen == ["h1", "h2"]
    harness.stop_and_join()
