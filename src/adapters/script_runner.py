"""Metadata scripts as child processes, output streamed line by line."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import IO

from guestagent.domain.scripts import script_argv
from guestagent.ports.scripts import ScriptResult

MAX_LINE = 64 * 1024  # a script printing without newlines must not fill memory


def _pump(stream: IO[bytes], on_line: Callable[[str], None]) -> None:
    with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
        for raw in iter(lambda: stream.readline(MAX_LINE), b""):
            on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))


class SubprocessScriptRunner:
    def __init__(self, kill_grace: float = 2.0, drain: float = 1.0) -> None:
        # kill_grace: SIGTERM to SIGKILL on timeout. drain: how long output is still
        # read after the script exited; a daemon it left running with our pipe as
        # its stdout must not hold the runner (Google's runner hangs there).
        self.kill_grace = kill_grace
        self.drain = drain

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
        if run_dir:
            os.makedirs(run_dir, mode=0o755, exist_ok=True)
        temp_dir = tempfile.mkdtemp(prefix=f"{name}-", dir=run_dir or None)
        try:
            path = os.path.join(temp_dir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.chmod(path, 0o755)  # noqa: S103 - the shell execs it; the umask may have cut bits
            return self._run(list(script_argv(shell, path)), timeout, on_line)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _run(
        self, argv: list[str], timeout: float | None, on_line: Callable[[str], None]
    ) -> ScriptResult:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # its own process group, so a timeout kills the children too
                start_new_session=True,
            )
        except OSError as exc:
            return ScriptResult(None, error=f"could not start {argv[0]}: {exc.strerror}")
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, on_line), daemon=True)
        reader.start()
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill_group(proc)
            code = None
        reader.join(self.drain)
        if not reader.is_alive():
            proc.stdout.close()
        return ScriptResult(code, timed_out)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # children that ignored SIGTERM while the shell itself exited
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
