"""Fixtures for tests that boot a real QEMU guest with the agent's .deb installed.

Cost model: the image is built once per machine (cached by input hashes), and
each boot costs 30-80 s under TCG, so tests share a booted VM wherever they
do not need a fresh one. Every VM gets its own SSH port and simulator, so
pytest-xdist (`--dist loadfile`) can run the modules side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from guestsim.vm import cache, image, machine, ssh

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "socat", "ssh", "ssh-keyscan")
# Set by tests/conftest.py in the pytest process that starts the xdist workers.
REPORT_ENV = "GUESTAGENT_VM_REPORT"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if here in path.parents:
            item.add_marker(pytest.mark.vm)
            # A module's tests share one VM and depend on running in file order;
            # ./dev test uses --dist loadfile, which keeps a file on one worker, in order.
            item.add_marker(pytest.mark.xdist_group(f"vm-{path.stem}"))


def record_timing(name: str, text: str) -> None:
    path = os.environ.get(REPORT_ENV)
    if path is None:  # run without the top-level conftest: no summary to feed
        return
    with open(path, "a") as f:
        f.write(f"## {name}\n{text}\n\n")


@pytest.fixture(scope="session")
def vm_cache_dir() -> Path:
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (mmdebstrap, chroot, mkfs.ext4 -d with owners)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"VM tests need {', '.join(missing)} (nox -s vm installs them)")
    return cache.default_cache_dir()


@pytest.fixture(scope="session")
def agent_deb(vm_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb under test: $GUESTAGENT_VM_DEB, or built from this checkout."""
    given = os.environ.get("GUESTAGENT_VM_DEB")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_deb.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def guest_image(vm_cache_dir: Path, agent_deb: Path) -> image.ImagePaths:
    return image.build_image(vm_cache_dir, agent_deb)


@pytest.fixture(scope="session")
def vm_runner(vm_cache_dir: Path) -> Iterator[machine.qemu.Runner]:
    with machine.select_runner(vm_cache_dir) as runner:
        yield runner


@attrs.frozen
class UserKey:
    name: str
    private: Path
    public: str

    @property
    def line(self) -> str:
        """The GCE ssh-keys line for this key."""
        return f"{self.name}:{self.public}"


@pytest.fixture(scope="session")
def user_keys(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], UserKey]:
    """`user_keys("alice")`: a fresh ed25519 key pair for that user (one per name)."""
    directory = tmp_path_factory.mktemp("keys")
    made: dict[str, UserKey] = {}

    def get(name: str) -> UserKey:
        if name not in made:
            public = ssh.keygen(directory / name, f"{name}@vm-test")
            made[name] = UserKey(name, directory / name, public)
        return made[name]

    return get


@pytest.fixture(scope="session")
def vm_logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Serial and QEMU logs are kept here after each VM ends ($GUESTAGENT_VM_LOGS overrides)."""
    given = os.environ.get("GUESTAGENT_VM_LOGS")
    return Path(given) if given else tmp_path_factory.mktemp("vm-logs")
