"""Which platform is this? DMI first, local media next, network probes last: all bounded.

Order (PROTOCOLS.md "Detection"):

1. ``[Core] platform`` when it is not ``auto``: that provider, nothing probed.
2. DMI (``ROOT/sys/class/dmi/id``): the first provider, in registry order, whose
   ``dmi`` hint matches. Pure, no waiting.
3. Local media: each provider's ``local`` hint, in registry order.
4. Network probes: every provider's ``probe`` at once, each in a daemon thread
   and given the time that is left. The first success in registry order wins:
   an earlier-registered probe still running is waited for, but only while
   time remains; when it is up, the first success among those that answered
   wins.

The whole detection is bounded by ``timeout`` (default ``[Core]
detect_timeout``): a hint or probe that hangs is abandoned (its daemon thread
is left to end on its own) and never holds boot for minutes on a machine where
the platform is absent (cloud-init #6641). A hint or probe that raises is a
failed attempt, recorded in the error message, never a crash. One log line
says what was chosen and why.

The registry's platforms are imported as detection reaches them: DMI imports
only each platform's pure parser module; when DMI matches nothing, the
platforms with local or network hints are imported before the bound starts;
the chosen one is imported after the line saying why (on a TCG guest its
transport's import takes seconds, and that line tells the agent is up).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

import attrs

from guestagent.adapters.platforms.registry import PROVIDERS
from guestagent.adapters.platforms.spec import Provider, ProviderOptions, ProviderSpec

log = logging.getLogger("guestagent")

T = TypeVar("T")

DMI_DIR = "sys/class/dmi/id"
DMI_FIELDS = (
    "sys_vendor",
    "product_name",
    "product_version",
    "product_uuid",
    "chassis_asset_tag",
    "bios_vendor",
    "bios_version",
    "board_vendor",
)
DMI_READ_LIMIT = 4096
# Fields named in the "nothing found" message (the UUID identifies the machine, not its kind).
_DMI_SHOWN = tuple(f for f in DMI_FIELDS if f != "product_uuid")
_SHOWN_MAX = 60

CONFIGURED_REASON = "configured in [Core] platform"


class DetectionFailed(ValueError):
    """No platform was recognised; the message lists everything that was tried."""

    def __init__(self, message: str, tried: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tried = tuple(tried)


@attrs.frozen
class Detection:
    spec: ProviderSpec
    reason: str


# -- DMI -------------------------------------------------------------------------------------


def _read_bounded(path: str, limit: int = DMI_READ_LIMIT) -> str | None:
    """A regular file's first `limit` bytes; None when missing, unreadable or not a plain file.

    O_NONBLOCK and the regular-file check keep a FIFO or device planted in a fake
    tree from blocking detection; O_NOFOLLOW refuses a symlinked attribute.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def read_dmi(root: str = "/") -> dict[str, str]:
    """The DMI fields detection looks at, stripped; missing, unreadable or empty ones are left out.

    product_uuid is root-only on most kernels: without root it is simply absent.
    """
    base = os.path.join(os.path.abspath(root), DMI_DIR)
    fields: dict[str, str] = {}
    for name in DMI_FIELDS:
        text = _read_bounded(os.path.join(base, name))
        if text is None:
            continue
        value = text.replace("\x00", "").strip()
        if value:
            fields[name] = value
    return fields


def _show(value: str) -> str:
    if len(value) > _SHOWN_MAX:
        value = value[: _SHOWN_MAX - 3] + "..."
    return repr(value)


def _dmi_summary(dmi: Mapping[str, str]) -> str:
    shown = [f"{name}={_show(dmi[name])}" for name in _DMI_SHOWN if dmi.get(name)]
    return ", ".join(shown) if shown else "no DMI fields readable"


# -- failures as words -----------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__])
        # requests and urllib3 keep the underlying error in args/reason rather than __cause__.
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return seen


