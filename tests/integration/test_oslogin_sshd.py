"""OS Login against the real sshd: every sshd_config the subsystem writes passes `sshd -t`.

sshd -t also insists on /run/sshd, which this machine lacks (sshd is not
running here). The strict runner below runs sshd in a private mount
namespace with its own tmpfs on /run, so the check is complete and the
machine's /run is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.domain import oslogin
from guestagent.domain.config import Config, OSLogin
from guestagent.domain.metadata import InstanceMetadata
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.oslogin import OsLoginSubsystem
from tests.fakes import FixedClock, RecordingRunner
from tests.gce_metadata import gce_md

SSHD = "/usr/sbin/sshd"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace"),
]

SSHD_CONFIG = """\
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
Match User backup
\tPasswordAuthentication no
"""


class StrictSshdRunner(RecordingRunner):
    """SubprocessRunner, except sshd runs where /run/sshd exists (a private tmpfs)."""

    def __init__(self) -> None:
        self.inner = SubprocessRunner()
        super().__init__(respond=self._sshd_in_private_run, which=self.inner.which)
        self.sshd_checks: list[tuple[str, int]] = []

    def _sshd_in_private_run(self, argv: tuple[str, ...]) -> CommandResult:
        if os.path.basename(argv[0]) != "sshd":
            raise AssertionError(f"only sshd -t may run here, not {argv[0]}")
        assert self.last_run is not None
        script = 'mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec "$@"'
        wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "_", *argv]
        result = self.inner.run(wrapped, timeout=self.last_run.timeout)
        config_path = argv[argv.index("-f") + 1]
        self.sshd_checks.append((Path(config_path).read_text(), result.returncode))
        return CommandResult(argv, result.returncode, result.stdout, result.stderr)


def _sandbox(root: Path) -> LocalFileSystem:
    ssh = root / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "sshd_config").write_text(SSHD_CONFIG)
    subprocess.run(
        ["ssh-keygen", "-t", "ed25519", "-f", str(ssh / "ssh_host_ed25519_key"), "-N", "", "-q"],
        check=True,
    )
    (root / "etc/nsswitch.conf").write_text("passwd: files systemd\ngroup: files systemd\n")
    (root / "etc/pam.d").mkdir()
    (root / "etc/pam.d/sshd").write_text("@include common-auth\n@include common-session\n")
    return LocalFileSystem(str(root))


def _ctx(fs: LocalFileSystem, runner: StrictSshdRunner, cert: bool) -> Context:
    return Context(
        config=Config(OSLogin=OSLogin(cert_authentication=cert)),
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=FixedClock(),
        root=fs.root,
    )


def _meta(enabled: bool) -> InstanceMetadata:
    return gce_md("1", oslogin_enabled=enabled)


@pytest.fixture(autouse=True)
def _unshare_works() -> None:
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("unshare -m not permitted here")


@pytest.mark.parametrize("cert", [False, True])
def test_every_written_sshd_config_passes_real_sshd_t(tmp_path: Path, cert: bool) -> None:
    fs = _sandbox(tmp_path)
    runner = StrictSshdRunner()
    subsystem = OsLoginSubsystem()

    on = subsystem.reconcile(_ctx(fs, runner, cert), _meta(True))
    assert on.ok, on.failures
    written = (tmp_path / "etc/ssh/sshd_config").read_text()
    assert written.startswith(oslogin.BLOCK_START + "\n")
    assert ("TrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub" in written) is cert

    off = subsystem.reconcile(_ctx(fs, runner, cert), _meta(False))
    assert off.ok, off.failures
    assert (tmp_path / "etc/ssh/sshd_config").read_text() == SSHD_CONFIG

    # both files sshd checked are the ones now known to be good, and it accepted both
    assert [text for text, _ in runner.sshd_checks] == [written, SSHD_CONFIG]
    assert [code for _, code in runner.sshd_checks] == [0, 0]


def test_real_sshd_rejection_keeps_the_old_file(tmp_path: Path) -> None:
    fs = _sandbox(tmp_path)
    # A broken line the user left: our block is fine, but the whole file is not.
    broken = SSHD_CONFIG + "NoSuchOption yes\n"
    (tmp_path / "etc/ssh/sshd_config").write_text(broken)
    runner = StrictSshdRunner()
    outcome = OsLoginSubsystem().reconcile(_ctx(fs, runner, False), _meta(True))
    assert [code for _, code in runner.sshd_checks] == [255]
    assert any("sshd -t rejected" in f and "NoSuchOption" in f for f in outcome.failures)
    assert (tmp_path / "etc/ssh/sshd_config").read_text() == broken
    # nsswitch and PAM do not depend on sshd's verdict
    assert "cache_oslogin oslogin" in (tmp_path / "etc/nsswitch.conf").read_text()


def test_plain_runner_accepts_the_missing_privsep_dir_only(tmp_path: Path) -> None:
    """Without the namespace trick: on a guest where sshd has not started yet."""
    fs = _sandbox(tmp_path)
    if os.path.isdir("/run/sshd"):
        pytest.skip("this machine has /run/sshd; nothing to show")
    ctx = Context(
        config=Config(), fs=fs, runner=SubprocessRunner(), users=PasswdFiles(fs), clock=FixedClock(),
        root=fs.root,
    )  # fmt: skip
    outcome = OsLoginSubsystem().reconcile(ctx, _meta(True))
    assert outcome.ok, outcome.failures
    assert oslogin.BLOCK_START in (tmp_path / "etc/ssh/sshd_config").read_text()
