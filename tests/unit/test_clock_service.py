"""The clock subsystem: resync on a token change only, remembered across restarts."""

from __future__ import annotations

from pathlib import Path

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.clock import STATE_PATH
from guestagent.domain.config import Clock, Config
from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.clock import ClockSubsystem
from guestagent.services.context import Context
from tests.fakes import RecordingRunner
from tests.gce_metadata import gce_md


def recorder() -> RecordingRunner:
    # hwclock's complaint comes with every answer; only the exit status says whether it counts
    return RecordingRunner(stderr="hwclock: cannot access the RTC", which={})


SYNC = ("/sbin/hwclock", "--hctosys", "-u", "--noadjfile")


def ctx_for(
    tmp_path: Path, runner: RecordingRunner, command: str | None = None, root: str | None = None
) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    config = Config(Clock=Clock(sync_command=command)) if command is not None else Config()
    # root="/": the subsystem acts as on a real guest, but files land under tmp_path and
    # commands only reach the recording runner.
    return Context(config=config, fs=fs, runner=runner, users=PasswdFiles(fs), clock=SystemClock(),
                   root=root or "/")


def token(value: str | None) -> InstanceMetadata:
    return gce_md("1", clock_drift_token=value)


def test_first_sight_does_not_resync_but_records(tmp_path: Path) -> None:
    runner = recorder()
    out = ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token("0"))
    assert out.ok
    assert runner.calls == []
    assert (tmp_path / STATE_PATH.lstrip("/")).exists()


def test_change_resyncs_once(tmp_path: Path) -> None:
    runner = recorder()
    ctx = ctx_for(tmp_path, runner)
    sub = ClockSubsystem()
    sub.reconcile(ctx, token("0"))
    sub.reconcile(ctx, token("77"))
    sub.reconcile(ctx, token("77"))
    assert runner.calls == [SYNC]


def test_restart_with_the_same_token_does_not_resync(tmp_path: Path) -> None:
    runner = recorder()
    ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token("0"))
    ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token("0"))  # a new process
    assert runner.calls == []


def test_token_changed_while_the_agent_was_down_resyncs_at_start(tmp_path: Path) -> None:
    runner = recorder()
    ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token("0"))
    ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token("1"))
    assert runner.calls == [SYNC]


def test_failed_resync_is_retried_on_the_next_pass(tmp_path: Path) -> None:
    runner = recorder()
    ctx = ctx_for(tmp_path, runner)
    sub = ClockSubsystem()
    sub.reconcile(ctx, token("0"))
    runner.returncode = 1
    failed = sub.reconcile(ctx, token("1"))
    assert failed.failures == (
        "resync clock (drift token now '1'): /sbin/hwclock --hctosys -u --noadjfile failed: "
        "exit 1: hwclock: cannot access the RTC",
    )
    runner.returncode = 0
    assert sub.reconcile(ctx, token("1")).ok
    assert runner.calls == [SYNC, SYNC]
    assert ClockSubsystem().reconcile(ctx, token("1")).actions == ()  # recorded at last


def test_configured_command_is_run_as_argv(tmp_path: Path) -> None:
    runner = recorder()
    ctx = ctx_for(tmp_path, runner, "chronyc makestep")
    sub = ClockSubsystem()
    sub.reconcile(ctx, token("a"))
    sub.reconcile(ctx, token("b"))
    assert runner.calls == [("chronyc", "makestep")]


def test_no_token_leaves_everything_alone(tmp_path: Path) -> None:
    runner = recorder()
    out = ClockSubsystem().reconcile(ctx_for(tmp_path, runner), token(None))
    assert out.actions == ()
    assert not (tmp_path / STATE_PATH.lstrip("/")).exists()


def test_clock_inputs_are_just_the_token() -> None:
    sub = ClockSubsystem()
    assert sub.inputs(token("5")) == sub.inputs(gce_md("2", hostname="x", clock_drift_token="5"))


def test_under_a_sandbox_root_the_clock_is_never_stepped(tmp_path: Path) -> None:
    runner = recorder()
    sub = ClockSubsystem()
    ctx = ctx_for(tmp_path, runner, root=str(tmp_path))
    sub.reconcile(ctx, token("0"))
    out = sub.reconcile(ctx, token("1"))
    assert out.ok
    assert runner.calls == []
