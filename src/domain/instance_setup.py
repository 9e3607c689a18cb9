"""Instance setup: first-boot work (host keys, boto config) and per-boot kernel tuning.

First boot is decided by comparing the metadata instance id with the one the
agent recorded; a restart of the same instance therefore regenerates nothing.
Tuning is planned from a snapshot of /sys and /proc values and only writes
values that differ, so a second pass writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

from guestagent.domain.config import InstanceSetup

INSTANCE_ID_PATH = "/etc/google_instance_id"
AGENT_INSTANCE_ID_PATH = "/var/lib/guestagent/instance-id"
# Host key types generated after READY. sshd starts with any one host key, and an RSA key
# takes 20-40 s of CPU on an emulated first boot: made before READY, it held every login
# back that long. The image's old key of such a type is removed before READY all the same,
# so a clone never serves it. What is still to be made is recorded here first, so an agent
# killed in between makes it at its next start.
DEFERRED_KEY_TYPES = frozenset({"rsa", "dsa"})
PENDING_HOST_KEYS_PATH = "/var/lib/guestagent/pending-host-keys"


def instance_id_path(platform: str) -> str:
    """Where the instance id of the last first boot is kept: Google's file on GCE (a guest
    moved from Google's agent is not set up twice), the agent's own elsewhere."""
    return INSTANCE_ID_PATH if platform == "gce" else AGENT_INSTANCE_ID_PATH
SSH_DIR = "/etc/ssh"
BOTO_PATH = "/etc/boto.cfg"
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644

# GCE's local SSDs: NVMe ones report this model, SCSI ones "EphemeralDisk".
LOCAL_SSD_MODELS = frozenset({"nvme_card", "EphemeralDisk"})
VIRTIO_NET_DRIVER_DIR = "/sys/bus/virtio/drivers/virtio_net"

_HOST_KEY_NAME = re.compile(r"^ssh_host_([a-z0-9]+)_key$")
_VIRTIO_IRQ = re.compile(r"^\s*(\d+):.*\s(virtio\d+)-(?:input|output)\.(\d+)\s*$")


# ---- first boot


def recorded_instance_id(id_file_text: str | None, config_instance_id: str) -> str:
    """The id this guest last set itself up for: the file first, then the old agent's config."""
    if id_file_text is not None and id_file_text.strip():
        return id_file_text.strip()
    return config_instance_id.strip()


def is_first_boot(metadata_instance_id: str, recorded: str) -> bool:
    """An unknown metadata id is never a first boot: regenerating host keys on a
    metadata hiccup would break every user's known_hosts."""
    return bool(metadata_instance_id) and metadata_instance_id != recorded


def host_key_types(existing_names: Iterable[str], configured: Iterable[str]) -> tuple[str, ...]:
    """Configured types, then any other type the guest already has a key for.

    Google's agent regenerates the union: a clone must not keep the image's
    private key of a type nobody listed.
    """
    out = [t.strip().lower() for t in configured if t.strip()]
    for name in sorted(existing_names):
        match = _HOST_KEY_NAME.match(name)
        if match and match.group(1) not in out:
            out.append(match.group(1))
    return tuple(dict.fromkeys(out))


def host_key_path(key_type: str) -> str:
    return f"{SSH_DIR}/ssh_host_{key_type}_key"


def keygen_argv(key_type: str, host_temp_path: str, low_priority: bool = False) -> tuple[str, ...]:
    argv = ("ssh-keygen", "-t", key_type, "-f", host_temp_path, "-N", "", "-q")
    # After READY the CPU is sshd's and the first logins': an RSA key made at full
    # priority beside them delayed sshd's start by ~10 s on an emulated first boot.
    return ("nice", "-n", "19", *argv) if low_priority else argv


def parse_public_key(text: str) -> tuple[str, str] | None:
    """(`ssh-ed25519`, base64) from a .pub file, or None when it is not one."""
    fields = text.split()
    if len(fields) < 2 or not re.fullmatch(r"[A-Za-z0-9+/]+={0,3}", fields[1]):
        return None
    return fields[0], fields[1]


def guest_attribute_for(key_type_name: str) -> str:
    return f"hostkeys/{key_type_name}"


def boto_config(numeric_project_id: str) -> str:
    return (
        "[GSUtil]\n"
        f"default_project_id = {numeric_project_id}\n"
        "default_api_version = 2\n"
        "\n"
        "[GoogleCompute]\n"
        "service_account = default\n"
    )


# ---- kernel tuning inputs


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """`0-3,8,10-11` (sysfs cpu lists) to the CPU numbers; junk parts are skipped."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        bounds = part.strip().split("-")
        if len(bounds) == 1 and bounds[0].isdigit():
            cpus.append(int(bounds[0]))
        elif len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit():
            cpus.extend(range(int(bounds[0]), int(bounds[1]) + 1))
    return tuple(sorted(set(cpus)))


def cpu_mask(cpus: Iterable[int]) -> str:
    """The sysfs bitmap form: hex, comma every 32 CPUs (`00000001,00000003`)."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    words = max(1, (value.bit_length() + 31) // 32)
    hexed = f"{value:0{words * 8}x}"
    return ",".join(hexed[i : i + 8] for i in range(0, len(hexed), 8))


