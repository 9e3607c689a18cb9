"""The hostname subsystem on a temp root, with the live name behind a recording runner."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config, InstanceSetup
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.hostname import HostnameSubsystem
from tests.fakes import RecordingRunner

HOSTS = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n# keep me\n"


class HostnameRunner(RecordingRunner):
    """Plays `hostname` (and optionally lacks it, like a minimal image)."""

    def __init__(self, live: str = "debian", have_hostname: bool = True) -> None:
        super().__init__(respond=self._hostname, which={})
        self.live = live
        self.have_hostname = have_hostname

    def _hostname(self, args: tuple[str, ...]) -> CommandResult | None:
        if args[0] == "hostname" and not self.have_hostname:
            return CommandResult(args, 127, "", "hostname: command not found")
        if args == ("hostname",):
            return CommandResult(args, 0, self.live + "\n", "")
        if args[0] == "hostname":
            self.live = args[1]
        elif args[:3] == ("hostnamectl", "set-hostname", "--transient"):
            self.live = args[3]
        return None  # the default answer: success, no output


def setup(tmp_path: Path, runner: HostnameRunner, *, root: str = "/", fqdn: bool = False,
          set_hostname: bool = True) -> tuple[Context, Path]:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/hostname").write_text("debian\n")
    (tmp_path / "etc/hosts").write_text(HOSTS)
    fs = LocalFileSystem(str(tmp_path))
    config = Config(InstanceSetup=InstanceSetup(hostname_fqdn=fqdn, set_hostname=set_hostname))
    # root="/" with files under tmp_path: the service believes it owns the machine, yet
    # every file lands in the temp dir and the live name only in the fake runner.
    ctx = Context(config=config, fs=fs, runner=runner, users=PasswdFiles(fs), clock=SystemClock(), root=root)
    return ctx, tmp_path


def md(hostname: str = "vm-1.c.proj.internal") -> InstanceMetadata:
    return InstanceMetadata("gce", "1", hostname=hostname,
                            network_interfaces=(NetworkInterface(mac="42:01:0a:80:00:02", ip="10.128.0.2"),))


def test_sets_files_and_live_name_then_is_idempotent(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    sub = HostnameSubsystem()
    out = sub.reconcile(ctx, md())
    assert out.ok, out.failures
    assert (root / "etc/hostname").read_text() == "vm-1\n"
    assert (root / "etc/hosts").read_text() == (
        HOSTS + "10.128.0.2 vm-1.c.proj.internal vm-1  # Added by guestagent\n"
    )
    assert runner.live == "vm-1"
    runner.calls.clear()
    assert sub.reconcile(ctx, md()).actions == ()
    assert runner.calls == [("hostname",)]  # only read, nothing set


def test_fqdn_option_sets_the_full_name(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner, fqdn=True)
    HostnameSubsystem().reconcile(ctx, md())
    assert (root / "etc/hostname").read_text() == "vm-1.c.proj.internal\n"
    assert runner.live == "vm-1.c.proj.internal"


def test_rename_replaces_only_the_agent_line(tmp_path: Path) -> None:
    ctx, root = setup(tmp_path, HostnameRunner())
    sub = HostnameSubsystem()
    sub.reconcile(ctx, md())
    sub.reconcile(ctx, md("web-2.c.proj.internal"))
    assert (root / "etc/hosts").read_text() == (
        HOSTS + "10.128.0.2 web-2.c.proj.internal web-2  # Added by guestagent\n"
    )


def test_garbage_hostname_changes_nothing_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        out = HostnameSubsystem().reconcile(ctx, md("bad_name;rm -rf /"))
    assert out.ok
    assert out.actions == ()
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert (root / "etc/hosts").read_text() == HOSTS
    assert runner.live == "debian"
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_under_a_sandbox_root_the_live_hostname_is_never_touched(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner, root=str(tmp_path))
    out = HostnameSubsystem().reconcile(ctx, md())
    assert out.ok
    assert runner.calls == []
    assert (root / "etc/hostname").read_text() == "vm-1\n"


def test_falls_back_to_hostnamectl_without_the_hostname_program(tmp_path: Path) -> None:
    runner = HostnameRunner(have_hostname=False)
    ctx, _ = setup(tmp_path, runner)
    out = HostnameSubsystem().reconcile(ctx, md())
    assert ("hostnamectl", "set-hostname", "--transient", "vm-1") in runner.calls
    assert out.ok


def test_set_hostname_false_disables(tmp_path: Path) -> None:
    ctx, _ = setup(tmp_path, HostnameRunner(), set_hostname=False)
    assert HostnameSubsystem().enabled(ctx, md()) is False


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    import attrs

    out = HostnameSubsystem().reconcile(attrs.evolve(ctx, dry_run=True), md())
    assert "set hostname vm-1" in out.actions
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert runner.live == "debian"


def azure_md(vm_id: str = "vm-1", hostname: str = "az-vm") -> InstanceMetadata:
    return InstanceMetadata("azure", vm_id, hostname=hostname)


def test_on_azure_the_vm_is_named_once_and_a_name_given_by_hand_stays(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    assert HostnameSubsystem().reconcile(ctx, azure_md()).ok
    assert (root / "etc/hostname").read_text() == "az-vm\n" and runner.live == "az-vm"
    assert (root / "var/lib/guestagent/hostname-applied").read_text() == "vm-1 az-vm\n"

    (root / "etc/hostname").write_text("renamed-by-hand\n")
    runner.live = "renamed-by-hand"
    hosts = (root / "etc/hosts").read_text()
    out = HostnameSubsystem().reconcile(ctx, azure_md())  # a fresh agent, as after a reboot
    assert out.actions == () and out.ok
    assert (root / "etc/hostname").read_text() == "renamed-by-hand\n" and runner.live == "renamed-by-hand"
    assert (root / "etc/hosts").read_text() == hosts

    # A new VM from this disk (another VM id), or a new name in the metadata: named again.
    HostnameSubsystem().reconcile(ctx, azure_md(vm_id="vm-2"))
    assert (root / "etc/hostname").read_text() == "az-vm\n" and runner.live == "az-vm"
    assert (root / "var/lib/guestagent/hostname-applied").read_text() == "vm-2 az-vm\n"
    (root / "etc/hostname").write_text("renamed-by-hand\n")
    HostnameSubsystem().reconcile(ctx, azure_md(vm_id="vm-2", hostname="az-web"))
    assert (root / "etc/hostname").read_text() == "az-web\n"


def test_elsewhere_the_metadata_name_is_kept_in_force(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    HostnameSubsystem().reconcile(ctx, md())
    (root / "etc/hostname").write_text("renamed-by-hand\n")
    runner.live = "renamed-by-hand"
    HostnameSubsystem().reconcile(ctx, md())
    assert (root / "etc/hostname").read_text() == "vm-1\n" and runner.live == "vm-1"
    assert not (root / "var/lib/guestagent").exists()


def test_on_azure_a_naming_that_failed_is_not_recorded_and_is_tried_again(tmp_path: Path) -> None:
    runner = HostnameRunner()
    ctx, root = setup(tmp_path, runner)
    plays = runner.respond

    def refusing(args: tuple[str, ...]) -> CommandResult | None:
        if args[0] == "hostname" and len(args) == 2:
            return CommandResult(args, 1, "", "hostname: you must be root to change the host name")
        return plays(args)

    runner.respond = refusing
    assert not HostnameSubsystem().reconcile(ctx, azure_md()).ok
    assert not (root / "var/lib/guestagent/hostname-applied").exists()
    runner.respond = plays
    assert HostnameSubsystem().reconcile(ctx, azure_md()).ok
    assert runner.live == "az-vm"
    assert (root / "var/lib/guestagent/hostname-applied").read_text() == "vm-1 az-vm\n"
