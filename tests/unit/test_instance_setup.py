"""Instance setup: first-boot decision, host-key types, boto content, tuning plans, and the
subsystem on a sandbox root with a fake ssh-keygen and a fake sysfs tree."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.sysfs import SysfsWriter
from guestagent.domain import instance_setup as setup
from guestagent.domain.config import Config, Instance, InstanceSetup
from guestagent.ports.commands import CommandResult
from guestagent.services.context import Context
from guestagent.services.instance_setup import (
    DeferredHostKeysSubsystem,
    InstanceSetupSubsystem,
    apply,
    report_sshable,
)
from tests.fakes import FixedClock, RecordingGuestAttributes, RecordingRunner
from tests.gce_metadata import gce_md

# ---- pure decisions


@pytest.mark.parametrize(
    ("file_text", "config_id", "metadata_id", "first"),
    [
        (None, "", "123", True),  # never set up
        ("123", "", "123", False),  # restart of the same instance
        ("123\n", "", "123", False),  # a trailing newline written by another tool
        ("123", "", "456", True),  # an image or a clone of another instance
        (None, "123", "123", False),  # the old Python agent's record in instance_configs.cfg
        ("", "123", "123", False),  # empty file: fall back to the config
        ("456", "123", "123", True),  # the file wins over the config
        (None, "", "", False),  # metadata without an id never triggers a regeneration
    ],
)
def test_first_boot_decision(
    file_text: str | None, config_id: str, metadata_id: str, first: bool
) -> None:
    recorded = setup.recorded_instance_id(file_text, config_id)
    assert setup.is_first_boot(metadata_id, recorded) is first


def test_host_key_types_are_configured_plus_existing() -> None:
    existing = ["ssh_host_dsa_key", "ssh_host_dsa_key.pub", "ssh_host_rsa_key", "sshd_config", "moduli"]
    assert setup.host_key_types(existing, ("ecdsa", "ed25519", "rsa")) == (
        "ecdsa",
        "ed25519",
        "rsa",
        "dsa",
    )
    assert setup.host_key_types([], ("ED25519", " ", "ed25519")) == ("ed25519",)


def test_boto_config_matches_google() -> None:
    assert setup.boto_config("123456789012") == (
        "[GSUtil]\n"
        "default_project_id = 123456789012\n"
        "default_api_version = 2\n"
        "\n"
        "[GoogleCompute]\n"
        "service_account = default\n"
    )


def test_parse_public_key() -> None:
    assert setup.parse_public_key("ssh-ed25519 AAAAC3Nza== root@vm\n") == ("ssh-ed25519", "AAAAC3Nza==")
    assert setup.parse_public_key("garbage") is None
    assert setup.parse_public_key("ssh-rsa not!base64") is None


@given(st.sets(st.integers(min_value=0, max_value=200)))
def test_cpu_mask_round_trips_through_cpu_list_parsing(cpus: set[int]) -> None:
    mask = setup.parse_mask(setup.cpu_mask(cpus))
    assert mask == sum(1 << c for c in cpus)
    assert all(len(word) == 8 for word in setup.cpu_mask(cpus).split(","))


def test_cpu_list_and_scheduler_parsing() -> None:
    assert setup.parse_cpu_list("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert setup.parse_scheduler("[mq-deadline] kyber none\n") == (
        "mq-deadline",
        ("mq-deadline", "kyber", "none"),
    )


INTERRUPTS = """\
           CPU0       CPU1
 24:          0          0   PCI-MSI 49152-edge      virtio0-config
 25:       1822          0   PCI-MSI 49153-edge      virtio0-input.0
 26:          1          0   PCI-MSI 49154-edge      virtio0-output.0
 27:        900          0   PCI-MSI 49155-edge      virtio0-input.1
 28:          1          0   PCI-MSI 49156-edge      virtio0-output.1
 29:         10          0   PCI-MSI 65537-edge      virtio1-req.0
