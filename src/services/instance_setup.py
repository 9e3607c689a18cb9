"""Instance setup: first boot (host keys, boto.cfg, instance id) and per-boot tuning, via ports."""

from __future__ import annotations

import re
from collections.abc import Iterable

from guestagent.domain import instance_setup as domain
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.gce import PLATFORM, gce
from guestagent.ports.filesystem import UnsafePath
from guestagent.ports.metadata import MetadataUnavailable
from guestagent.services.context import Context
from guestagent.services.journal import ApplyJournal
from guestagent.services.subsystem import Outcome

KEYGEN_TIMEOUT = 120.0  # large RSA keys on a slow first boot with little entropy
SSHABLE_ATTRIBUTE = "guest-agent/sshable"


def _read(ctx: Context, path: str) -> str | None:
    # sysfs attributes can refuse reads (EINVAL, EIO) for devices in odd states.
    try:
        return ctx.fs.read_text(path)
    except OSError:
        return None


def observe_tuning(ctx: Context) -> domain.TuningInputs:
    cpus = domain.parse_cpu_list(_read(ctx, "/sys/devices/system/cpu/online") or "")
    devices = tuple(
        d for d in ctx.fs.listdir(domain.VIRTIO_NET_DRIVER_DIR) if re.fullmatch(r"virtio\d+", d)
    )
    interrupts = _read(ctx, "/proc/interrupts") or ""
    values: dict[str, str | None] = {}
    for irq, _ in domain.virtio_irqs(interrupts, devices):
        path = f"/proc/irq/{irq}/smp_affinity_list"
        values[path] = _read(ctx, path)
    tx_queues: dict[str, tuple[int, ...]] = {}
    for device in devices:
        for nic in ctx.fs.listdir(f"{domain.VIRTIO_NET_DRIVER_DIR}/{device}/net"):
            names = ctx.fs.listdir(f"/sys/class/net/{nic}/queues")
            queues = tuple(sorted(int(n[3:]) for n in names if re.fullmatch(r"tx-\d+", n)))
            tx_queues[nic] = queues
            for queue in queues:
                path = f"/sys/class/net/{nic}/queues/tx-{queue}/xps_cpus"
                values[path] = _read(ctx, path)
    disks = []
    for name in ctx.fs.listdir("/sys/block"):
        model = _read(ctx, f"/sys/block/{name}/device/model")
        scheduler = _read(ctx, f"/sys/block/{name}/queue/scheduler")
        if model is not None and scheduler is not None:
            disks.append(domain.Disk(name, model, scheduler))
    return domain.TuningInputs(cpus, devices, interrupts, values, tx_queues, tuple(disks))


def observe(ctx: Context, id_path: str = domain.INSTANCE_ID_PATH) -> domain.SetupCurrent:
    # [Instance] instance_id is the old Python agent's record: Google's, read on GCE only.
    legacy = ctx.config.Instance.instance_id if id_path == domain.INSTANCE_ID_PATH else ""
    recorded = domain.recorded_instance_id(ctx.fs.read_text(id_path), legacy)
    setup = ctx.config.InstanceSetup
    # Without a kernel-attribute writer (an embedding program may not give one) there is
    # nothing to plan, so /sys is not even read.
    wanted = setup.set_multiqueue or setup.optimize_local_ssd
    tuning = observe_tuning(ctx) if wanted and ctx.sysfs is not None else domain.TuningInputs()
    return domain.SetupCurrent(recorded, tuple(ctx.fs.listdir(domain.SSH_DIR)), tuning)


def generate_host_key(ctx: Context, key_type: str, low_priority: bool = False) -> None:
    """ssh-keygen into a temp name, then private (0600) and public (0644) key into place.

    The temp pair is removed first: ssh-keygen asks before overwriting, and a
    leftover from an interrupted boot would make it fail.
    """
    final = domain.host_key_path(key_type)
    temp = final + ".temp"
    ctx.fs.makedirs(domain.SSH_DIR, 0o755)
    for path in (temp, temp + ".pub"):
        ctx.fs.remove(path)
    try:
        result = ctx.runner.run(
            domain.keygen_argv(key_type, ctx.fs.host_path(temp), low_priority), timeout=KEYGEN_TIMEOUT
        )
        if not result.ok:
            raise ValueError(f"ssh-keygen exit {result.returncode}: {result.stderr.strip()[:300]}")
        private = ctx.fs.read_text(temp)
        public = ctx.fs.read_text(temp + ".pub")
        if private is None or public is None:
            raise ValueError("ssh-keygen reported success but wrote no key")
        if low_priority and ctx.fs.read_text(final) is not None:
            ctx.log.info("%s appeared while a new one was being made: kept", final)
            return
        # Private first: an agent killed between the two writes has not recorded
        # the instance id yet, so the next start makes a fresh, matching pair.
        ctx.fs.write_atomic(final, private, mode=domain.PRIVATE_KEY_MODE)
        ctx.fs.write_atomic(final + ".pub", public, mode=domain.PUBLIC_KEY_MODE)
    finally:
        for path in (temp, temp + ".pub"):
            ctx.fs.remove(path)


