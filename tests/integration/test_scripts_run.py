"""Metadata scripts for real: bash runs them, output lands in the log line by line, a
URL script comes from a local HTTP server (127.0.0.1 only), and shutdown_timeout kills."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.script_fetcher import HttpScriptFetcher
from guestagent.adapters.script_runner import SubprocessScriptRunner
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config, MetadataScripts
from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.context import Context
from guestagent.services.scripts import run_scripts
from tests.gce_metadata import from_attributes

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="bash missing")

SERVED: dict[str, bytes] = {
    "/first.sh": b"#!/bin/bash\necho from-url\necho to-stderr >&2\nexit 0\n",
    "/py.sh": b"#!/usr/bin/env python3\nprint('interpreter from the #! line')\n",
}


FLAKY = {"left": 0}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/flaky.sh" and FLAKY["left"] > 0:
            FLAKY["left"] -= 1
            self.send_error(503)
            return
        body = SERVED.get(self.path.replace("/flaky.sh", "/first.sh"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _ctx(tmp_path: Path, **opts: object) -> Context:
    fs = LocalFileSystem(str(tmp_path / "root"))
    return Context(
        config=Config(MetadataScripts=MetadataScripts(run_dir=str(tmp_path / "run"), **opts)),  # type: ignore[arg-type]
        fs=fs,
        runner=SubprocessRunner(),
        users=PasswdFiles(fs),
        clock=SystemClock(),
    )


def _meta(instance: dict[str, str], project: dict[str, str] | None = None) -> InstanceMetadata:
    return from_attributes(instance, project)


def _fetcher() -> HttpScriptFetcher:
    fetcher = HttpScriptFetcher(attempts=2, retry_delay=0.05)
    fetcher.session.trust_env = False  # a proxy from the environment must not see 127.0.0.1
    return fetcher


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "guestagent"]


def test_url_then_inline_with_output_lines_and_status(
    tmp_path: Path, http_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "ran"
    meta = _meta(
        {
            "startup-script": f"echo inline; echo $0 > {marker}; exit 4",
            "startup-script-url": f"{http_base}/first.sh",
        }
    )
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path), meta, "startup", runner=SubprocessScriptRunner(), fetcher=_fetcher()
        )
    assert code == 1  # the inline script exited 4
    messages = _messages(caplog)
    expected = [
        "startup-script-url: from-url",
        "startup-script-url: to-stderr",
        "startup-script-url exit status 0",
        "startup-script: inline",
        "startup-script exit status 4",
    ]
    assert [m for m in messages if m in expected] == expected
    # the script ran from a temp dir under run_dir that is gone afterwards
    ran_from = marker.read_text().strip()
    assert ran_from.startswith(str(tmp_path / "run") + "/")
    assert not Path(ran_from).parent.exists()
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.skipif(shutil.which("python3") is None, reason="python3 missing")
def test_shebang_line_picks_the_interpreter(
    tmp_path: Path, http_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    meta = _meta({"startup-script-url": f"{http_base}/py.sh"})
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path), meta, "startup", runner=SubprocessScriptRunner(), fetcher=_fetcher()
        )
    assert code == 0
    assert "startup-script-url: interpreter from the #! line" in _messages(caplog)


def test_failing_and_missing_scripts_never_stop_the_next(
    tmp_path: Path, http_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    meta = _meta(
        {"startup-script-url": f"{http_base}/missing.sh"},
        {"startup-script": "false; echo still-here"},
    )
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path), meta, "startup", runner=SubprocessScriptRunner(), fetcher=_fetcher()
        )
    assert code == 1
    messages = _messages(caplog)
    assert any("could not fetch" in m and "HTTP 404" in m for m in messages)
    assert "startup-script: still-here" in messages
    assert "startup-script exit status 0" in messages


def test_shutdown_timeout_kills_a_sleeping_script_and_its_children(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "child.pid"
    meta = _meta(
        {"shutdown-script": f"echo going; sleep 300 & echo $! > {pid_file}; wait; echo never"}
    )
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path, shutdown_timeout=2),
            meta,
            "shutdown",
            runner=SubprocessScriptRunner(kill_grace=1.0),
            fetcher=_fetcher(),
        )
    elapsed = time.monotonic() - start
    assert code == 1
    # killed at the 2 s timeout (+1 s grace), not after the script's 300 s; the upper bound
    # is generous so a loaded 2-core machine cannot fail it
    assert 1.5 < elapsed < 60, elapsed
    messages = _messages(caplog)
    assert "shutdown-script: going" in messages
    assert "shutdown-script: never" not in messages
    assert any("shutdown-script killed" in m for m in messages)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 30  # its group was SIGKILLed already: gone at once when idle
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the script's background child outlived the timeout"


def test_background_daemon_holding_the_pipe_does_not_hang_startup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "daemon.pid"
    # setsid: a daemon in its own session keeps our stdout pipe open after the script exits
    meta = _meta({"startup-script": f"setsid sleep 300 & echo $! > {pid_file}; echo started"})
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path), meta, "startup", runner=SubprocessScriptRunner(drain=0.5),
            fetcher=_fetcher(),
        )  # fmt: skip
    try:
        assert code == 0
        # not held by the daemon's 300 s: the bound is generous for a loaded 2-core machine
        assert time.monotonic() - start < 60
        assert "startup-script exit status 0" in _messages(caplog)
    finally:
        os.kill(int(pid_file.read_text()), 15)  # the one process this test started


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_clock_is_not_consulted_for_startup(tmp_path: Path) -> None:
    """A startup script has no deadline: a clock jump at boot must not kill it."""

    class Exploding(SystemClock):
        def monotonic(self) -> float:
            raise AssertionError("startup scripts must not need the clock")

        def now(self) -> datetime:
            return datetime.now(UTC)

    ctx = attrs.evolve(_ctx(tmp_path), clock=Exploding())
    code = run_scripts(ctx, _meta({"startup-script": "true"}), "startup",
                       runner=SubprocessScriptRunner(), fetcher=_fetcher())  # fmt: skip
    assert code == 0


def test_fetch_retries_a_server_error_then_runs(
    tmp_path: Path, http_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    FLAKY["left"] = 1
    meta = _meta({"startup-script-url": f"{http_base}/flaky.sh"})
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = run_scripts(
            _ctx(tmp_path), meta, "startup", runner=SubprocessScriptRunner(), fetcher=_fetcher()
        )
    assert (code, FLAKY["left"]) == (0, 0)
    assert "startup-script-url: from-url" in _messages(caplog)
