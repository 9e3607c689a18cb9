"""The QEMU command line for a guest, and the runner that starts it without a container engine.

One network is given to the guest: QEMU's user-mode stack with `restrict=on`,
so the guest reaches nothing but two forwards made for it:
  - hostfwd 127.0.0.1:SSH_PORT -> guest :22, for a real OpenSSH client;
  - guestfwd 169.254.169.254:80 -> `socat - TCP:127.0.0.1:METADATA_PORT`, one
    relay per guest connection, to the simulator on this machine's loopback.
The metadata address exists only inside the guest's slirp network; this
machine never sends anything to it. A guest given no metadata port (a
NoCloud guest reading a cidata CD-ROM) gets no guestfwd at all. More
addresses can be forwarded to the same simulator port (`metadata_aliases`:
Azure's WireServer, 168.63.129.16:80, which the simulator serves beside
IMDS); like 169.254.169.254 they must lie inside slirp's network.

What a platform shows the guest besides the network is part of the spec too:
an SMBIOS identity (`Smbios`, read by the agent's DMI detection under
/sys/class/dmi/id; `SMBIOS["gce"]`, `SMBIOS["ec2"]` are the clouds' own
values), a CD-ROM image (a NoCloud `cidata` or config-drive ISO, on a
virtio-scsi CD drive: /dev/sr0 in the guest), and extra kernel command line
words (`ds=nocloud;s=...`), extra raw disks, read-only (the illumos CPIO
metadata device: /dev/vdb, ...) or writable (`Disk(path, writable=True)`:
Azure's resource disk), extra serial ports joined to unix sockets
(SmartOS's metadata channel on COM2, /dev/ttyS1) and the slirp network's
addresses (`SlirpNet`: a guest that configures a static address from its
metadata, not by DHCP, needs that address inside the network and the SSH
forward pointed at it).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import attrs

# net.ifnames=0: the one NIC is eth0, as the image's ifupdown config expects.
# panic=-1 with -no-reboot: a kernel panic ends QEMU instead of looping.
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (each VM gets its own, so xdist workers coexist)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.frozen
class VmFiles:
    """One VM's working files; the directory is shared with a container at the same path."""

    directory: Path

    @property
    def identity_arg(self) -> str:
        """A kernel argument naming this VM, so the harness can tell it is logged into
        this guest and not another one that answers on a recycled port."""
        return f"guestsim.vm={self.directory.name}"

    @property
    def overlay(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def console_socket(self) -> Path:
        return self.directory / "console.sock"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"


def _qemu_value(value: str) -> str:
    """A value inside a QEMU `key=value,...` option: a comma is written twice."""
    if any(c in value for c in "\n\r\x00"):
        raise ValueError(f"QEMU option values are one line: {value!r}")
    return value.replace(",", ",,")


def _words(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(words)


def _paths(paths: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(paths)


@attrs.frozen
class Disk:
    """An extra raw disk after the root disk (/dev/vdb, /dev/vdc, ...).

    Read-only by default (a metadata device the guest must not change);
    `writable=True` lets the guest write it (a resource disk it formats), so
    give QEMU a copy (Vm copies every disk into the VM's directory)."""

    path: Path = attrs.field(converter=Path)
    writable: bool = False

    def drive(self) -> str:
        mode = "" if self.writable else ",readonly=on"
        return f"file={_qemu_value(str(self.path))},if=virtio{mode},format=raw"


def _disks(disks: Iterable[Path | Disk]) -> tuple[Disk, ...]:
    return tuple(d if isinstance(d, Disk) else Disk(d) for d in disks)


def _addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(ipaddress.IPv4Address(a)) for a in addresses)


@attrs.frozen
class Smbios:
    """The SMBIOS identity QEMU gives the guest, i.e. what it reads under /sys/class/dmi/id.

    Type 1 (system): `manufacturer` -> sys_vendor, `product` -> product_name,
    `version` -> product_version, `serial` -> product_serial, `uuid` ->
    product_uuid. Type 0 (BIOS): `bios_vendor`, `bios_version`. Type 3
    (chassis): `chassis_manufacturer` -> chassis_vendor, `chassis_asset_tag`
    (Azure's detection hint). Empty fields are left to QEMU ("QEMU", "Standard
    PC (Q35 + ICH9, 2009)", ...).
    """

    manufacturer: str = ""
    product: str = ""
    version: str = ""
    serial: str = ""
    uuid: str = ""
    bios_vendor: str = ""
    bios_version: str = ""
    chassis_manufacturer: str = ""
    chassis_asset_tag: str = ""

    def argv(self) -> list[str]:
        tables = (
            ("type=0", (("vendor", self.bios_vendor), ("version", self.bios_version))),
            (
                "type=1",
                (
                    ("manufacturer", self.manufacturer),
                    ("product", self.product),
                    ("version", self.version),
                    ("serial", self.serial),
                    ("uuid", self.uuid),
                ),
            ),
            (
                "type=3",
                (("manufacturer", self.chassis_manufacturer), ("asset", self.chassis_asset_tag)),
            ),
        )
        argv: list[str] = []
        for kind, fields in tables:
            given = [f"{name}={_qemu_value(value)}" for name, value in fields if value]
            if given:
                argv += ["-smbios", ",".join([kind, *given])]
        return argv


# What the clouds' own VMs show (as read from real instances' /sys/class/dmi/id),
# so a guest is detected the way it would be there.
SMBIOS: dict[str, Smbios] = {
    "gce": Smbios(
        manufacturer="Google",
        product="Google Compute Engine",
        serial="GoogleCloud-4520031799277581759",
        bios_vendor="Google",
        bios_version="Google",
        chassis_manufacturer="Google",
    ),
    # Nitro: the vendor says Amazon EC2, the product is the instance type, and
    # the system UUID starts with "ec2".
    "ec2": Smbios(
        manufacturer="Amazon EC2",
        product="t3.micro",
        serial="ec2a3b1c-5d6e-7f80-91a2-b3c4d5e6f708",
        uuid="ec2a3b1c-5d6e-7f80-91a2-b3c4d5e6f708",
        bios_vendor="Amazon EC2",
        bios_version="1.0",
        chassis_manufacturer="Amazon EC2",
        chassis_asset_tag="Amazon EC2",
    ),
    # OpenStack Nova (libvirt driver): manufacturer and product fixed, the version
    # Nova's own, the UUID the instance's (a test may evolve it to its scenario's).
    "openstack": Smbios(
        manufacturer="OpenStack Foundation",
        product="OpenStack Nova",
        version="27.1.0",
        serial="3c1b4e2a-52d5-4c3e-9a4f-0d6e1c2b3a41",
        uuid="6f1e3c2a-8d4b-4f6e-9c1a-2b3d4e5f6a71",
    ),
    # A droplet: vendor DigitalOcean, product Droplet, the droplet id as serial.
    "digitalocean": Smbios(
        manufacturer="DigitalOcean",
        product="Droplet",
        version="20171212",
        serial="317230081",
        bios_vendor="DigitalOcean",
        bios_version="20171212",
    ),
    # Azure (Hyper-V): Microsoft's vendor and "Virtual Machine" product; the chassis
    # asset tag 7783-7084-3265-9085-8269-3286-77 is what every Azure VM carries
    # (the agent's, WALinuxAgent's and cloud-init's detection hint).
    "azure": Smbios(
        manufacturer="Microsoft Corporation",
        product="Virtual Machine",
        version="7.0",
        serial="0000-0016-4519-5830-1204-4781-47",
        bios_vendor="Microsoft Corporation",
        bios_version="Hyper-V UEFI Release v4.1",
        chassis_manufacturer="Microsoft Corporation",
        chassis_asset_tag="7783-7084-3265-9085-8269-3286-77",
    ),
    # Triton KVM/bhyve guests: vendor Joyent, product "SmartDC HVM".
    "smartos": Smbios(
        manufacturer="Joyent",
        product="SmartDC HVM",
        version="7.20230316T003418Z",
        bios_vendor="Joyent",
        bios_version="bhyve-2023",
    ),
}


METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
# The guest NIC's MAC unless a test gives another (the scenarios' NICs use it).
DEFAULT_MAC = "42:01:0a:80:00:02"


def _ipv4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


@attrs.frozen
class SlirpNet:
    """The addresses of QEMU's user-mode network.

    `net` holds the guest's addresses and 169.254.169.254 (libslirp answers ARP
    and accepts a guestfwd only for an address inside it); `host` is slirp's
    own address, the guest's gateway; `dhcpstart` is the first DHCP lease and
    also where the SSH hostfwd delivers (libslirp's default guest address), so
    a guest that configures a static address from its metadata must be given
    that address here.
    """

    net: str = "169.254.0.0/16"
    host: str = "169.254.169.2"
    dhcpstart: str = "169.254.169.15"

    def __attrs_post_init__(self) -> None:
        network = ipaddress.IPv4Network(self.net, strict=True)
        for name in ("host", "dhcpstart"):
            if _ipv4(getattr(self, name)) not in network:
                raise ValueError(f"slirp {name} {getattr(self, name)} is outside {self.net}")

    def options(self, metadata: bool, aliases: Iterable[str] = ()) -> list[str]:
        network = ipaddress.IPv4Network(self.net)
        forwarded = [METADATA_ADDRESS, *map(_ipv4, aliases)] if metadata else []
        for address in forwarded:
            if address not in network:
                raise ValueError(f"a guestfwd to {address} needs it inside {self.net}")
        return [f"net={self.net}", f"host={self.host}", f"dhcpstart={self.dhcpstart}"]


# The guest's network is link-local like GCE's metadata network; it gets
# 169.254.169.15 by DHCP.
DEFAULT_NET = SlirpNet()
# A guest whose public address comes from metadata, not DHCP (a DigitalOcean
# droplet): 160.0.0.0/4 holds both 169.254.169.254 (and the agent's temporary
# 169.254.X.Y) and a non-link-local "public" 172.16.0.0/20, gateway 172.16.0.1.
# The scenario's NIC must have public_ip 172.16.0.15 (the simulator's DO
# document gives it /20 and gateway .1).
PUBLIC_NET = SlirpNet(net="160.0.0.0/4", host="172.16.0.1", dhcpstart="172.16.0.15")
# Azure: the guest reaches IMDS (169.254.169.254) and the WireServer
# (168.63.129.16) at their own addresses, and libslirp accepts a guestfwd only
# inside its network, so the network is 160.0.0.0/4, which holds both. The
# guest's DHCP lease is 172.16.0.4 (an Azure subnet's first address), gateway
# 172.16.0.1; slirp's DHCP sends no option 245, so the agent falls back to
# 168.63.129.16, as on an Azure VM whose lease lacks it.
WIRESERVER_ADDRESS = "168.63.129.16"
AZURE_NET = SlirpNet(net="160.0.0.0/4", host="172.16.0.1", dhcpstart="172.16.0.4")


@attrs.frozen
class QemuSpec:
    kernel: Path
    initrd: Path
    files: VmFiles
    ssh_port: int
    # The simulator's port on 127.0.0.1, reached from the guest at 169.254.169.254:80;
    # None: no metadata forward at all (the guest's metadata is on local media).
    metadata_port: int | None
    memory_mb: int = 1024
    cpus: int = 2
    mac: str = DEFAULT_MAC
    smbios: Smbios | None = None
    # An ISO image attached read-only as a CD-ROM (/dev/sr0); it must be where
    # the runner shares it with QEMU (Vm copies it into the VM's directory).
    cdrom: Path | None = None
    # Words added to the kernel command line, each one word (no spaces).
    kernel_args: tuple[str, ...] = attrs.field(default=(), converter=_words)
    # Raw images attached as virtio disks after the root disk (/dev/vdb,
    # /dev/vdc, ...), read-only unless given as Disk(path, writable=True); like
    # the CD-ROM, where the runner shares them.
    disks: tuple[Disk, ...] = attrs.field(default=(), converter=_disks)
    # Unix sockets (servers on this machine, e.g. the simulator's SmartOS
    # channel) joined to extra serial ports: COM2 (/dev/ttyS1), COM3, ...
    serial_sockets: tuple[Path, ...] = attrs.field(default=(), converter=_paths)
    network: SlirpNet = DEFAULT_NET
    # More guest addresses whose TCP port 80 goes to the metadata port too
    # (Azure's WireServer, WIRESERVER_ADDRESS); each inside `network.net`.
    metadata_aliases: tuple[str, ...] = attrs.field(default=(), converter=_addresses)

    @kernel_args.validator
    def _one_word_each(self, _attribute: object, value: tuple[str, ...]) -> None:
        for word in value:
            if not word or any(c.isspace() for c in word) or "\x00" in word:
                raise ValueError(f"a kernel argument is one word: {word!r}")

    def netdev(self) -> str:
        options = [
            "user",
            "id=n0",
            *self.network.options(self.metadata_port is not None, self.metadata_aliases),
            "restrict=on",
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
        ]
        if self.metadata_port is not None:
            # The -cmd form connects per guest connection; the -tcp form would
            # connect once at start and fail while the simulator is down.
            for address in (str(METADATA_ADDRESS), *self.metadata_aliases):
                options.append(f"guestfwd=tcp:{address}:80-cmd:socat - TCP:127.0.0.1:{self.metadata_port}")
        elif self.metadata_aliases:
            raise ValueError("metadata_aliases need a metadata port to forward to")
        return ",".join(options)

    def kernel_command_line(self) -> str:
        return " ".join([KERNEL_APPEND, self.files.identity_arg, *self.kernel_args])

    def cdrom_argv(self) -> list[str]:
        if self.cdrom is None:
            return []
        # virtio-scsi + scsi-cd: the cloud kernel has both drivers (GCE's disks
        # are virtio-scsi, Azure's provisioning DVD needs sr_mod); AHCI it may not.
        return [
            "-drive",
            f"file={_qemu_value(str(self.cdrom))},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-cd,drive=cd0,bus=scsi0.0",
        ]

    def disks_argv(self) -> list[str]:
        # if=virtio like the root disk, not -device virtio-blk-pci: QEMU creates the
        # if=virtio devices after every -device, so an explicit device would take a
        # lower PCI slot and become /dev/vda. Among if=virtio drives the order holds.
        argv: list[str] = []
        for disk in self.disks:
            argv += ["-drive", disk.drive()]
        return argv

    def serial_sockets_argv(self) -> list[str]:
        argv: list[str] = []
        # COM1 (index 0) is the console; these follow it. reconnect=1: QEMU is the
        # client and retries every second when the server is not there (yet, or any
        # more) instead of failing at start or leaving the port dead after a hang-up.
        for index, path in enumerate(self.serial_sockets, start=1):
            argv += [
                "-chardev",
                f"socket,id=serial{index},path={_qemu_value(str(path))},reconnect=1",
                "-device",
                f"isa-serial,chardev=serial{index},index={index}",
            ]
        return argv

    def argv(self) -> list[str]:
        serial = (
            f"socket,id=serial0,path={self.files.console_socket},server=on,wait=off,"
            f"logfile={self.files.serial_log},logappend=on"
        )
        return [
            "qemu-system-x86_64",
            # TCG only: KVM is nested here and guests hang in the BIOS.
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            self.kernel_command_line(),
            *(self.smbios.argv() if self.smbios is not None else []),
            "-drive",
            f"file={self.files.overlay},if=virtio,format=qcow2",
            *self.disks_argv(),
            *self.cdrom_argv(),
            "-netdev",
            self.netdev(),
            "-device",
            f"virtio-net-pci,netdev=n0,mac={self.mac}",
            # The serial console is a socket the harness attaches pexpect to;
            # QEMU also writes everything to serial.log, attached or not.
            "-chardev",
            serial,
            "-serial",
            "chardev:serial0",
            *self.serial_sockets_argv(),
            "-device",
            "virtio-rng-pci",
        ]


def create_overlay(base_disk: Path, overlay: Path, size: str | None = None) -> None:
    """A qcow2 overlay over the cached raw disk: the guest writes only here, so
    the image stays pristine and a reboot keeps this VM's own changes.

    `size` (qemu-img's syntax, e.g. "3G") makes the overlay's virtual disk larger
    than the image, as a cloud disk bigger than the image it was made from: the
    part past the image reads as zeros, and the guest's root filesystem is left
    to grow into it."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base_disk), str(overlay)]
    if size is not None:
        argv.append(size)
    subprocess.run(argv, check=True)


class RunningQemu(Protocol):
    """A started QEMU, however it was started."""

    def running(self) -> bool: ...

    def wait(self, timeout: float) -> bool:
        """True once QEMU has exited (the guest powered off), False on timeout."""
        ...

    def kill(self) -> None: ...

    def describe(self) -> str: ...


class Runner(Protocol):
    name: str

    def start(self, spec: QemuSpec, shared: list[Path], readonly: list[Path]) -> RunningQemu:
        """Start QEMU with `spec`; it must see `shared` (read-write) and `readonly`
        (the cached image) at the same paths as this process."""
        ...


class DirectProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self._proc = proc
        self._log = log

    def running(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        # Only the process we started, by its PID (it leads its own session).
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

    def describe(self) -> str:
        return f"qemu pid {self._proc.pid} (log {self._log})"


class DirectRunner:
    """Runs qemu-system-x86_64 as a child process: for machines without Podman."""

    name = "direct"

    def start(self, spec: QemuSpec, shared: list[Path], readonly: list[Path]) -> RunningQemu:
        log = spec.files.directory / "qemu.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                spec.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_for_socket(spec.files.console_socket, lambda: proc.poll() is None, log)
        return DirectProcess(proc, log)


def wait_for_socket(path: Path, alive: Callable[[], bool], log: Path, timeout: float = 60) -> None:
    """Block until QEMU has made its console socket (it does so before the guest runs)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not alive():
            raise RuntimeError(f"QEMU exited at start: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"QEMU made no console socket at {path} in {timeout} s")
        time.sleep(0.05)