def publish_host_keys(ctx: Context) -> list[str]:
    """PUT each host public key; returns failures (the others are still sent)."""
    failures: list[str] = []
    if ctx.guest_attributes is None:
        return failures
    for name in ctx.fs.listdir(domain.SSH_DIR):
        if not (name.startswith("ssh_host_") and name.endswith("_key.pub")):
            continue
        parsed = domain.parse_public_key(ctx.fs.read_text(f"{domain.SSH_DIR}/{name}") or "")
        if parsed is None:
            continue
        key_type, blob = parsed
        try:
            ctx.guest_attributes.put_guest_attribute(domain.guest_attribute_for(key_type), blob)
        except MetadataUnavailable as exc:
            failures.append(f"publishing host key {key_type} failed: {exc}")
    return failures


def report_sshable(ctx: Context) -> bool:
    """PUT guest-agent/sshable = unix time; the lead calls it after a good accounts pass.

    Returns whether the write went through (False without a write-back channel).
    """
    if ctx.guest_attributes is None or ctx.dry_run:
        return False
    now = str(int(ctx.clock.now().timestamp()))
    try:
        ctx.guest_attributes.put_guest_attribute(SSHABLE_ATTRIBUTE, now)
    except MetadataUnavailable as exc:
        ctx.log.warning("could not write %s: %s", SSHABLE_ATTRIBUTE, exc)
        return False
    return True


def apply(ctx: Context, actions: Iterable[domain.Action]) -> tuple[list[str], list[str]]:
    """Carry out the plan; one failed step never stops the next.

    The instance id is recorded even when a key type failed (as Google's agent
    does): otherwise every restart would regenerate the keys that did work.
    """
    journal = ApplyJournal(ctx.log)
    for action in actions:
        try:
            if isinstance(action, domain.GenerateHostKey):
                generate_host_key(ctx, action.key_type, action.low_priority)
            elif isinstance(action, domain.RemoveHostKey):
                path = domain.host_key_path(action.key_type)
                ctx.fs.remove(path)
                ctx.fs.remove(path + ".pub")
            elif isinstance(action, domain.RecordPendingHostKeys):
                ctx.fs.write_atomic(action.path, domain.pending_record(action.key_types), mode=0o644)
            elif isinstance(action, domain.ClearPendingHostKeys):
                ctx.fs.remove(action.path)
            elif isinstance(action, domain.WriteBoto):
                ctx.fs.write_atomic(action.path, action.text, mode=0o644)
            elif isinstance(action, domain.RecordInstanceId):
                ctx.fs.write_atomic(action.path, action.instance_id, mode=0o644)
            elif isinstance(action, domain.PublishHostKeys):
                errors = publish_host_keys(ctx)
                for error in errors:
                    journal.failed(error)
                if errors:
                    continue
            elif ctx.sysfs is not None:
                try:
                    ctx.sysfs.write_value(action.path, action.value)
                except OSError as exc:
                    # Tuning is best effort, and a retry cannot fix a value the kernel
                    # refuses (EINVAL), so it is logged but is no failure to retry.
                    ctx.log.warning("%s failed: %s", action.describe(), exc)
                    continue
        except (OSError, UnsafePath, ValueError) as exc:
            journal.failed(f"{action.describe()} failed: {exc}")
            continue
        journal.did(action)
    return journal.result()


class InstanceSetupSubsystem:
    name = "instance_setup"

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return True  # every part has its own switch in [InstanceSetup]

    def inputs(self, metadata: InstanceMetadata) -> object:
        return (metadata.instance_id, gce(metadata).numeric_project_id)

    def plan(self, ctx: Context, metadata: InstanceMetadata) -> domain.SetupPlan:
        id_path = domain.instance_id_path(metadata.platform)
        return domain.plan(
            metadata.instance_id,
            gce(metadata).numeric_project_id if metadata.platform == PLATFORM else None,
            observe(ctx, id_path),
            ctx.config.InstanceSetup,
            # Only a platform with a write-back channel gets one (see bootstrap).
            can_publish=ctx.guest_attributes is not None,
            id_path=id_path,
        )

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        planned = self.plan(ctx, metadata)
        if planned.first_boot:
            ctx.log.info("first boot of instance %s", metadata.instance_id)
        for note in planned.notes:
            ctx.log.warning("%s", note)
        if ctx.dry_run:
            return Outcome(self.name, tuple(a.describe() for a in planned.actions))
        done, failures = apply(ctx, planned.actions)
        return Outcome(self.name, tuple(done), tuple(failures))



class DeferredHostKeysSubsystem:
    """The host key types first boot left for after READY (domain.DEFERRED_KEY_TYPES).

    It shares instance setup's lane and runs after it; in the daemon it waits for READY,
    so sshd (ordered after the agent) starts on the keys made before it.
    """

    name = "host_keys"
    after_ready = True

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        return ctx.config.InstanceSetup.set_host_keys

    def inputs(self, metadata: InstanceMetadata) -> object:
        return metadata.instance_id

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        pending = ctx.fs.read_text(domain.PENDING_HOST_KEYS_PATH)
        present = ctx.fs.listdir(domain.SSH_DIR) if pending is not None else ()
        actions = domain.deferred_plan(pending, present, can_publish=ctx.guest_attributes is not None)
        if ctx.dry_run or not actions:
            return Outcome(self.name, tuple(a.describe() for a in actions))
        done, failures = apply(ctx, actions)
        return Outcome(self.name, tuple(done), tuple(failures))
