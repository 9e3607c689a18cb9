"""Azure provisioning's sshd_config edit against the real sshd: the settings land before the first
Match block, `sshd -t` accepts the result, the original is kept byte for byte for a deprovision.

WALinuxAgent #52/#544: a line appended after a Match block made sshd refuse to start. The last
test shows the real sshd refusing exactly that, and accepting what the agent writes instead.

sshd -t insists on /run/sshd, which this machine may lack: sshd runs in a private mount
namespace with its own tmpfs on /run, so the check is complete and the machine's /run is never
touched (as tests/integration/test_oslogin_sshd.py does).
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
from guestagent.domain import azure_provisioning as domain
from guestagent.domain.config import Config, Daemons
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.azure import AzureExtras, HealthStatus
from guestagent.entrypoints.sandbox import make_sandbox
from guestagent.ports.commands import CommandResult
from guestagent.services.azure_provisioning import AzureProvisioningSubsystem
from guestagent.services.context import Context
from tests.fakes import FixedClock, RecordingRunner

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a private mount namespace, shadow-utils"),
]

SSHD_CONFIG = """\
# Debian's, with a user's Match blocks at the end
Include /etc/ssh/sshd_config.d/*.conf
#PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server

# Example of overriding settings on a per-user basis
Match User anoncvs
\tX11Forwarding no
\tAllowTcpForwarding no
\tForceCommand cvs server
Match Address 10.0.0.0/8
\tPasswordAuthentication yes
"""


class StrictSshdRunner(RecordingRunner):
    """The real programs, except sshd runs where /run/sshd exists (a private tmpfs on /run)."""

    def __init__(self) -> None:
        self.inner = SubprocessRunner()
        super().__init__(respond=self._respond, which=self.inner.which)
        self.sshd_checks: list[tuple[str, int, str]] = []

    def _respond(self, argv: tuple[str, ...]) -> CommandResult:
        assert self.last_run is not None
        if os.path.basename(argv[0]) != "sshd":
            return self.inner.run(argv, timeout=self.last_run.timeout)
        script = 'mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec "$@"'
        wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "_", *argv]
        result = self.inner.run(wrapped, timeout=self.last_run.timeout)
        config_path = argv[argv.index("-f") + 1]
        self.sshd_checks.append((Path(config_path).read_text(), result.returncode, result.stderr))
        return CommandResult(argv, result.returncode, result.stdout, result.stderr)


class Fabric:
    def __init__(self) -> None:
        self.reports: list[HealthStatus] = []

    def report_health(self, status: HealthStatus) -> None:
        self.reports.append(status)

    def put_guest_attribute(self, key: str, value: str) -> None:
        pass


@pytest.fixture(autouse=True)
def _unshare_works() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("unshare -m not permitted here")


def _sandbox(tmp_path: Path, sshd_config: str = SSHD_CONFIG) -> Path:
    root = Path(make_sandbox(str(tmp_path / "root")))
    (root / "etc/ssh/sshd_config").write_text(sshd_config)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "etc/ssh/ssh_host_ed25519_key")],
        check=True,
    )
    return root


def _run(root: Path, runner: StrictSshdRunner, *, disable: bool = True) -> tuple[Fabric, list[str]]:
    fs = LocalFileSystem(str(root))
    fabric = Fabric()
    ctx = Context(
        config=Config(Daemons=Daemons(accounts_daemon=False)),
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=FixedClock(),
        guest_attributes=fabric,
        root=fs.root,
    )
    extras = AzureExtras(vm_id="vm-1", admin_user="azureuser", disable_password_auth=disable)
    outcome = AzureProvisioningSubsystem().reconcile(ctx, InstanceMetadata("azure", "vm-1", extras=extras))
    return fabric, list(outcome.failures)


def test_settings_land_before_the_first_match_and_sshd_accepts_them(tmp_path: Path) -> None:
    root = _sandbox(tmp_path)
    runner = StrictSshdRunner()
    fabric, failures = _run(root, runner)
    assert failures == [] and fabric.reports == [HealthStatus("Ready")]
    written = (root / "etc/ssh/sshd_config").read_text()
    first_match = written.index("Match User anoncvs")
    for line in ("PasswordAuthentication no", "KbdInteractiveAuthentication no", "ClientAliveInterval 180"):
        assert written.index(line + "\n") < first_match, line
    # Above the Include: sshd takes the first value, and Include'd files would come first.
    assert written.index("PasswordAuthentication no") < written.index("Include /etc/ssh")
    # The Match blocks are byte for byte what they were.
    assert written[first_match:] == SSHD_CONFIG[SSHD_CONFIG.index("Match User anoncvs") :]
    # The real sshd checked exactly the file now in place, and accepted it.
    assert [(text, code) for text, code, _ in runner.sshd_checks] == [(written, 0)]
    # The original, byte for byte, for a deprovision to put back.
    assert (root / domain.SSHD_BACKUP.lstrip("/")).read_bytes() == SSHD_CONFIG.encode()
    assert oct((root / domain.SSHD_BACKUP.lstrip("/")).stat().st_mode & 0o777) == "0o600"


def test_password_logins_on_pass_sshd_too(tmp_path: Path) -> None:
    root = _sandbox(tmp_path)
    runner = StrictSshdRunner()
    _fabric, failures = _run(root, runner, disable=False)
    assert failures == []
    written = (root / "etc/ssh/sshd_config").read_text()
    assert written.index("PasswordAuthentication yes\n") < written.index("Match User anoncvs")
    assert [code for _, code, _ in runner.sshd_checks] == [0]


def test_a_config_sshd_refuses_is_left_alone_and_reported(tmp_path: Path) -> None:
    broken = SSHD_CONFIG + "NoSuchOption yes\n"
    root = _sandbox(tmp_path, broken)
    runner = StrictSshdRunner()
    fabric, failures = _run(root, runner)
    assert (root / "etc/ssh/sshd_config").read_text() == broken
    assert any("sshd -t rejected" in f and "NoSuchOption" in f for f in failures)
    [report] = fabric.reports
    assert report.state == "NotReady" and "sshd -t rejected" in (report.description or "")


def test_appending_after_a_match_block_is_what_goes_wrong(tmp_path: Path) -> None:
    """What appending does (WALinuxAgent once did): a line after a Match block belongs to that
    block. `PasswordAuthentication no` appended there leaves password logins on for everyone
    else (sshd -T shows the global value), and a directive sshd forbids inside Match (such as
    ClientAliveInterval in the OpenSSH of the time, UsePAM today) stops sshd from starting.
    The agent's edit of the same file has the setting take effect, and sshd accepts it."""
    root = _sandbox(tmp_path)
    host_key = f"-oHostKey={root / 'etc/ssh/ssh_host_ed25519_key'}"
    runner = StrictSshdRunner()

    def effective(path: Path) -> str:
        result = runner.run([SSHD, "-T", "-f", str(path), host_key], timeout=60)
        assert result.returncode == 0, result.stderr
        return next(
            line.split()[1]
            for line in result.stdout.splitlines()
            if line.startswith("passwordauthentication ")
        )

    appended = root / "appended_sshd_config"
    appended.write_text(SSHD_CONFIG + "PasswordAuthentication no\n")
    assert effective(appended) == "yes"  # the setting never took
    forbidden = root / "forbidden_sshd_config"
    forbidden.write_text(SSHD_CONFIG + "UsePAM yes\n")
    refused = runner.run([SSHD, "-t", "-f", str(forbidden), host_key], timeout=60)
    assert refused.returncode != 0 and "not allowed within a Match block" in refused.stderr
    _fabric, failures = _run(root, runner)
    assert failures == [] and runner.sshd_checks[-1][1] == 0
    assert effective(root / "etc/ssh/sshd_config") == "no"