"""


def _tuning(**overrides: object) -> setup.TuningInputs:
    base: dict[str, object] = {
        "cpus": (0, 1, 2, 3),
        "virtio_net_devices": ("virtio0",),
        "interrupts": INTERRUPTS,
        "values": {
            "/proc/irq/25/smp_affinity_list": "0-3",
            "/proc/irq/26/smp_affinity_list": "0",
            "/proc/irq/27/smp_affinity_list": "0-3",
            "/proc/irq/28/smp_affinity_list": "1",
            "/sys/class/net/ens4/queues/tx-0/xps_cpus": "0",
            "/sys/class/net/ens4/queues/tx-1/xps_cpus": "a",
        },
        "tx_queues": {"ens4": (0, 1)},
        "disks": (
            setup.Disk("nvme0n1", "nvme_card\n", "[mq-deadline] none\n"),
            setup.Disk("nvme1n1", "nvme_card-pd\n", "[mq-deadline] none\n"),
            setup.Disk("sdb", "EphemeralDisk    \n", "[none] mq-deadline\n"),
        ),
    }
    base.update(overrides)
    return setup.TuningInputs(**base)  # type: ignore[arg-type]


def test_multiqueue_pins_queue_irqs_and_stripes_xps() -> None:
    writes = {(a.path, a.value) for a in setup.multiqueue_actions(_tuning())}  # type: ignore[union-attr]
    assert writes == {
        ("/proc/irq/25/smp_affinity_list", "0"),
        ("/proc/irq/27/smp_affinity_list", "1"),
        # queue 0 serves CPUs 0 and 2, queue 1 serves CPUs 1 and 3 (mask 0xa: already right)
        ("/sys/class/net/ens4/queues/tx-0/xps_cpus", "00000005"),
    }


def test_multiqueue_writes_nothing_once_tuned() -> None:
    values = dict(_tuning().values)
    values.update(
        {
            "/proc/irq/25/smp_affinity_list": "0",
            "/proc/irq/27/smp_affinity_list": "1",
            "/sys/class/net/ens4/queues/tx-0/xps_cpus": "00000000,00000005",
        }
    )
    assert setup.multiqueue_actions(_tuning(values=values)) == []


def test_local_ssd_scheduler_none_only_for_local_ssds_not_already_none() -> None:
    actions = setup.local_ssd_actions(_tuning())
    assert actions == [
        setup.WriteKernelValue("/sys/block/nvme0n1/queue/scheduler", "none", "local SSD nvme0n1")
    ]


def _have(recorded: str = "", names: Sequence[str] = ()) -> setup.SetupCurrent:
    return setup.SetupCurrent(recorded, tuple(names), _tuning())


def _kinds(planned: setup.SetupPlan) -> list[str]:
    return [type(a).__name__ for a in planned.actions]


def test_plan_first_boot_then_same_id_generates_nothing() -> None:
    config = InstanceSetup()
    first = setup.plan("42", "7", _have(""), config, can_publish=True)
    assert first.first_boot
    assert _kinds(first)[:6] == [
        "RecordPendingHostKeys",  # rsa: after READY
        "GenerateHostKey",
        "GenerateHostKey",
        "WriteBoto",
        "RecordInstanceId",
        "PublishHostKeys",
    ]
    generated = [a.key_type for a in first.actions if isinstance(a, setup.GenerateHostKey)]
    assert generated == ["ecdsa", "ed25519"]
    again = setup.plan("42", "7", _have("42"), config, can_publish=True)
    assert not again.first_boot
    assert "GenerateHostKey" not in _kinds(again)
    assert "WriteBoto" not in _kinds(again)


@pytest.mark.parametrize(
    ("option", "gone"),
    [
        ("set_host_keys", {"GenerateHostKey", "RecordPendingHostKeys", "PublishHostKeys"}),
        ("set_boto_config", {"WriteBoto"}),
        (
            "network_enabled",
            {"GenerateHostKey", "RecordPendingHostKeys", "WriteBoto", "RecordInstanceId", "PublishHostKeys"},
        ),
        ("set_multiqueue", {"multiqueue"}),
        ("optimize_local_ssd", {"ssd"}),
    ],
)
def test_each_switch_removes_its_part(option: str, gone: set[str]) -> None:
    def parts(planned: setup.SetupPlan) -> set[str]:
        out = set(_kinds(planned)) - {"WriteKernelValue"}
        for action in planned.actions:
            if isinstance(action, setup.WriteKernelValue):
                out.add("ssd" if "local SSD" in action.why else "multiqueue")
        return out

    full = parts(setup.plan("42", "7", _have(""), InstanceSetup(), can_publish=True))
    off = InstanceSetup(**{option: False})  # type: ignore[arg-type]
    assert full - parts(setup.plan("42", "7", _have(""), off, can_publish=True)) == gone


def test_slow_key_types_wait_for_ready_and_the_image_key_goes_before() -> None:
    have = _have("", ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_dsa_key"))
    planned = setup.plan("42", "7", have, InstanceSetup(), can_publish=True)
    record, *rest = planned.actions
    # recorded before anything is removed: a kill in between still leaves the types to make
    assert record == setup.RecordPendingHostKeys(setup.PENDING_HOST_KEYS_PATH, ("rsa", "dsa"))
    assert rest[:2] == [setup.RemoveHostKey("rsa"), setup.RemoveHostKey("dsa")]
    assert setup.GenerateHostKey("rsa") not in planned.actions
    # only fast types when nothing slow is configured or present: nothing recorded
    fast = setup.plan("42", "7", _have(""), InstanceSetup(host_key_types=("ed25519",)), can_publish=True)  # type: ignore[arg-type]
    assert "RecordPendingHostKeys" not in _kinds(fast)


@pytest.mark.parametrize(
    ("text", "types"),
    [("rsa\n", ("rsa",)), ("rsa\ndsa\nrsa\n", ("rsa", "dsa")), ("\n../x\nRSA\n", ()), ("", ())],
)
def test_pending_record_round_trip_and_junk(text: str, types: tuple[str, ...]) -> None:
    assert setup.pending_key_types(text) == types
    assert setup.pending_key_types(setup.pending_record(types)) == types


def test_deferred_plan() -> None:
    assert setup.deferred_plan(None, (), can_publish=True) == ()
    assert _kinds(setup.SetupPlan(setup.deferred_plan("rsa\n", (), can_publish=True))) == [
        "GenerateHostKey",
        "PublishHostKeys",
        "ClearPendingHostKeys",
    ]
    # a record with nothing usable in it is only removed
    assert _kinds(setup.SetupPlan(setup.deferred_plan("junk!\n", (), can_publish=True))) == [
        "ClearPendingHostKeys"
    ]
    # made since by the image's own generator before sshd started: this instance's, kept
    made = ("ssh_host_rsa_key", "ssh_host_rsa_key.pub")
    assert _kinds(setup.SetupPlan(setup.deferred_plan("rsa\n", made, can_publish=True))) == [
        "ClearPendingHostKeys"
    ]


def test_a_key_that_appears_while_the_deferred_one_is_made_is_kept(tmp_path: Path) -> None:
    ssh = tmp_path / "etc/ssh"
    ssh.mkdir(parents=True)
    pending = tmp_path / setup.PENDING_HOST_KEYS_PATH.lstrip("/")
    pending.parent.mkdir(parents=True)
    pending.write_text("rsa\n")
    keygen = FakeKeygen()

    def racing(argv: tuple[str, ...]) -> CommandResult | None:
        (ssh / "ssh_host_rsa_key").write_text("MADE BY ssh-keygen -A\n")  # sshd's own unit
        return keygen._keygen(argv)

    runner = RecordingRunner(respond=racing)
    outcome = DeferredHostKeysSubsystem().reconcile(_ctx(tmp_path, runner, None), META)  # type: ignore[arg-type]
    assert outcome.ok, outcome.failures
    assert (ssh / "ssh_host_rsa_key").read_text() == "MADE BY ssh-keygen -A\n"
    assert not list(ssh.glob("*.temp*"))
    assert not pending.exists()


def test_boto_skipped_with_a_note_without_project_number() -> None:
    planned = setup.plan("42", "", _have(""), InstanceSetup(), can_publish=False)
    assert "WriteBoto" not in _kinds(planned)
    assert "PublishHostKeys" not in _kinds(planned)
    assert planned.notes


# ---- the subsystem on a sandbox root


NOW = datetime(2026, 11, 23, 20, 0, tzinfo=UTC)


class FakeKeygen(RecordingRunner):
    """Plays ssh-keygen: writes a fake key pair where asked, counts the calls."""

    def __init__(self) -> None:
        super().__init__(respond=self._keygen)
        self.niced: list[str] = []  # the types made at low priority

    def _keygen(self, argv: tuple[str, ...]) -> CommandResult | None:
        if argv[0] == "nice":
            self.niced.append(argv[5])
            argv = argv[3:]
        assert argv[0] == "ssh-keygen"
        key_type, path = argv[2], argv[4]
        if key_type == "dsa":
            return CommandResult(argv, 1, "", "unknown key type dsa")
        Path(path).write_text(f"PRIVATE {key_type} {len(self.calls)}\n")
        Path(path + ".pub").write_text(f"ssh-{key_type} QUFB{len(self.calls)} root@sandbox\n")
        return None  # the default answer: success


def _fake_sysfs(root: Path) -> None:
    files = {
        "sys/devices/system/cpu/online": "0-1\n",
        "proc/interrupts": INTERRUPTS,
        "proc/irq/25/smp_affinity_list": "0-1\n",
        "proc/irq/26/smp_affinity_list": "0-1\n",
        "proc/irq/27/smp_affinity_list": "0-1\n",
        "proc/irq/28/smp_affinity_list": "0-1\n",
        "sys/class/net/ens4/queues/tx-0/xps_cpus": "00000000\n",
        "sys/class/net/ens4/queues/tx-1/xps_cpus": "00000000\n",
        "sys/class/net/ens4/queues/rx-0/rps_cpus": "00000000\n",
        "sys/block/nvme0n1/device/model": "nvme_card                               \n",
        "sys/block/nvme0n1/queue/scheduler": "[mq-deadline] none\n",
        "sys/block/sda/device/model": "PersistentDisk  \n",
        "sys/block/sda/queue/scheduler": "[mq-deadline] none\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "sys/bus/virtio/drivers/virtio_net/virtio0/net/ens4").mkdir(parents=True)


def _ctx(
    root: Path, runner: FakeKeygen, attributes: RecordingGuestAttributes | None, **setup_opts: bool
) -> Context:
    fs = LocalFileSystem(str(root))
    return Context(
        config=Config(InstanceSetup=InstanceSetup(**setup_opts), Instance=Instance()),  # type: ignore[arg-type]
        fs=fs,
        runner=runner,
        users=PasswdFiles(fs),
        clock=FixedClock(NOW),
        guest_attributes=attributes,
        root=str(root),
        sysfs=SysfsWriter(str(root)),
    )


META = gce_md("4520031799277581759", numeric_project_id="123")


def test_first_boot_then_restart(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path)
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_rsa_key").write_text("IMAGE KEY\n")
    runner, attributes = FakeKeygen(), RecordingGuestAttributes()
    ctx = _ctx(tmp_path, runner, attributes)
    outcome = InstanceSetupSubsystem().reconcile(ctx, META)
    assert outcome.ok, outcome.failures
    ssh = tmp_path / "etc/ssh"
    # before READY: the fast types made, the image's RSA key gone, not yet a new one
    assert [c[2] for c in runner.calls] == ["ecdsa", "ed25519"]
    assert not (ssh / "ssh_host_rsa_key").exists()
    assert set(attributes.values) == {"hostkeys/ssh-ecdsa", "hostkeys/ssh-ed25519"}

    later = DeferredHostKeysSubsystem().reconcile(ctx, META)
    assert later.ok, later.failures
    assert [c[-6] for c in runner.calls] == ["ecdsa", "ed25519", "rsa"]
    assert runner.niced == ["rsa"]  # beside sshd's start, at the lowest priority
    assert (ssh / "ssh_host_rsa_key").read_text().startswith("PRIVATE rsa")  # image key replaced
    assert not (tmp_path / setup.PENDING_HOST_KEYS_PATH.lstrip("/")).exists()
    assert oct((ssh / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
    assert oct((ssh / "ssh_host_ed25519_key.pub").stat().st_mode & 0o777) == "0o644"
    assert not list(ssh.glob("*.temp*"))
    assert attributes.values == {
        "hostkeys/ssh-ecdsa": "QUFB1",
        "hostkeys/ssh-ed25519": "QUFB2",
        "hostkeys/ssh-rsa": "QUFB3",
    }
    assert (tmp_path / "etc/boto.cfg").read_text() == setup.boto_config("123")
    assert (tmp_path / "etc/google_instance_id").read_text() == META.instance_id
    # tuning in the fake sysfs: 2 CPUs, 2 queues; persistent disk untouched
    assert (tmp_path / "proc/irq/25/smp_affinity_list").read_text() == "0"
    assert (tmp_path / "proc/irq/27/smp_affinity_list").read_text() == "1"
    assert (tmp_path / "sys/class/net/ens4/queues/tx-1/xps_cpus").read_text() == "00000002"
    assert (tmp_path / "sys/block/nvme0n1/queue/scheduler").read_text() == "none"
    assert (tmp_path / "sys/block/sda/queue/scheduler").read_text() == "[mq-deadline] none\n"

    # what the kernel would show after that write (a plain file just keeps "none")
    (tmp_path / "sys/block/nvme0n1/queue/scheduler").write_text("[none] mq-deadline\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in ssh.iterdir()}
    runner.calls.clear()
    restart = InstanceSetupSubsystem().reconcile(_ctx(tmp_path, runner, RecordingGuestAttributes()), META)
    assert restart.ok
    assert DeferredHostKeysSubsystem().reconcile(ctx, META).actions == ()
    assert runner.calls == []
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in ssh.iterdir()} == before
    # host keys are published again (cheap, and heals a failed PUT), nothing else is written
    assert restart.actions == ("publish SSH host public keys to guest attributes",)


def test_network_disabled_skips_keys_boto_and_record(tmp_path: Path) -> None:
    runner = FakeKeygen()
    outcome = InstanceSetupSubsystem().reconcile(
        _ctx(tmp_path, runner, RecordingGuestAttributes(), network_enabled=False), META
    )
    assert outcome.ok
    assert runner.calls == []
    assert not (tmp_path / "etc/boto.cfg").exists()
    assert not (tmp_path / "etc/google_instance_id").exists()


def test_a_failing_key_type_does_not_stop_the_others(tmp_path: Path) -> None:
    runner = FakeKeygen()
    ctx = _ctx(tmp_path, runner, RecordingGuestAttributes(), host_key_types=("dsa", "ed25519"))  # type: ignore[arg-type]
    assert InstanceSetupSubsystem().reconcile(ctx, META).ok
    outcome = DeferredHostKeysSubsystem().reconcile(ctx, META)  # dsa is made after READY
    assert [f.split(" failed")[0] for f in outcome.failures] == [
        "generate SSH host key /etc/ssh/ssh_host_dsa_key"
    ]
    assert (tmp_path / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (tmp_path / "etc/google_instance_id").exists()
    # not tried again at every start
    assert not (tmp_path / setup.PENDING_HOST_KEYS_PATH.lstrip("/")).exists()


def test_unreachable_guest_attributes_is_a_failure_but_keys_stay(tmp_path: Path) -> None:
    outcome = InstanceSetupSubsystem().reconcile(
        _ctx(tmp_path, FakeKeygen(), RecordingGuestAttributes(fail=True)), META
    )
    assert any("publishing host key" in f for f in outcome.failures)
    assert (tmp_path / "etc/ssh/ssh_host_ed25519_key.pub").exists()


def test_dry_run_only_describes(tmp_path: Path) -> None:
    runner = FakeKeygen()
    ctx = attrs.evolve(_ctx(tmp_path, runner, RecordingGuestAttributes()), dry_run=True)
    outcome = InstanceSetupSubsystem().reconcile(ctx, META)
    assert "generate SSH host key /etc/ssh/ssh_host_ed25519_key" in outcome.actions
    assert runner.calls == []
    assert not os.listdir(tmp_path)


def test_report_sshable_puts_unix_time(tmp_path: Path) -> None:
    attributes = RecordingGuestAttributes()
    assert report_sshable(_ctx(tmp_path, FakeKeygen(), attributes))
    assert attributes.values == {"guest-agent/sshable": str(int(NOW.timestamp()))}
    assert not report_sshable(_ctx(tmp_path, FakeKeygen(), RecordingGuestAttributes(fail=True)))
    assert not report_sshable(_ctx(tmp_path, FakeKeygen(), None))


def test_kernel_refusing_a_tuning_value_is_logged_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_sysfs(tmp_path)
    ctx = _ctx(tmp_path, FakeKeygen(), RecordingGuestAttributes())
    planned = InstanceSetupSubsystem().plan(ctx, META)
    # between observing and writing, the attribute stops accepting writes (EISDIR here;
    # EINVAL or ENOENT on a real kernel)
    irq = tmp_path / "proc/irq/25/smp_affinity_list"
    irq.unlink()
    irq.mkdir()
    with caplog.at_level(logging.WARNING, logger="guestagent"):
        done, failures = apply(ctx, planned.actions)
    assert failures == []
    assert any("/proc/irq/25/smp_affinity_list" in r.getMessage() for r in caplog.records)
    assert "write 1 to /proc/irq/27/smp_affinity_list (virtio-net queue 1 IRQ)" in done
