"""The clock subsystem with real processes and a real state file, across a "restart".

The sync command is a harmless stand-in that appends to a log: hwclock is
never run here (it would set this machine's clock).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Clock, Config
from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.clock import ClockSubsystem
from guestagent.services.context import Context
from tests.gce_metadata import gce_md


def test_resync_runs_only_on_change_and_survives_restart(tmp_path: Path) -> None:
    log = tmp_path / "synced.log"
    command = f"sh -c {shlex.quote(f'echo synced >> {shlex.quote(str(log))}')}"
    fs = LocalFileSystem(str(tmp_path / "root"))
    ctx = Context(config=Config(Clock=Clock(sync_command=command)), fs=fs, runner=SubprocessRunner(),
                  users=PasswdFiles(fs), clock=SystemClock(), root="/")
    # root="/" so the command runs (as on a guest); the files still go under tmp_path.

    def token(value: str) -> InstanceMetadata:
        return gce_md("1", clock_drift_token=value)

    agent = ClockSubsystem()
    assert agent.reconcile(ctx, token("0")).ok
    assert not log.exists()  # first sight: no resync
    assert agent.reconcile(ctx, token("123")).ok
    assert log.read_text() == "synced\n"

    restarted = ClockSubsystem()
    assert restarted.reconcile(ctx, token("123")).actions == ()
    assert log.read_text() == "synced\n"
    assert restarted.reconcile(ctx, token("124")).ok
    assert log.read_text() == "synced\nsynced\n"
    assert (tmp_path / "root/var/lib/guestagent/clock_drift_token").read_text() == '{"drift_token": "124"}\n'