def parse_mask(text: str) -> int | None:
    try:
        return int(text.strip().replace(",", ""), 16)
    except ValueError:
        return None


def parse_scheduler(text: str) -> tuple[str | None, tuple[str, ...]]:
    """`[mq-deadline] kyber none` -> ("mq-deadline", all names)."""
    names = tuple(word.strip("[]") for word in text.split())
    current = next((w.strip("[]") for w in text.split() if w.startswith("[")), None)
    return current, names


def virtio_irqs(interrupts: str, devices: Iterable[str]) -> tuple[tuple[int, int], ...]:
    """(irq, queue number) for the virtio-net devices' input/output queues in /proc/interrupts."""
    wanted = set(devices)
    out: list[tuple[int, int]] = []
    for line in interrupts.splitlines():
        match = _VIRTIO_IRQ.match(line)
        if match and match.group(2) in wanted:
            out.append((int(match.group(1)), int(match.group(3))))
    return tuple(out)


def _frozen(value: Mapping[str, str | None]) -> Mapping[str, str | None]:
    return MappingProxyType(dict(value))


def _frozen_queues(value: Mapping[str, tuple[int, ...]]) -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Disk:
    name: str
    model: str
    scheduler: str  # the raw queue/scheduler text


@attrs.frozen
class TuningInputs:
    """What the tuning plan needs from /sys and /proc, read by the service."""

    cpus: tuple[int, ...] = ()
    virtio_net_devices: tuple[str, ...] = ()
    interrupts: str = ""
    # /proc/irq/N/smp_affinity_list and /sys/class/net/IF/queues/tx-N/xps_cpus, by path.
    values: Mapping[str, str | None] = attrs.field(factory=dict, converter=_frozen)
    # tx queue directories per NIC name (virtio-net NICs only)
    tx_queues: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict, converter=_frozen_queues)
    disks: tuple[Disk, ...] = ()


# ---- actions


@attrs.frozen
class GenerateHostKey:
    key_type: str
    # Made after READY, beside sshd's start and the first logins: at low priority, and
    # never in place of a key of that type that appeared meanwhile (see deferred_plan).
    low_priority: bool = False

    def describe(self) -> str:
        return f"generate SSH host key {host_key_path(self.key_type)}"


@attrs.frozen
class RemoveHostKey:
    """The image's key pair of a type made after READY: gone before sshd may serve it."""

    key_type: str

    def describe(self) -> str:
        return f"remove the image's SSH host key {host_key_path(self.key_type)} (a new one follows READY)"


@attrs.frozen
class RecordPendingHostKeys:
    path: str
    key_types: tuple[str, ...]

    def describe(self) -> str:
        return f"record host key types to make after READY ({', '.join(self.key_types)}) in {self.path}"


@attrs.frozen
class ClearPendingHostKeys:
    path: str

    def describe(self) -> str:
        return f"remove {self.path}: no host key left to make"


@attrs.frozen
class WriteBoto:
    path: str
    text: str

    def describe(self) -> str:
        return f"write {self.path}"


@attrs.frozen
class RecordInstanceId:
    path: str
    instance_id: str

    def describe(self) -> str:
        return f"record instance id {self.instance_id} in {self.path}"


@attrs.frozen
class PublishHostKeys:
    """PUT every host public key to guest attributes hostkeys/<type>."""

    def describe(self) -> str:
        return "publish SSH host public keys to guest attributes"


@attrs.frozen
class WriteKernelValue:
    path: str
    value: str
    why: str

    def describe(self) -> str:
        return f"write {self.value} to {self.path} ({self.why})"


Action = (
    GenerateHostKey
    | RemoveHostKey
    | RecordPendingHostKeys
    | ClearPendingHostKeys
    | WriteBoto
    | RecordInstanceId
    | PublishHostKeys
    | WriteKernelValue
)


@attrs.frozen
class SetupCurrent:
    recorded_instance_id: str
    ssh_dir_names: tuple[str, ...] = ()
    tuning: TuningInputs = attrs.field(factory=TuningInputs)


@attrs.frozen
class SetupPlan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()
    first_boot: bool = False


def first_boot_actions(
    instance_id: str,
    numeric_project_id: str | None,
    have: SetupCurrent,
    config: InstanceSetup,
    id_path: str = INSTANCE_ID_PATH,
) -> tuple[list[Action], list[str]]:
    actions: list[Action] = []
    notes: list[str] = []
    if config.set_host_keys:
        types = host_key_types(have.ssh_dir_names, config.host_key_types)
        later = tuple(t for t in types if t in DEFERRED_KEY_TYPES)
        if later:
            actions.append(RecordPendingHostKeys(PENDING_HOST_KEYS_PATH, later))
            present = set(have.ssh_dir_names)
            for key_type in later:
                name = host_key_path(key_type).rsplit("/", 1)[1]
                if name in present or f"{name}.pub" in present:
                    actions.append(RemoveHostKey(key_type))
        actions.extend(GenerateHostKey(t) for t in types if t not in later)
    # None: the platform has no Cloud Storage project (boto is GCE's), nothing to say.
    if config.set_boto_config and numeric_project_id is not None:
        if numeric_project_id:
            actions.append(WriteBoto(BOTO_PATH, boto_config(numeric_project_id)))
        else:
            notes.append("metadata has no numeric project id; /etc/boto.cfg not written")
    actions.append(RecordInstanceId(id_path, instance_id))
    return actions, notes


