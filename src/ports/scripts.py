"""Running a metadata script with its output streamed, and fetching one from a URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs


@attrs.frozen
class ScriptResult:
    # None when the script did not finish on its own (timed out, or could not start).
    exit_code: int | None
    timed_out: bool = False
    error: str | None = None


class ScriptRunner(Protocol):
    def run_script(
        self,
        body: bytes,
        *,
        name: str,
        shell: str,
        run_dir: str,
        timeout: float | None,
        on_line: Callable[[str], None],
    ) -> ScriptResult:
        """Write `body` as an executable file `name` in a fresh temp dir under `run_dir`
        ("" = the system temp dir), run it with `shell -c FILE`, call `on_line` for each
        output line (stdout and stderr together), remove the temp dir.

        With a timeout, the script and everything it started are killed when it expires.
        """
        ...


class FetchError(Exception):
    """A script URL could not be downloaded; the message is safe to log."""


class ScriptFetcher(Protocol):
    def fetch(self, url: str, timeout: float) -> bytes:
        """The body at an http(s) URL; raises FetchError."""
        ...