def failure_reason(exc: BaseException) -> str:
    """A short account of why an attempt failed: 'timed out', 'connection refused', or its message."""
    chain = _chain(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        return "timed out"
    message = str(exc).strip()
    return message if message else type(exc).__name__


# -- running a hint within the deadline ------------------------------------------------------


class _Call(Generic[T]):
    """One call in a daemon thread: its result or exception, once it is done."""

    def __init__(self, name: str, fn: Callable[[], T], done: threading.Condition) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False
        self._fn = fn
        self._done = done
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = self._fn()
        except BaseException as exc:  # a failed hint is recorded, never a crash
            error = exc
        with self._done:
            self.result, self.error, self.finished = result, error, True
            self._done.notify_all()

    def is_finished(self) -> bool:
        return self.finished

    def start(self) -> _Call[T]:
        self.thread.start()
        return self


def _wait(
    done: threading.Condition, ready: Callable[[], bool], deadline: float, clock: Callable[[], float]
) -> bool:
    """Wait (holding `done`) until ready() or the deadline; True when ready() held."""
    while not ready():
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        if not done.wait(remaining):
            # A real timeout: stop even if `clock` disagrees (a clock that does not advance).
            return ready()
    return True


# -- the stages ------------------------------------------------------------------------------


# What a stage found: the platform, not yet imported (detection logs before it imports), and why.
_Found = tuple[Provider, str]


def _configured(options: ProviderOptions, providers: Sequence[Provider]) -> _Found | None:
    name = options.config.Core.platform.strip().lower()
    if name in ("", "auto"):
        return None
    for spec in providers:
        if spec.name == name:
            return spec, CONFIGURED_REASON
    known = ", ".join(spec.name for spec in providers)
    raise DetectionFailed(
        f"[Core] platform = {options.config.Core.platform!r} is not a known platform; known: auto, {known}"
    )


def _by_dmi(dmi: Mapping[str, str], providers: Sequence[Provider]) -> tuple[_Found | None, str]:
    errors: list[str] = []
    for spec in providers:
        if spec.dmi is None:
            continue
        try:
            reason = spec.dmi(dmi)
        except Exception as exc:  # a broken hint must not stop detection
            errors.append(f"{spec.name}: {failure_reason(exc)}")
            continue
        if reason:
            return (spec, reason), ""
    return None, f"no DMI match ({'; '.join([_dmi_summary(dmi), *errors])})"


def _by_local(
    options: ProviderOptions,
    providers: Sequence[Provider],
    deadline: float,
    clock: Callable[[], float],
) -> tuple[_Found | None, str]:
    notes: list[str] = []
    for spec in providers:
        local = spec.local
        if local is None:
            continue
        if deadline - clock() <= 0:
            notes.append(f"{spec.name}: not checked, out of time")
            continue
        done = threading.Condition()
        call: _Call[str | None] = _Call(f"detect-local-{spec.name}", functools.partial(local, options), done)
        with done:
            call.start()
            finished = _wait(done, call.is_finished, deadline, clock)
        if not finished:
            notes.append(f"{spec.name}: timed out")
        elif call.error is not None:
            notes.append(f"{spec.name}: {failure_reason(call.error)}")
        elif call.result:
            return (spec, call.result), ""
        else:
            notes.append(f"{spec.name}: none found")
    if not notes:
        return None, "no local media hints"
    return None, f"no local media ({'; '.join(notes)})"


def _by_probe(
    options: ProviderOptions,
    providers: Sequence[Provider],
    deadline: float,
    clock: Callable[[], float],
) -> tuple[_Found | None, str]:
    probing = [(spec, spec.probe) for spec in providers if spec.probe is not None]
    if not probing:
        return None, "no network probes"
    remaining = deadline - clock()
    if remaining <= 0:
        return None, "probes: not started, out of time"
    done = threading.Condition()
    calls: list[tuple[Provider, _Call[str | None]]] = []
    with done:
        for spec, probe in probing:
            call: _Call[str | None] = _Call(
                f"detect-probe-{spec.name}", functools.partial(probe, options, remaining), done
            )
            calls.append((spec, call.start()))

        def decided() -> bool:
            # Registry order: a success counts once every earlier probe has failed.
            for _, c in calls:
                if not c.finished:
                    return False
                if c.error is None and c.result:
                    return True
            return True

        _wait(done, decided, deadline, clock)
        # Snapshot under the lock: probes still running may finish while we write the message.
        outcomes = [(spec, c.finished, c.result, c.error) for spec, c in calls]
    notes: list[str] = []
    for spec, finished, result, error in outcomes:
        if finished and error is None and result:
            return (spec, result), ""
        if not finished:
            notes.append(f"{spec.name}: timed out")
        elif error is not None:
            notes.append(f"{spec.name}: {failure_reason(error)}")
        else:
            notes.append(f"{spec.name}: not found")
    return None, "probes: " + ", ".join(notes)


def _import_hinted(providers: Sequence[Provider]) -> None:
    """Import the platforms with a local or network hint, before the bound starts: on a slow
    guest (TCG) their imports took seconds, which must not eat the time the hints are given
    (they were all imported at start before the registry became lazy)."""
    for spec in providers:
        if spec.local is not None or spec.probe is not None:
            # A module that fails to import fails again in its hint's thread, and is recorded there.
            with contextlib.suppress(Exception):
                spec.load()


def detect(
    options: ProviderOptions,
    providers: Sequence[Provider] = PROVIDERS,
    *,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Detection:
    """The platform this machine runs on, and why; DetectionFailed saying what was tried.

    `timeout` (default ``[Core] detect_timeout``) bounds the whole call: hints and
    probes still running when it is up are abandoned in their daemon threads.
    """
    budget = options.config.Core.detect_timeout if timeout is None else timeout
    found = _configured(options, providers)
    tried: list[str] = []
    if found is None:
        found, note = _by_dmi(read_dmi(options.root), providers)
        tried.append(note)
    if found is None:
        _import_hinted(providers)
    started = clock()
    deadline = started + max(0.0, budget)
    if found is None:
        found, note = _by_local(options, providers, deadline, clock)
        tried.append(note)
    if found is None:
        found, note = _by_probe(options, providers, deadline, clock)
        tried.append(note)
    if found is None:
        elapsed = clock() - started
        raise DetectionFailed(
            f"no platform detected within {elapsed:.1f}s (limit {budget:g}s): {'; '.join(tried)}; "
            "set [Core] platform to name one",
            tried,
        )
    spec, reason = found
    log.info("platform %s: %s", spec.name, reason)
    return Detection(spec.load(), reason)


def describe(detection: Detection) -> str:
    """`guestagent detect` output: PLATFORM<TAB>reason."""
    return f"{detection.spec.name}\t{detection.reason}"


def detect_command_output(
    options: ProviderOptions,
    providers: Sequence[Provider] = PROVIDERS,
    *,
    timeout: float | None = None,
) -> tuple[int, str]:
    """`guestagent detect`: (0, "PLATFORM\\treason") or (2, why nothing was found). No trailing newline."""
    try:
        return 0, describe(detect(options, providers, timeout=timeout))
    except DetectionFailed as exc:
        return 2, str(exc)
