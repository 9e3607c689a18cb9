"""QEMU inside a Podman container, started through testcontainers.

No Docker engine and no registry here: the container image is made locally
from an mmdebstrap tarball (`podman import`, never pulled), and
testcontainers talks to Podman's Docker-compatible socket with Ryuk off (its
image cannot be pulled either). The container uses the host network so that
QEMU's forwards bind and connect on this machine's 127.0.0.1 only; the VM's
directories are mounted at the same paths inside, so paths (and the qcow2
backing file) mean the same on both sides.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guestsim.vm import cache, qemu, rootfs

# Podman's defaults fail here: rlimits above the hard limit, and cgroups in
# hybrid mode (see TEST_ENVIRONMENT.md).
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
IMAGE_REPOSITORY = "localhost/guestagent-qemu"


def podman_available() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def podman_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def ensure_image(cache_dir: Path, env: dict[str, str]) -> str:
    """The QEMU container image's tag, importing the cached rootfs if Podman lacks it."""
    tarball = rootfs.ensure_rootfs(rootfs.QEMU_CONTAINER, cache_dir)
    tag = f"{IMAGE_REPOSITORY}:{rootfs.QEMU_CONTAINER.key}"
    # Locked: parallel test workers import it once.
    with cache.locked(cache_dir, "podman-import"):
        exists = subprocess.run(["podman", "image", "exists", tag], env=env, check=False)
        if exists.returncode != 0:
            subprocess.run(
                ["podman", "import", "--quiet", str(tarball), tag],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return tag


@contextmanager
def podman_service(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """Run `podman system service` on a private socket for as long as the block lasts."""
    sock = workdir / "podman.sock"
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "podman-service.log").open("wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"podman system service exited: {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("podman system service made no socket in 30 s")
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        # Our own service process, by PID.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class ContainerQemu:
    def __init__(self, container: Any, log: Path) -> None:
        self._container = container
        self._log = log

    def _status(self) -> str:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return str(wrapped.status)

    def running(self) -> bool:
        return self._status() in {"created", "running"}

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return True
            time.sleep(0.5)
        return False

    def kill(self) -> None:
        # Keep QEMU's own messages, then remove the container (forced), whatever its state.
        try:
            self._log.write_text(self.logs())
        finally:
            self._container.stop()

    def describe(self) -> str:
        wrapped = self._container.get_wrapped_container()
        return f"container {wrapped.short_id}"

    def logs(self) -> str:
        return bytes(self._container.get_wrapped_container().logs()).decode(errors="replace")


class ContainerRunner:
    name = "container"

    def __init__(self, base_url: str, image: str) -> None:
        self._base_url = base_url
        self._image = image

    def start(self, spec: qemu.QemuSpec, shared: list[Path], readonly: list[Path]) -> qemu.RunningQemu:
        # No Ryuk: its image cannot be pulled. testcontainers reads the variable at
        # import time, so set the loaded config too in case it was imported already.
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        testcontainers_config.ryuk_disabled = True

        container = DockerContainer(
            self._image, docker_client_kw={"environment": {"DOCKER_HOST": self._base_url}}
        )
        container.with_command(spec.argv())
        container.with_kwargs(network_mode="host")
        for directory in shared:
            container.with_volume_mapping(str(directory), str(directory), mode="rw")
        for directory in readonly:
            container.with_volume_mapping(str(directory), str(directory), mode="ro")
        container.start()
        log = spec.files.directory / "qemu.log"
        running = ContainerQemu(container, log)
        try:
            qemu.wait_for_socket(spec.files.console_socket, running.running, log)
        except Exception:
            running.kill()
            raise
        return running


@contextmanager
def container_runner(cache_dir: Path) -> Iterator[ContainerRunner]:
    with tempfile.TemporaryDirectory(prefix="guestagent-podman-") as tmp:
        conf = Path(tmp) / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        env = podman_env(conf)
        image = ensure_image(cache_dir, env)
        with podman_service(Path(tmp), env) as base_url:
            yield ContainerRunner(base_url, image)
