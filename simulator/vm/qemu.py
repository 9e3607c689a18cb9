"""The QEMU command line for a guest, and the runner that starts it without a container engine.

One network is given to the guest: QEMU's user-mode stack with `restrict=on`,
so the guest reaches nothing but two forwards made for it:
  - hostfwd 127.0.0.1:SSH_PORT -> guest :22, for a real OpenSSH client;
  - guestfwd 169.254.169.254:80 -> `socat - TCP:127.0.0.1:METADATA_PORT`, one
    relay per guest connection, to the simulator on this machine's loopback.
The metadata address exists only inside the guest's slirp network; this
machine never sends anything to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
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


@attrs.frozen
class QemuSpec:
    kernel: Path
    initrd: Path
    files: VmFiles
    ssh_port: int
    metadata_port: int
    memory_mb: int = 1024
    cpus: int = 2
    mac: str = "42:01:0a:80:00:02"

    def netdev(self) -> str:
        return ",".join(
            [
                "user",
                "id=n0",
                # The guest's network is link-local like GCE's metadata network;
                # it gets 169.254.169.15 by DHCP.
                "net=169.254.0.0/16",
                "host=169.254.169.2",
                "dhcpstart=169.254.169.15",
                "restrict=on",
                f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                # The -cmd form connects per guest connection; the -tcp form would
                # connect once at start and fail while the simulator is down.
                f"guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{self.metadata_port}",
            ]
        )

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
            f"{KERNEL_APPEND} {self.files.identity_arg}",
            "-drive",
            f"file={self.files.overlay},if=virtio,format=qcow2",
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
            "-device",
            "virtio-rng-pci",
        ]


def create_overlay(base_disk: Path, overlay: Path) -> None:
    """A qcow2 overlay over the cached raw disk: the guest writes only here, so
    the image stays pristine and a reboot keeps this VM's own changes."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base_disk), str(overlay)],
        check=True,
    )


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
