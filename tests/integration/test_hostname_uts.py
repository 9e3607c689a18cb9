"""The hostname subsystem setting a real live hostname, inside a private UTS namespace.

The agent believes it owns the machine (root "/"), but its files go to a temp
directory and `hostname` runs under `unshare --uts`, so the machine's own
hostname never changes; the test checks that too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PROGRAM = r"""
import json, socket, sys
from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.adapters.system_clock import SystemClock
from guestagent.domain.config import Config
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.services.context import Context
from guestagent.services.hostname import HostnameSubsystem

fs = LocalFileSystem(sys.argv[1])
ctx = Context(config=Config(), fs=fs, runner=SubprocessRunner(), users=PasswdFiles(fs),
              clock=SystemClock(), root="/")
md = InstanceMetadata("gce", "1", hostname=sys.argv[2],
                      network_interfaces=(NetworkInterface(mac="42:01:0a:80:00:02", ip="10.128.0.2"),))
sub = HostnameSubsystem()
first = sub.reconcile(ctx, md)
second = sub.reconcile(ctx, md)
print(json.dumps({"first": first.actions, "failures": first.failures, "second": second.actions,
                  "live": socket.gethostname()}))
"""


def run_in_uts(root: Path, hostname: str) -> dict[str, object]:
    proc = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c", PROGRAM, str(root), hostname],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --uts")
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        pytest.skip("needs unshare and hostname")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("localhost\n")
    (tmp_path / "etc/hosts").write_text("127.0.0.1 localhost\n# mine\n10.0.0.9 cache\n")
    return tmp_path


def test_live_hostname_files_and_idempotency(root: Path) -> None:
    before = socket.gethostname()
    result = run_in_uts(root, "vm-7.c.proj.internal")
    assert result["failures"] == []
    assert result["live"] == "vm-7"
    assert result["second"] == []
    assert (root / "etc/hostname").read_text() == "vm-7\n"
    assert (root / "etc/hosts").read_text() == (
        "127.0.0.1 localhost\n# mine\n10.0.0.9 cache\n"
        "10.128.0.2 vm-7.c.proj.internal vm-7  # Added by guestagent\n"
    )
    assert socket.gethostname() == before  # the machine's own name is untouched


def test_garbage_hostname_leaves_everything(root: Path) -> None:
    result = run_in_uts(root, "-bad_host-")
    assert result["first"] == []
    assert result["live"] == socket.gethostname()  # the namespace starts with the machine's name
    assert (root / "etc/hostname").read_text() == "localhost\n"
