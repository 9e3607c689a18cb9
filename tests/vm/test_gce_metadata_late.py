"""GCE: the metadata server is down when the guest boots and comes up later:
the agent keeps trying and provisions without a reboot. (The guest says it is
GCE through DMI, so detection does not depend on the server being up.)"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from guestsim import Simulator
from guestsim.vm.image import ImagePaths
from guestsim.vm.machine import Vm, wait_until
from guestsim.vm.qemu import SMBIOS, Runner, free_port

from .conftest import UserKey, record_timing

# How long the server stays down once the agent has started asking.
OUTAGE = 30
AGENT_STARTED = re.compile(r"guestagent\.servic|guestagent\[\d+\]")


def test_provisioning_completes_when_the_metadata_server_comes_up_late(
    guest_image: ImagePaths,
    vm_runner: Runner,
    user_keys: Callable[[str], UserKey],
    vm_logs_dir: Path,
):
    alice = user_keys("alice")
    # Nothing listens on this port yet: each guest connection to
    # 169.254.169.254:80 is accepted by slirp and closed when socat fails.
    port = free_port()
    with Vm(
        guest_image, port, vm_runner, keep_dir=vm_logs_dir / "gce_metadata_late", smbios=SMBIOS["gce"]
    ) as vm:
        vm.start()
        # Count the outage from when the agent starts, not from QEMU start:
        # under TCG the guest needs 30-60 s to get that far.
        # systemd's status line ("Starting guestagent.servic…", cut to the
        # console's width) or the agent's own first log line.
        assert wait_until(lambda: AGENT_STARTED.search(vm.serial_text()) is not None, 300, 0.5), (
            vm.serial_tail()
        )
        time.sleep(OUTAGE)
        assert not vm.can_login("alice", alice.private)
        with Simulator({"users": [{"name": "alice", "keys": [alice.public]}]}, platforms=("gce",), port=port):
            up = time.monotonic()
            assert wait_until(lambda: vm.can_login("alice", alice.private), 300, 0.5), vm.diagnose()
            record_timing(
                "gce: metadata server up late",
                f"alice logged in {time.monotonic() - up:.1f} s after the server came up",
            )
            assert vm.boots == 1
            # The guest has been up since QEMU started: no reboot on the way.
            uptime = float(vm.ssh("cut -d' ' -f1 /proc/uptime").stdout)
            assert uptime > time.monotonic() - vm.started_at - 20
            assert vm.ssh("sudo -n true", user="alice", key=alice.private).returncode == 0
