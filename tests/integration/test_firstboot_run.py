"""First-boot scripts for real: a script from a CPIO device (read by the real transport from an
image file under a temporary root) runs through the real script runner, leaves a marker, is
recorded, and does not run on the next "boot" (a new subsystem: a new process); a script that
exits 1 is not recorded and runs again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.platforms.cpio import CpioMetadata
from guestagent.adapters.script_runner import SubprocessScriptRunner
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain import firstboot as fb
from guestagent.domain.config import Config, FirstBoot, MetadataScripts
from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.context import Context
from guestagent.services.firstboot import FirstBootSubsystem
from tests.integration.test_cpio_provider import add_disk, device_bytes, set_uuid

UUID = "0f6c2b1a-3d4e-4f50-8a7b-9c8d7e6f5a4b"


def context(tmp_path: Path, **firstboot: object) -> Context:
    """Files under tmp_path/guest; the scripts run on this machine (they only touch tmp_path)."""
    fs = LocalFileSystem(str(tmp_path / "guest"))
    config = Config(
        FirstBoot=FirstBoot(**firstboot),  # type: ignore[arg-type]
        MetadataScripts=MetadataScripts(default_shell="/bin/sh", run_dir=str(tmp_path / "run")),
    )
    return Context(config=config, fs=fs, runner=SubprocessRunner(), users=PasswdFiles(fs), clock=SystemClock(),
                   owns_machine=True, log=logging.getLogger("guestagent"))  # fmt: skip


def boot(tmp_path: Path, script: bytes) -> InstanceMetadata:
    """The device as the CPIO transport reads it from the guest's disk."""
    guest = tmp_path / "guest"
    node = guest / "dev/vdb"
    if node.exists():
        node.write_bytes(device_bytes(**{"firstboot.sh": script}))
    else:
        add_disk(guest, "vdb", device_bytes(**{"firstboot.sh": script}))
        set_uuid(guest, UUID)
    return CpioMetadata(root=str(guest)).get().metadata


def counting_script(tmp_path: Path, exit_code: int = 0) -> bytes:
    runs = tmp_path / "runs"
    return (f"#!/bin/sh\necho \"running as $0\"\necho x >> {runs}\necho 'to stderr' >&2\nexit {exit_code}\n").encode()


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_runs_once_then_never_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    md = boot(tmp_path, counting_script(tmp_path))
    caplog.set_level(logging.INFO, logger="guestagent")
    outcome = FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), md)
    assert outcome.ok, outcome.failures
    assert outcome.actions == (f"run firstboot.sh (cpio device) once for instance {UUID}",)
    assert runs(tmp_path) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "firstboot.sh: to stderr" in messages
    assert any(m.startswith("firstboot.sh: running as ") for m in messages)
    assert "firstboot.sh exit status 0" in messages
    stamp = tmp_path / "guest/var/lib/guestagent/firstboot"
    assert stamp.stat().st_mode & 0o777 == 0o600
    assert f" firstboot.sh {UUID}\n" in stamp.read_text()
    # The next boot: a new process, the same device.
    again = FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), boot(tmp_path, counting_script(tmp_path)))
    assert again.ok and again.actions == () and runs(tmp_path) == 1
    assert not list((tmp_path / "run").iterdir())  # the runner's temp dirs are gone


def test_exit_1_is_not_recorded_and_runs_again_at_the_next_boot(tmp_path: Path) -> None:
    failing = counting_script(tmp_path, exit_code=1)
    md = boot(tmp_path, failing)
    subsystem = FirstBootSubsystem(SubprocessScriptRunner())
    outcome = subsystem.reconcile(context(tmp_path), md)
    assert not outcome.ok and "firstboot.sh exit status 1" in outcome.failures[0]
    assert not (tmp_path / "guest/var/lib/guestagent/firstboot").exists()
    assert runs(tmp_path) == 1
    # The daemon's retry in the same process leaves it for the next start...
    assert subsystem.reconcile(context(tmp_path), md).ok and runs(tmp_path) == 1
    # ...the next boot runs it again, and it fails again.
    assert not FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), md).ok
    assert runs(tmp_path) == 2
    # Fixed on the device: the new script runs once and is recorded.
    fixed = boot(tmp_path, counting_script(tmp_path))
    assert FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), fixed).ok
    assert FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), fixed).actions == ()
    assert runs(tmp_path) == 3


def test_a_script_killed_by_its_timeout_runs_again(tmp_path: Path) -> None:
    md = boot(tmp_path, f"#!/bin/sh\necho x >> {tmp_path / 'runs'}\nsleep 60\n".encode())
    outcome = FirstBootSubsystem(SubprocessScriptRunner(kill_grace=1.0)).reconcile(context(tmp_path, timeout=1.0), md)
    assert not outcome.ok and "killed" in outcome.failures[0]
    assert not (tmp_path / "guest" / fb.STAMP_PATH.lstrip("/")).exists()


def test_not_a_script_never_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    md = boot(tmp_path, f"echo x >> {tmp_path / 'runs'}\n".encode())
    outcome = FirstBootSubsystem(SubprocessScriptRunner()).reconcile(context(tmp_path), md)
    assert outcome.ok and outcome.actions == () and runs(tmp_path) == 0
    assert "must start with an interpreter line" in caplog.text


def test_a_sandbox_root_lists_and_runs_nothing(tmp_path: Path) -> None:
    md = boot(tmp_path, counting_script(tmp_path))
    ctx = context(tmp_path)
    sandboxed = Context(config=ctx.config, fs=ctx.fs, runner=ctx.runner, users=ctx.users, clock=ctx.clock,
                        root=str(tmp_path / "guest"), log=ctx.log)  # fmt: skip
    assert not sandboxed.owns_machine
    outcome = FirstBootSubsystem(SubprocessScriptRunner()).reconcile(sandboxed, md)
    assert outcome.actions == ("list firstboot.sh (cpio device) without running it (sandbox root)",)
    assert runs(tmp_path) == 0
