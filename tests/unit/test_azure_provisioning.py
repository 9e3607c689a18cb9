"""The azure_provisioning subsystem in memory: once per VM id, Ready or NotReady with the reason.

No processes: shadow-utils' argv land in InMemoryUsers (usermod -p in a small hook here), files
in an InMemoryFileSystem, the health reports in a recording fabric."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import attrs
import pytest

from guestagent.domain import azure_provisioning as domain
from guestagent.domain.config import Azure, Config, Daemons, InstanceSetup
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.passwords import sha_crypt
from guestagent.domain.platforms.azure import AzureExtras, HealthStatus
from guestagent.domain.ssh_keys import key_for_user
from guestagent.domain.sshd_config import ADDED_COMMENT
from guestagent.ports.commands import CommandResult
from guestagent.ports.metadata import MetadataUnavailable
from guestagent.services.azure_provisioning import AzureProvisioningSubsystem, restore_sshd_config
from guestagent.services.context import Context
from tests.fakes import FixedClock, InMemoryFileSystem, InMemoryUsers, RecordingRunner
from tests.keys import ED25519

T0 = datetime(2026, 3, 1, tzinfo=UTC)
VM = "6a6ff5d1-8e2f-4a3a-9a8c-2f0b8f6c7a11"
SALT = "0123456789"
SSHD = "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\nMatch User backup\n\tPasswordAuthentication yes\n"
CUSTOM = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()


class Fabric:
    """The write-back channel: records reports, fails the first `failing` of them."""

    def __init__(self, failing: int = 0) -> None:
        self.reports: list[HealthStatus] = []
        self.failing = failing

    def report_health(self, status: HealthStatus) -> None:
        if self.failing:
            self.failing -= 1
            raise MetadataUnavailable("WireServer answered HTTP 500")
        self.reports.append(status)

    def put_guest_attribute(self, key: str, value: str) -> None:
        pass


@attrs.define
class Guest:
    fs: InMemoryFileSystem
    users: InMemoryUsers
    runner: RecordingRunner
    fabric: Fabric
    ctx: Context
    passwords: dict[str, str] = attrs.field(factory=dict)
    sshd_ok: bool = True
    useradd_error: str | None = None

    def respond(self, argv: tuple[str, ...]) -> CommandResult | None:
        program = argv[0].rsplit("/", 1)[-1]
        if program == "usermod" and "-p" in argv:
            self.passwords[argv[-1]] = argv[argv.index("-p") + 1]
            return CommandResult(argv, 0, "", "")
        if program == "useradd" and self.useradd_error is not None:
            return CommandResult(argv, 1, "", self.useradd_error)
        if program == "sshd":
            return CommandResult(argv, 0 if self.sshd_ok else 255, "", "" if self.sshd_ok else "line 1: Bad")
        return self.users.respond(argv)

    def record(self) -> domain.Record | None:
        return domain.parse_record(self.fs.read_text(domain.RECORD_PATH))


def guest(config: Config | None = None, fabric: Fabric | None = None) -> Guest:
    fs = InMemoryFileSystem()
    fs.add_file("/etc/login.defs", "UID_MIN 1000\n")
    fs.add_dir("/etc/skel")
    fs.add_dir("/home")
    fs.add_file("/etc/ssh/sshd_config", SSHD)
    fs.add_file("/etc/dhcp/dhclient.conf", 'send host-name "localhost";\nrequest subnet-mask;\n')
    fs.add_file("/etc/hostname", "debian\n")
    users = InMemoryUsers(fs)
    runner = RecordingRunner()
    channel = fabric or Fabric()
    ctx = Context(
        config=config or Config(),
        fs=fs,
        runner=runner,
        users=users,
        clock=FixedClock(T0),
        guest_attributes=channel,
        owns_machine=False,
    )
    g = Guest(fs, users, runner, channel, ctx)
    runner.respond = g.respond
    return g


def azure_md(vm_id: str = VM, keys: tuple[str, ...] = (), **extras: object) -> InstanceMetadata:
    values: dict[str, object] = {
        "vm_id": vm_id,
        "admin_user": "azureuser",
        "password": "S3cret!",
        "disable_password_auth": True,
        "custom_data": CUSTOM,
        "ovf_source": "/dev/sr0",
    }
    values.update(extras)
    return InstanceMetadata(
        "azure",
        vm_id,
        hostname="myvm",
        ssh_keys=tuple(key_for_user("azureuser", k) for k in keys),
        user_data=base64.b64decode(CUSTOM),
        extras=AzureExtras(**values),  # type: ignore[arg-type]
    )


def subsystem() -> AzureProvisioningSubsystem:
    return AzureProvisioningSubsystem(salt=lambda n: SALT[:n])


def test_first_boot_provisions_everything_and_reports_ready() -> None:
    g = guest()
    outcome = subsystem().reconcile(g.ctx, azure_md())
    assert outcome.failures == ()
    assert "azureuser" in g.users.passwd
    assert g.passwords == {"azureuser": sha_crypt("S3cret!", SALT, "6")}
    sshd = g.fs.read_text("/etc/ssh/sshd_config") or ""
    assert sshd.index("PasswordAuthentication no") < sshd.index("Include") < sshd.index("Match User backup")
    assert "ClientAliveInterval 180" in sshd and "KbdInteractiveAuthentication no" in sshd
    assert g.fs.read_text(domain.SSHD_BACKUP) == SSHD
    saved = g.fs.entry(domain.CUSTOM_DATA_PATH)
    assert saved is not None and saved.mode == 0o600
    assert g.fs.read_text(domain.CUSTOM_DATA_PATH) == CUSTOM  # as given: DecodeCustomData is off
    assert g.fs.read_text("/etc/dhcp/dhclient.conf") == 'send host-name "myvm";\nrequest subnet-mask;\n'
    assert g.fabric.reports == [HealthStatus("Ready")]
    assert g.record() == domain.Record(VM, provisioned=True, reported="Ready")
    # The password never reaches a log line or an outcome.
    assert not any("S3cret" in line for line in outcome.actions)
    assert not any(SALT in line for line in outcome.actions)


def test_a_second_pass_and_a_reboot_provision_nothing() -> None:
    g = guest()
    subsystem().reconcile(g.ctx, azure_md())
    g.fs.add_file("/etc/hostname", "myvm\n")  # as the hostname subsystem, in its own lane, wrote it
    g.runner.calls.clear()
    g.fs.reset_counts()
    for sub in (subsystem(), subsystem()):  # the same process, then a fresh one (a reboot)
        outcome = sub.reconcile(g.ctx, azure_md())
        assert outcome.actions == () and outcome.failures == ()
    assert g.runner.calls == [] and not g.fs.writes
    assert len(g.fabric.reports) == 1


def test_a_new_vm_id_provisions_again_and_keeps_the_first_original() -> None:
    g = guest()
    subsystem().reconcile(g.ctx, azure_md())
    g.passwords.clear()
    g.fs.add_file("/etc/ssh/sshd_config", "PasswordAuthentication yes\n")
    outcome = subsystem().reconcile(g.ctx, azure_md(vm_id="new-vm-from-a-captured-image"))
    assert outcome.failures == ()
    assert "azureuser" in g.passwords
    assert g.fs.read_text(domain.SSHD_BACKUP) == SSHD  # the very first original stays
    assert g.fs.read_text("/etc/ssh/sshd_config") == (
        f"PasswordAuthentication no\n{ADDED_COMMENT}\n"
        "KbdInteractiveAuthentication no\nClientAliveInterval 180\n"
    )
    assert [r.state for r in g.fabric.reports] == ["Ready", "Ready"]
    assert (g.record() or domain.Record("")).vm_id == "new-vm-from-a-captured-image"


def test_user_creation_failing_is_reported_not_ready_with_the_reason() -> None:
    g = guest()
    g.useradd_error = "useradd: cannot lock /etc/passwd; try again later.\n"
    outcome = subsystem().reconcile(g.ctx, azure_md())
    [report] = g.fabric.reports
    assert (report.state, report.substatus) == ("NotReady", "ProvisioningFailed")
    assert report.description is not None and "cannot lock /etc/passwd" in report.description
    assert "azureuser" not in g.passwords  # no password for a user that is not there
    assert outcome.failures and g.record() == domain.Record(
        VM, provisioned=False, reported="NotReady", failure=report.description
    )
    # Fixed by the next pass (the scheduler retries a failed subsystem): Ready.
    g.useradd_error = None
    assert subsystem().reconcile(g.ctx, azure_md()).failures == ()
    assert [r.state for r in g.fabric.reports] == ["NotReady", "Ready"]


def test_a_report_the_fabric_refused_is_sent_again_without_provisioning_again() -> None:
    g = guest(fabric=Fabric(failing=1))
    outcome = subsystem().reconcile(g.ctx, azure_md())
    assert any("not delivered" in f for f in outcome.failures)
    assert g.record() == domain.Record(VM, provisioned=True, reported=None)
    g.runner.calls.clear()
    outcome = subsystem().reconcile(g.ctx, azure_md())
    assert outcome.failures == ()
    assert g.fabric.reports == [HealthStatus("Ready")]
    assert not any(call[0].endswith("usermod") for call in g.runner.calls)
    assert g.record() == domain.Record(VM, provisioned=True, reported="Ready")


def test_an_unreadable_dvd_is_reported_and_nothing_is_changed() -> None:
    g = guest()
    subsystem().reconcile(g.ctx, azure_md(ovf_error="ovf-env.xml: not well-formed XML (syntax error)"))
    [report] = g.fabric.reports
    assert report.state == "NotReady" and "not well-formed" in (report.description or "")
    assert g.fs.read_text("/etc/ssh/sshd_config") == SSHD
    assert g.passwords == {}


def test_sshd_refusing_the_new_config_keeps_the_old_one_and_says_so() -> None:
    g = guest()
    g.sshd_ok = False
    subsystem().reconcile(g.ctx, azure_md())
    assert g.fs.read_text("/etc/ssh/sshd_config") == SSHD
    [report] = g.fabric.reports
    assert report.state == "NotReady" and "sshd -t rejected" in (report.description or "")


def test_keys_the_accounts_subsystem_did_not_install_make_it_not_ready() -> None:
    g = guest()
    subsystem().reconcile(g.ctx, azure_md(keys=(ED25519,)))
    [report] = g.fabric.reports
    assert "1 of 1 SSH keys of azureuser" in (report.description or "")
    # With accounts switched off there is nothing to check.
    g2 = guest(Config(Daemons=Daemons(accounts_daemon=False)))
    subsystem().reconcile(g2.ctx, azure_md(keys=(ED25519,)))
    assert g2.fabric.reports == [HealthStatus("Ready")]


def test_options_from_waagent_conf() -> None:
    config = Config(
        Azure=Azure(
            decode_custom_data=True,
            delete_root_password=True,
            password_crypt_id="5",
            password_crypt_salt_length=4,
            ssh_client_alive_interval=0,
        )
    )
    g = guest(config)
    assert subsystem().reconcile(g.ctx, azure_md()).failures == ()
    assert g.fs.read_text(domain.CUSTOM_DATA_PATH) == "#!/bin/sh\necho hi\n"
    assert g.passwords == {"azureuser": sha_crypt("S3cret!", SALT[:4], "5"), "root": "*"}
    assert "ClientAliveInterval" not in (g.fs.read_text("/etc/ssh/sshd_config") or "")


def test_password_logins_stay_on_when_the_dvd_says_so() -> None:
    g = guest()
    subsystem().reconcile(g.ctx, azure_md(disable_password_auth=False))
    sshd = g.fs.read_text("/etc/ssh/sshd_config") or ""
    assert "PasswordAuthentication yes" in sshd.split("Match")[0]
    assert "KbdInteractiveAuthentication" not in sshd


def test_monitor_hostname_publishes_a_name_changed_by_hand() -> None:
    g = guest()
    sub = subsystem()
    sub.reconcile(g.ctx, azure_md())
    g.fs.add_file("/etc/hostname", "myvm\n")  # what the hostname subsystem wrote
    assert sub.reconcile(g.ctx, azure_md()).actions == ()
    g.fs.add_file("/etc/hostname", "renamed\n")
    outcome = sub.reconcile(g.ctx, azure_md())
    assert outcome.actions == (
        "publish hostname renamed through the DHCP client (/etc/dhcp/dhclient.conf send host-name)",
    )
    assert g.fs.read_text("/etc/dhcp/dhclient.conf") == 'send host-name "renamed";\nrequest subnet-mask;\n'
    assert outcome.wake_at is not None and (outcome.wake_at - T0).total_seconds() == 30
    off = guest(Config(Azure=Azure(monitor_hostname=False)))
    subsystem().reconcile(off.ctx, azure_md())
    off.fs.add_file("/etc/hostname", "renamed\n")
    assert subsystem().reconcile(off.ctx, azure_md()).actions == ()


def test_a_gethostname_line_is_kept() -> None:
    g = guest(Config(InstanceSetup=InstanceSetup(set_hostname=False)))
    g.fs.add_file("/etc/dhcp/dhclient.conf", "send host-name = gethostname();\n")
    subsystem().reconcile(g.ctx, azure_md())
    assert g.fs.read_text("/etc/dhcp/dhclient.conf") == "send host-name = gethostname();\n"


def test_dry_run_lists_and_changes_nothing() -> None:
    g = guest()
    ctx = attrs.evolve(g.ctx, dry_run=True)
    outcome = subsystem().reconcile(ctx, azure_md())
    assert "create the admin user azureuser" in outcome.actions
    assert any(a.startswith("report the provisioning result") for a in outcome.actions)
    assert g.fabric.reports == [] and g.passwords == {} and not g.fs.writes


@pytest.mark.parametrize(
    ("platform", "enabled", "expected"),
    [("azure", True, True), ("azure", False, False), ("gce", True, False)],
)
def test_enabled_on_azure_only(platform: str, enabled: bool, expected: bool) -> None:
    g = guest(Config(Azure=Azure(provisioning=enabled)))
    assert subsystem().enabled(g.ctx, attrs.evolve(azure_md(), platform=platform)) is expected


def test_record_round_trip_and_garbage() -> None:
    record = domain.Record(VM, provisioned=True, reported="Ready")
    assert domain.parse_record(domain.render_record(record)) == record
    assert json.loads(domain.render_record(record))["vm_id"] == VM
    for text in (None, "", "{", "[]", '{"vm_id": 3}'):
        assert domain.parse_record(text) is None


def test_dhclient_edits() -> None:
    assert domain.dhclient_with_hostname("", "vm") == 'send host-name "vm";\n'
    assert domain.dhclient_with_hostname("request x;", "vm") == 'request x;\nsend host-name "vm";\n'
    text = '#send host-name "commented";\n  send host-name "a";\nsend host-name "b";\n'
    assert (
        domain.dhclient_with_hostname(text, "vm") == '#send host-name "commented";\n  send host-name "vm";\n'
    )
    assert domain.dhclient_hostname('send host-name "x";') == "x"
    assert domain.dhclient_hostname("send host-name = gethostname();") == "gethostname()"
    assert domain.dhclient_hostname("") is None


def test_deprovision_puts_the_original_sshd_config_back() -> None:
    g = guest()
    assert restore_sshd_config(g.ctx) is None  # never provisioned: nothing to restore
    subsystem().reconcile(g.ctx, azure_md())
    assert g.fs.read_text("/etc/ssh/sshd_config") != SSHD
    assert restore_sshd_config(g.ctx) == f"restored /etc/ssh/sshd_config from {domain.SSHD_BACKUP}"
    assert g.fs.read_text("/etc/ssh/sshd_config") == SSHD
    assert not g.fs.exists(domain.SSHD_BACKUP)
