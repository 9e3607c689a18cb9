"""One guest VM for tests: a qcow2 overlay over the cached image, QEMU, its console and SSH.

    with select_runner(cache_dir) as runner, Vm(image, metadata_port, runner) as vm:
        vm.boot()
        vm.ssh("id")

The overlay lives as long as the Vm, so `vm.reboot()` (power off, start QEMU
again on the same disk) keeps what the guest wrote: users, host keys, state.

What the guest sees of its platform (see qemu.py), all optional:

    Vm(image, sim.port, runner, smbios=qemu.SMBIOS["ec2"])            # DMI says Amazon EC2
    Vm(image, None, runner, cdrom=iso)                                # no metadata forward; /dev/sr0
    Vm(image, None, runner, kernel_args=["ds=nocloud;s=file:///seed/"])
    Vm(image, None, runner, disks=[cpio_img])                         # /dev/vdb, read-only
    Vm(image, sim.port, runner, disks=[qemu.Disk(res_img, writable=True)])  # /dev/vdb, the guest writes it
    Vm(image, sim.port, runner, root_size="3G")                      # root disk larger than the image
    Vm(image, sim.port, runner, metadata_aliases=[qemu.WIRESERVER_ADDRESS],
       network=qemu.AZURE_NET)                                        # 168.63.129.16:80 -> the simulator too
    Vm(image, None, runner, serial_sockets=[sim.serial_socket("smartos")])  # COM2 = /dev/ttyS1
    Vm(image, sim.port, runner, network=qemu.PUBLIC_NET)              # static address from metadata
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from guestsim.vm import console, qemu, ssh
from guestsim.vm.image import ImagePaths

RUNNER_ENV = "GUESTAGENT_VM_RUNNER"  # container | direct | auto (default)


class Vm:
    def __init__(
        self,
        image: ImagePaths,
        metadata_port: int | None,
        runner: qemu.Runner,
        *,
        workdir: Path | None = None,
        keep_dir: Path | None = None,
        ssh_port: int | None = None,
        smbios: qemu.Smbios | None = None,
        cdrom: Path | None = None,
        kernel_args: Sequence[str] = (),
        disks: Sequence[Path | qemu.Disk] = (),
        serial_sockets: Sequence[Path | str] = (),
        network: qemu.SlirpNet = qemu.DEFAULT_NET,
        metadata_aliases: Sequence[str] = (),
        root_size: str | None = None,
        mac: str | None = None,
    ) -> None:
        """`metadata_port` None: no guestfwd (the metadata is on local media, e.g. `cdrom`).
        `cdrom` and `disks` are copied into the VM's directory, so every runner sees them and
        the caller's files may go away; they stay attached across reboots (a read-only one
        unchanged, a writable one with what the guest wrote), unless `replace_cdrom` /
        `replace_disk` swap one while the VM is off. `serial_sockets` are unix sockets
        someone else serves (the simulator's SmartOS channel): QEMU connects to them, and a
        container runner gets their directories mounted. `metadata_aliases`: more guest
        addresses forwarded to `metadata_port` (qemu.WIRESERVER_ADDRESS). `root_size`: the
        root disk's virtual size when it should be larger than the image (qemu-img syntax,
        "3G"). `mac`: the NIC's MAC (default qemu.DEFAULT_MAC)."""
        self.image = image
        self.metadata_port = metadata_port
        self.runner = runner
        self.ssh_port = ssh_port or qemu.free_port()
        self.smbios = smbios
        self.kernel_args = tuple(kernel_args)
        self.serial_sockets = tuple(Path(p) for p in serial_sockets)
        self.network = network
        self.metadata_aliases = tuple(metadata_aliases)
        self.root_size = root_size
        self.mac = mac
        # Short path: a unix socket path must stay under 108 bytes.
        self.files = qemu.VmFiles(Path(tempfile.mkdtemp(prefix="ga-vm-", dir=workdir)))
        self.keep_dir = keep_dir
        self._qemu: qemu.RunningQemu | None = None
        self.started_at = 0.0
        self.boots = 0
        try:
            self.cdrom: Path | None = None
            if cdrom is not None:
                self.cdrom = self.files.directory / "cdrom.iso"
                shutil.copyfile(cdrom, self.cdrom)
            self.disks: tuple[qemu.Disk, ...] = ()
            for i, disk in enumerate(disks, start=1):
                given = disk if isinstance(disk, qemu.Disk) else qemu.Disk(disk)
                copy = self.files.directory / f"disk{i}.img"
                shutil.copyfile(given.path, copy)
                self.disks += (qemu.Disk(copy, writable=given.writable),)
            qemu.create_overlay(image.disk, self.files.overlay, root_size)
            # Checked now, not at start(): a bad kernel word or SMBIOS value fails before anything boots.
            self.spec().argv()
        except BaseException:
            shutil.rmtree(self.files.directory, ignore_errors=True)
            raise

    # -- lifecycle ---------------------------------------------------------

    def spec(self) -> qemu.QemuSpec:
        return qemu.QemuSpec(
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            files=self.files,
            ssh_port=self.ssh_port,
            metadata_port=self.metadata_port,
            smbios=self.smbios,
            cdrom=self.cdrom,
            kernel_args=self.kernel_args,
            disks=self.disks,
            serial_sockets=self.serial_sockets,
            network=self.network,
            metadata_aliases=self.metadata_aliases,
            mac=self.mac or qemu.DEFAULT_MAC,
        )

    def replace_cdrom(self, path: Path) -> None:
        """Put another image in the CD-ROM drive for the next boot (the VM must be off):
        a new VM's provisioning DVD on the same disk."""
        if self.cdrom is None:
            raise RuntimeError("this VM has no CD-ROM drive")
        self._check_off()
        shutil.copyfile(path, self.cdrom)

    def replace_disk(self, index: int, path: Path) -> None:
        """Swap extra disk `index` (0: /dev/vdb) for a copy of `path` for the next boot (the
        VM must be off), keeping its mode: a new VM's resource disk."""
        self._check_off()
        shutil.copyfile(path, self.disks[index].path)

    def _check_off(self) -> None:
        if self.running():
            raise RuntimeError("the VM is running: power it off first")

    def start(self) -> None:
        """Start QEMU; returns while the guest boots."""
        if self._qemu is not None and self._qemu.running():
            raise RuntimeError("VM already running")
        self.files.console_socket.unlink(missing_ok=True)
        self.started_at = time.monotonic()
        shared = [self.files.directory, *dict.fromkeys(p.parent for p in self.serial_sockets)]
        self._qemu = self.runner.start(self.spec(), shared, [self.image.directory])
        self.boots += 1

    def wait_for_ssh(self, timeout: float = 300) -> float:
        """Wait until root can log in over SSH (sshd starts after the agent is ready).

        Returns seconds since QEMU started.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if ssh.can_login(self.ssh_port, "root", self.image.harness_key):
                mine = ssh.run(
                    self.ssh_port,
                    "root",
                    self.image.harness_key,
                    f"grep -qw {self.files.identity_arg} /proc/cmdline",
                    timeout=60,
                )
                if mine.returncode == 1:
                    raise RuntimeError(f"127.0.0.1:{self.ssh_port} answers for another VM")
                if mine.returncode == 0:
                    return time.monotonic() - self.started_at
            time.sleep(1)
        raise TimeoutError(
            f"no SSH login in {timeout} s\n{self.diagnose()}\nserial log:\n{self.serial_tail()}"
        )

    def boot(self, timeout: float = 300) -> float:
        self.start()
        return self.wait_for_ssh(timeout)

    def poweroff(self, timeout: float = 180) -> None:
        """A clean shutdown from inside (shutdown scripts run), then QEMU exits (-no-reboot)."""
        if self._qemu is None:
            return
        if self._qemu.running():
            try:
                asked = self.ssh("systemctl poweroff", check=False, timeout=30).returncode != 255
            except subprocess.TimeoutExpired:
                asked = True  # the connection died with sshd: the shutdown is under way
            if not asked:
                # No SSH (say sshd never started): the console still takes commands.
                with contextlib.suppress(Exception):
                    self.console_run("systemctl poweroff", timeout=10)
            if not self._qemu.wait(timeout):
                raise TimeoutError(f"guest did not power off in {timeout} s")
        self.kill()

    def reboot(self, timeout: float = 300) -> float:
        """Power off and boot again on the same disk, same ports; seconds to SSH."""
        self.poweroff()
        return self.boot(timeout)

    def kill(self) -> None:
        """Stop QEMU now (no clean shutdown) and release it (a container is removed)."""
        if self._qemu is not None:
            self._qemu.kill()
        self._qemu = None

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self.keep_dir is not None:
                self.keep_dir.mkdir(parents=True, exist_ok=True)
                for name in ("serial.log", "qemu.log"):
                    src = self.files.directory / name
                    if src.exists():
                        shutil.copy2(src, self.keep_dir / name)
            shutil.rmtree(self.files.directory, ignore_errors=True)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def running(self) -> bool:
        return self._qemu is not None and self._qemu.running()

    def _check_alive(self) -> None:
        if not self.running():
            raise RuntimeError(f"QEMU is not running; serial log:\n{self.serial_tail()}")

    # -- inside the guest ----------------------------------------------------

    def ssh(
        self,
        command: str,
        *,
        user: str = "root",
        key: Path | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        result = ssh.run(self.ssh_port, user, key or self.image.harness_key, command, timeout)
        if check and result.returncode == 255:
            # 255 is the login itself failing (a loaded emulated guest dropping the
            # connection), not the command: one more try before calling it a failure.
            time.sleep(2)
            result = ssh.run(self.ssh_port, user, key or self.image.harness_key, command, timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{user}@guest: {command!r} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def can_login(self, user: str, key: Path) -> bool:
        return ssh.can_login(self.ssh_port, user, key)

    def console_run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a command as root on the serial console (no network or sshd needed)."""
        with console.session(self.files.console_socket) as session:
            return session.run(command, timeout)

    def diagnose(self) -> str:
        """What the guest says about the agent and sshd, through the console."""
        try:
            _, out = self.console_run(
                "systemctl --no-pager --failed; systemctl --no-pager status guestagent ssh"
                " | cat; journalctl --no-pager -b -u guestagent | tail -n 40",
                timeout=60,
            )
        except Exception as exc:
            return f"(console diagnosis failed: {exc!r})"
        return out

    def serial_text(self) -> str:
        path = self.files.serial_log
        return path.read_text(errors="replace") if path.exists() else ""

    def serial_tail(self, chars: int = 4000) -> str:
        return self.serial_text()[-chars:]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    """Poll `predicate()` until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@contextlib.contextmanager
def select_runner(cache_dir: Path) -> Iterator[qemu.Runner]:
    """The container runner where Podman is installed, else QEMU directly.

    `GUESTAGENT_VM_RUNNER=direct|container` forces one.
    """
    from guestsim.vm import container

    choice = os.environ.get(RUNNER_ENV, "auto")
    if choice not in {"auto", "container", "direct"}:
        raise ValueError(f"{RUNNER_ENV} must be auto, container or direct, not {choice!r}")
    if choice == "container" or (choice == "auto" and container.podman_available()):
        with container.container_runner(cache_dir) as runner:
            yield runner
    else:
        yield qemu.DirectRunner()
