"""Hooks that must run in the pytest process that starts the xdist workers.

A sub-folder's conftest is loaded only where its tests are collected, which under
`-n 2` is the workers, too late to hand them a shared file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPORT_ENV = "GUESTAGENT_VM_REPORT"
OWN_REPORT = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Timings are written to a file so that xdist workers' figures reach the
    # controller's summary; the workers inherit this variable.
    if REPORT_ENV not in os.environ and not hasattr(config, "workerinput"):
        fd, path = tempfile.mkstemp(prefix="guestagent-vm-timings-", suffix=".md")
        os.close(fd)
        os.environ[REPORT_ENV] = path
        config.stash[OWN_REPORT] = path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = Path(os.environ.get(REPORT_ENV, "/nonexistent"))
    if report.exists() and report.stat().st_size:
        terminalreporter.section("VM timings")
        terminalreporter.write(report.read_text())
    own = config.stash.get(OWN_REPORT, None)
    if own:
        Path(own).unlink(missing_ok=True)
