"""The long-running agent: first full reconcile, READY, then follow metadata changes."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from guestagent.adapters.sd_notify import sd_notify
from guestagent.domain.backoff import Backoff
from guestagent.domain.metadata import InstanceMetadata
from guestagent.entrypoints.bootstrap import Agent, Options, bootstrap, log
from guestagent.ports.metadata import MetadataDisabled, MetadataSource, MetadataUnavailable, Snapshot
from guestagent.services.context import Context
from guestagent.services.reconcile import Scheduler
from guestagent.services.subsystem import Outcome, Subsystem

# The longest the loop sleeps between looks at the stop flag: SIGTERM is
# honoured within this, whatever the long poll is doing.
TICK = 0.25
# Without metadata at boot, tell systemd we are up after this long anyway, so
# that sshd (ordered after us) is not held forever; provisioning continues.
READY_ANYWAY_AFTER = 90.0
# At boot the network comes up while the agent waits: look again every second.
FIRST_FETCH_BACKOFF_MAX = 1.0
# A watch that ended without being asked to (a bug, an unexpected error) starts again
# after this long at most; the daemon never goes on without following metadata.
WATCH_RESTART_MAX = 30.0


class Daemon:
    def __init__(
        self,
        ctx: Context,
        source: MetadataSource,
        subsystems: Sequence[Subsystem],
        lanes: Sequence[Sequence[str]] = (),
        *,
        backoff_max: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.ctx = ctx
        self.source = source
        self.backoff_max = backoff_max
        self.scheduler = Scheduler(subsystems, lanes)
        self.stop = stop if stop is not None else threading.Event()
        # Snapshots from the watcher; None asks the loop to look again at the current one
        # (the pass run beside the loop ended, and what it held back may be due).
        self._snapshots: queue.Queue[Snapshot | None] = queue.Queue()
        # Set by the loop after each pass: the watcher waits for it before asking again.
        self._acted = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.ctx.log.info("signal %d: stopping", signum)
        self.stop.set()
        self.end_commands()

    def end_commands(self) -> None:
        """End the commands a pass is running (useradd, ssh-keygen, DHCP) and start no more,
        so a stop is bounded by moments, not by the slowest command. A runner without
        `cancel` (an embedding program's own) is left to finish."""
        cancel = getattr(self.ctx.runner, "cancel", None)
        if cancel is not None:
            cancel()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _get_interruptibly(self) -> Snapshot | None:
        """source.get() in a helper thread, so SIGTERM is honoured even while a request hangs."""
        result: queue.Queue[Snapshot | MetadataUnavailable] = queue.Queue()

        def fetch() -> None:
            try:
                result.put(self.source.get())
            except MetadataUnavailable as exc:
                result.put(exc)
            except Exception as exc:  # whatever it is, the waiting loop must hear of it
                self.ctx.log.debug("metadata fetch raised", exc_info=True)
                result.put(MetadataUnavailable(f"metadata fetch failed ({exc.__class__.__name__})"))

        threading.Thread(target=fetch, name="first-fetch", daemon=True).start()
        while not self.stop.is_set():
            try:
                outcome = result.get(timeout=TICK)
            except queue.Empty:
                continue
            if isinstance(outcome, MetadataUnavailable):
                raise outcome
            return outcome
        return None

    def _first_snapshot(self) -> Snapshot | None:
        # At boot the metadata server is usually just late: retry at least every few
        # seconds so provisioning follows soon after it answers.
        backoff = Backoff(cap=min(FIRST_FETCH_BACKOFF_MAX, self.backoff_max))
        started = time.monotonic()
        told_ready = False
        last_error = None
        while not self.stop.is_set():
            try:
                return self._get_interruptibly()
            except MetadataDisabled as exc:
                # Asking again would only be a request storm against a switched-off service.
                self.ctx.log.error("%s; not asking again (restart the agent once it is enabled)", exc)
                sd_notify(f"READY=1\nSTATUS={exc}")
                self.stop.wait()
                return None
            except MetadataUnavailable as exc:
                if str(exc) != last_error:
                    self.ctx.log.warning("waiting for metadata: %s", exc)
                    last_error = str(exc)
            if not told_ready and time.monotonic() - started > READY_ANYWAY_AFTER:
                sd_notify("READY=1\nSTATUS=waiting for the metadata server")
                told_ready = True
            self.stop.wait(backoff.next_delay())
        return None

    def _watch(self, etag: str) -> None:
        """Follow the source until stopped; a watch that ends or raises is started again."""
        backoff = Backoff(cap=WATCH_RESTART_MAX)
        while not self.stop.is_set():
            try:
                for snapshot in self.source.watch(etag):
                    self._acted.clear()
                    self._snapshots.put(snapshot)
                    etag = snapshot.etag
                    backoff.reset()
                    # Ask again only once the loop has acted on it: preparing the next
                    # request would hold the interpreter while the loop wants it for the
                    # pass (~1 ms of every reaction), and what changes meanwhile is what
                    # the next request returns at once.
                    while not self._acted.wait(TICK) and not self.stop.is_set():
                        pass
                    if self.stop.is_set():
                        return
            except Exception:  # logged, then the watch starts again
                self.ctx.log.exception("metadata watch failed; starting it again")
            else:
                # A watch returns on its own only when the platform disabled its service.
                if not self.stop.is_set():
                    self.ctx.log.warning("metadata watch ended; following no further changes")
                return
            self.stop.wait(backoff.next_delay())

    def _after_ready(self, metadata: InstanceMetadata) -> None:
        self._pass(metadata)
        self._snapshots.put(None)

    def _pass(self, metadata: InstanceMetadata, *, before_ready: bool = False) -> list[Outcome]:
        try:
            outcomes = self.scheduler.run_due(self.ctx, metadata, before_ready=before_ready)
        except Exception:  # subsystems are isolated already; this guards the scheduler
            self.ctx.log.exception("reconcile pass failed; the next snapshot or wake-up tries again")
            return []
        for outcome in outcomes:
            for failure in outcome.failures:
                self.ctx.log.error("%s: %s", outcome.subsystem, failure)
        return outcomes

    def run(self) -> int:
        snapshot = self._first_snapshot()
        if snapshot is None:
            sd_notify("STOPPING=1")
            self.source.close()
            return 0
        self._pass(snapshot.metadata, before_ready=True)
        sd_notify("READY=1\nSTATUS=provisioned; watching metadata")
        self.ctx.log.info("first pass done; watching for metadata changes")
        watcher = threading.Thread(target=self._watch, args=(snapshot.etag,), daemon=True)
        watcher.start()
        # What waited for READY (the RSA host key, first-boot scripts, disks) may take
        # minutes: it runs beside the loop, so a key added meanwhile is applied at once.
        after_ready = threading.Thread(
            target=self._after_ready, args=(snapshot.metadata,), name="after-ready", daemon=True
        )
        after_ready.start()
        current = snapshot.metadata
        while not self.stop.is_set():
            timeout = TICK
            wake = self.scheduler.next_wake()
            if wake is not None:
                timeout = max(0.0, min(TICK, (wake - self.ctx.clock.now()).total_seconds()))
            try:
                items = [self._snapshots.get(timeout=timeout)]
                while not self._snapshots.empty():  # only the newest matters
                    items.append(self._snapshots.get_nowait())
                current = next((i.metadata for i in reversed(items) if i is not None), current)
            except queue.Empty:
                wake = self.scheduler.next_wake()
                if wake is None or wake > self.ctx.clock.now():
                    continue
            if self.stop.is_set():
                break
            self._pass(current)
            self._acted.set()
        # A stop waits for the pass under way there too (its commands were ended): no torn work.
        after_ready.join()
        sd_notify("STOPPING=1")
        # The watcher thread is a daemon thread: a pending long poll must not hold exit.
        self.source.close()
        return 0


def _bootstrap_interruptibly(options: Options, stop: threading.Event) -> Agent | None:
    """bootstrap() in a helper thread: detection may wait on probes for seconds, and
    SIGTERM must still be honoured within a tick. Raises what bootstrap raised."""
    result: queue.Queue[Agent | BaseException] = queue.Queue()

    def wire() -> None:
        try:
            result.put(bootstrap(options))
        except BaseException as exc:  # handed to the waiting thread
            result.put(exc)

    threading.Thread(target=wire, name="bootstrap", daemon=True).start()
    while not stop.is_set():
        try:
            outcome = result.get(timeout=TICK)
        except queue.Empty:
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return None


def run_daemon(options: Options) -> int:
    """`guestagent daemon`: wire the agent (retrying until a platform is found), then run it.

    Signals are honoured from the first instant, also while detection waits on
    its probes.
    """
    stop = threading.Event()
    # What ends the commands a pass is running, once the agent is wired (Daemon.end_commands).
    cancels: list[Callable[[], None]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        for cancel in cancels:
            cancel()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = Backoff(cap=min(FIRST_FETCH_BACKOFF_MAX, options.backoff_max))
    started = time.monotonic()
    said: str | None = None
    told_ready = False
    while not stop.is_set():
        try:
            agent = _bootstrap_interruptibly(options, stop)
        except ValueError as exc:
            if str(exc) != said:
                log.warning("waiting for metadata: %s", exc)
                said = str(exc)
            if not told_ready and time.monotonic() - started > READY_ANYWAY_AFTER:
                sd_notify("READY=1\nSTATUS=no platform found yet")
                told_ready = True
            stop.wait(backoff.next_delay())
            continue
        if agent is None:
            break
        daemon = Daemon(
            agent.ctx,
            agent.source,
            agent.subsystems,
            agent.lanes,
            backoff_max=options.backoff_max,
            stop=stop,
        )
        cancels.append(daemon.end_commands)
        return daemon.run()
    return 0