def multiqueue_actions(inputs: TuningInputs) -> list[Action]:
    """Queue i's IRQs on CPU i (wrapping); transmit queue i used by CPUs c with c % queues == i.

    This is what Google's google_set_multiqueue did before it learned NUMA and
    gVNIC: each CPU gets its own queue pair so a flow stays on one CPU.
    """
    actions: list[Action] = []
    cpus = inputs.cpus
    if not cpus:
        return actions
    for irq, queue in virtio_irqs(inputs.interrupts, inputs.virtio_net_devices):
        path = f"/proc/irq/{irq}/smp_affinity_list"
        want = str(cpus[queue % len(cpus)])
        current = inputs.values.get(path)
        if current is not None and parse_cpu_list(current) != (int(want),):
            actions.append(WriteKernelValue(path, want, f"virtio-net queue {queue} IRQ"))
    for nic in sorted(inputs.tx_queues):
        queues = sorted(inputs.tx_queues[nic])
        for queue in queues:
            path = f"/sys/class/net/{nic}/queues/tx-{queue}/xps_cpus"
            mine = [c for i, c in enumerate(cpus) if i % len(queues) == queues.index(queue)]
            current = inputs.values.get(path)
            if current is None or parse_mask(current) == parse_mask(cpu_mask(mine)):
                continue
            actions.append(WriteKernelValue(path, cpu_mask(mine), f"{nic} transmit queue {queue}"))
    return actions


def local_ssd_actions(inputs: TuningInputs) -> list[Action]:
    """Local SSDs are fast enough that an I/O scheduler only adds latency: use `none`."""
    actions: list[Action] = []
    for disk in inputs.disks:
        if disk.model.strip() not in LOCAL_SSD_MODELS:
            continue
        current, available = parse_scheduler(disk.scheduler)
        if "none" in available and current != "none":
            path = f"/sys/block/{disk.name}/queue/scheduler"
            actions.append(WriteKernelValue(path, "none", f"local SSD {disk.name}"))
    return actions


def pending_key_types(text: str | None) -> tuple[str, ...]:
    """The types recorded by RecordPendingHostKeys; a line that is no key type is skipped."""
    lines = (line.strip() for line in (text or "").splitlines())
    return tuple(dict.fromkeys(t for t in lines if re.fullmatch(r"[a-z0-9]{1,16}", t)))


def pending_record(key_types: Iterable[str]) -> str:
    return "".join(f"{t}\n" for t in key_types)


def deferred_plan(
    pending_text: str | None, ssh_dir_names: Iterable[str], can_publish: bool
) -> tuple[Action, ...]:
    """After READY: the host keys first boot left to make, then published.

    A type whose key exists by now was made after first boot removed the image's (by the
    image's own generator before sshd started: `ssh-keygen -A`, sshd-keygen@): it is this
    instance's already, and sshd may have served it, so it is kept.

    sshd is not reloaded: before OpenSSH 9.8 it loads its host keys again for each
    connection, and a reload closes its listening socket for a moment, refusing whoever
    connects then, at the time users try their first login.
    The record goes even when a type fails (as the instance id does on first boot): a
    type ssh-keygen refuses would otherwise be tried at every start.
    """
    if pending_text is None:
        return ()
    present = set(ssh_dir_names)
    types = [t for t in pending_key_types(pending_text) if host_key_path(t).rsplit("/", 1)[1] not in present]
    actions: list[Action] = [GenerateHostKey(t, low_priority=True) for t in types]
    if types and can_publish:
        actions.append(PublishHostKeys())
    # Last: the record going says all is done (a key made already is not made again).
    actions.append(ClearPendingHostKeys(PENDING_HOST_KEYS_PATH))
    return tuple(actions)


def plan(
    instance_id: str, numeric_project_id: str | None, have: SetupCurrent, config: InstanceSetup,
    can_publish: bool, id_path: str = INSTANCE_ID_PATH,
) -> SetupPlan:  # fmt: skip
    """First-boot work (only with network_enabled, as Google's agent), then every-boot work."""
    actions: list[Action] = []
    notes: list[str] = []
    first = config.network_enabled and is_first_boot(instance_id, have.recorded_instance_id)
    if first:
        more, said = first_boot_actions(instance_id, numeric_project_id, have, config, id_path)
        actions += more
        notes += said
    if config.network_enabled and config.set_host_keys and can_publish:
        actions.append(PublishHostKeys())
    if config.set_multiqueue:
        actions += multiqueue_actions(have.tuning)
    if config.optimize_local_ssd:
        actions += local_ssd_actions(have.tuning)
    return SetupPlan(tuple(actions), tuple(notes), first)
