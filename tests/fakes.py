"""In-memory fakes of the ports, shared by the tests (the design card's "fakes tests use").

Each one implements its port exactly, records what it was asked, and answers
from settings a test can change between calls. Nothing here runs a program,
opens a socket or reads the machine's clock (unless a test hands a
`RecordingRunner` a real runner to delegate to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import attrs

from guestagent.ports.commands import CommandResult, CommandRunner
from guestagent.ports.metadata import MetadataUnavailable

# A per-command answer: a result, or None for "answer as usual" (the default result,
# or the delegate runner). A hook may also raise, to fail a test on an unexpected command.
Respond = Callable[[tuple[str, ...]], CommandResult | None]
Which = Mapping[str, str] | Callable[[str], str | None]

DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen
class Run:
    """One call to `RecordingRunner.run`, with everything it was given."""

    argv: tuple[str, ...]
    timeout: float | None = None
    env: Mapping[str, str] | None = None
    stdin: str | None = None


def _default_which(program: str) -> str | None:
    return f"/usr/bin/{program}"


class RecordingRunner:
    """A CommandRunner that records every argv and answers without running anything.

    - `calls`: every argv, as a tuple, in order; a call is recorded before it is
      answered, so a hook sees itself in `calls`, and `last_run` has its timeout/env/stdin.
    - the answer: `respond(argv)` if given and not None, else `delegate.run(...)` if a
      delegate is given, else CommandResult(argv, returncode, stdout, stderr); the three
      defaults are plain attributes a test may change between calls.
    - `which`: a mapping (a missing program is None), a callable, or by default
      `/usr/bin/<program>` (or the delegate's answer when there is a delegate).
    """

    def __init__(
        self,
        *,
        returncode: int = 0,
        stdout: str = "",
        stderr: str = "",
        respond: Respond | None = None,
        which: Which | None = None,
        delegate: CommandRunner | None = None,
    ) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.respond = respond
        self.delegate = delegate
        self._which: Which = which if which is not None else (
            delegate.which if delegate is not None else _default_which
        )
        self.calls: list[tuple[str, ...]] = []
        self.last_run: Run | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        self.last_run = Run(args, timeout, env, stdin)
        if self.respond is not None:
            answer = self.respond(args)
            if answer is not None:
                return answer
        if self.delegate is not None:
            return self.delegate.run(args, timeout=timeout, env=env, stdin=stdin)
        return CommandResult(args, self.returncode, self.stdout, self.stderr)

    def which(self, program: str) -> str | None:
        if callable(self._which):
            return self._which(program)
        return self._which.get(program)


def _check_aware_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() != timedelta(0):
        raise ValueError(f"FixedClock wants an aware UTC time, not {at!r}")
    return at


class FixedClock:
    """A Clock that stands still until told: set `at`, or `advance(seconds)` both clocks."""

    def __init__(self, at: datetime = DEFAULT_NOW, monotonic: float = 0.0) -> None:
        self._at = _check_aware_utc(at)
        self._monotonic = monotonic

    @property
    def at(self) -> datetime:
        return self._at

    @at.setter
    def at(self, value: datetime) -> None:
        self._at = _check_aware_utc(value)

    def now(self) -> datetime:
        return self._at

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("clocks do not run backwards")
        self._at += timedelta(seconds=seconds)
        self._monotonic += seconds


class RecordingGuestAttributes:
    """GuestAttributes in a dict; with `fail` set every PUT raises MetadataUnavailable."""

    def __init__(self, *, fail: bool = False) -> None:
        self.values: dict[str, str] = {}
        self.fail = fail

    def put_guest_attribute(self, key: str, value: str) -> None:
        if self.fail:
            raise MetadataUnavailable("down")
        self.values[key] = value
