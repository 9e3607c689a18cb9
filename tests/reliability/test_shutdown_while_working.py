"""SIGTERM while a pass is running: the daemon must end well within systemd's 90 s stop
timeout (asserted: under 30 s) and leave no torn file behind.

Three slow steps, each a program that sleeps a minute before doing its work:

- `useradd`: a shim first on PATH (sleeps, then execs the real one), three new users;
- `ssh-keygen`: the same for host-key generation at first boot;
- the DHCP command (`[NetworkInterfaces] dhcp_command`, a sleeping script) for a second
  NIC. Under --root the agent refuses every program that would change the machine, DHCP
  included (even with --netns: ConfinedRunner refuses `ip netns exec`), so this case runs
  the real Daemon from a small driver: bootstrap() as the CLI does, with an in-memory
  netlink holding the NIC and a runner that lets exactly the sleeping script through.

The three run side by side (each in its own session, so cleanup can kill whatever is
left by process group). After the stop (or after 30 s, then SIGKILL): passwd, group,
shadow, the managed-users record and every authorized_keys must parse whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from tests.integration.conftest import AGENT, _needs_root, scenario
from tests.reliability.conftest import (
    BY_NAME,
    managed_keys,
    parse_group,
    parse_passwd,
    parse_record,
    read,
    url_of,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

CASE = BY_NAME["gce"]
BOUND = 30.0  # seconds from SIGTERM to exit; systemd's stop timeout is 90 s
SLEEP = 60  # what each slow program sleeps before working
REPO = Path(__file__).resolve().parents[2]
USERS = {
    f"slow{i}": [f"ssh-ed25519 {k}"]
    for i, k in enumerate(
        (
            "AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQrd/Z1t1fJBEcjD6SOk5sbkxedozey/PW8b5q",
            "AAAAC3NzaC1lZDI1NTE5AAAAIBqhMMDjKiHa0eV1aJ8KRUEEYL82M8WpxghbfuSI94sC",
            "AAAAC3NzaC1lZDI1NTE5AAAAIAooCEqTkRqUrg0/5EPY1aHgHZWQ99P3hLsEw8o2Jd6A",
        )
    )
}
SECOND_NIC = "42:01:0a:80:00:03"
SHIM = """#!/bin/sh
echo "$$ $(basename "$0") $*" >> {marker}
sleep {sleep}
exec {real} "$@"
"""
DRIVER = r"""
import sys
import attrs
from guestagent.adapters.subprocess_runner import SubprocessRunner
from guestagent.domain.nics import Link
from guestagent.entrypoints.bootstrap import Options, bootstrap
from guestagent.entrypoints.daemon import Daemon
from tests.fake_netlink import FakeNetlink

root, url, script = sys.argv[1:4]


class DhcpOnly:
    # The sandbox's runner, except for the test's sleeping DHCP script, which goes to the
    # runner the sandbox's wraps (the one the agent would use on a real guest).
    def __init__(self, confined):
        self.confined = confined
        self.real = getattr(confined, "_inner", None) or SubprocessRunner()

    def which(self, program):
        return self.confined.which(program)

    def run(self, argv, **kwargs):
        inner = self.real if argv[0] == script else self.confined
        return inner.run(argv, **kwargs)

    def cancel(self):
        self.confined.cancel()  # the sandbox's runner hands it on to the real one


import logging
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s guestagent %(levelname)s %(message)s")
agent = bootstrap(Options(metadata_url=url, platform="gce", root=root, backoff_max=1.0))
links = [Link(1, "eth0", "42:01:0a:80:00:02", True, ("10.128.0.2",)), Link(2, "eth1", "@MAC@", False)]
netlink = FakeNetlink(links)
ctx = attrs.evolve(agent.ctx, runner=DhcpOnly(agent.ctx.runner), netlink=lambda: netlink)
daemon = Daemon(ctx, agent.source, agent.subsystems, agent.lanes, backoff_max=1.0)
daemon.install_signal_handlers()
sys.exit(daemon.run())
""".replace("@MAC@", SECOND_NIC)


@attrs.frozen
class Stopped:
    name: str
    took: float | None  # seconds from SIGTERM to exit; None: still running at BOUND
    log: str
    root: Path
    started: str  # what the slow program's marker says started


def _shim(folder: Path, program: str, marker: Path) -> None:
    real = next(
        p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}", f"/sbin/{program}") if os.path.exists(p)
    )
    path = folder / program
    path.write_text(SHIM.format(marker=marker, sleep=SLEEP, real=real))
    path.chmod(0o755)


def stop_while(name: str, work: Path) -> Stopped:
    from guestagent.entrypoints.sandbox import make_sandbox

    root = Path(make_sandbox(str(work / "root")))
    marker, folder = work / "started", work / "shims"
    folder.mkdir()
    config = CASE.config
    extra_scenario: dict[str, object] = {}
    if name == "ssh-keygen":
        config += "[InstanceSetup]\nset_host_keys = true\nhost_key_types = ed25519\n"
        _shim(folder, "ssh-keygen", marker)
    elif name == "useradd":
        _shim(folder, "useradd", marker)
    elif name == "dhcp":
        script = folder / "dhcp-client"
        script.write_text(f'#!/bin/sh\necho "$$ dhcp $*" >> {marker}\nsleep {SLEEP}\n')
        script.chmod(0o755)
        config += f"[NetworkInterfaces]\ndhcp_command = {script} {{interface}}\n"
        extra_scenario = {
            "network": {
                "interfaces": [
                    {"mac": "42:01:0a:80:00:02", "ip": "10.128.0.2/20"},
                    {"mac": SECOND_NIC, "ip": "10.128.1.2/24"},
                ]
            }
        }
    (root / "etc/default").mkdir(parents=True, exist_ok=True)
    (root / "etc/default/instance_configs.cfg").write_text(config)
    sim = CASE.start(scenario(USERS, **extra_scenario))
    log = work / "daemon.log"
    env = {
        **os.environ,
        "PATH": f"{folder}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO),
    }
    if name == "dhcp":
        argv = [sys.executable, "-c", DRIVER, str(root), url_of(CASE, sim), str(folder / "dhcp-client")]
    else:
        argv = [
            *AGENT,
            "daemon",
            "--root",
            str(root),
            "--metadata-url",
            url_of(CASE, sim),
            "--platform",
            "gce",
            "--backoff-max",
            "1",
        ]
    took = None
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while not (marker.exists() and marker.read_text().strip()):
            assert proc.poll() is None, f"{name}: the daemon ended early:\n{read(log)}"
            assert time.monotonic() < deadline, f"{name}: the slow step never started:\n{read(log)}"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the slow step
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=BOUND)
            took = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            took = None
    finally:
        # The daemon, the shim's sleep and whatever else it started: by process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        sim.stop()
    return Stopped(name, took, read(log) or "", root, read(marker) or "")


def check_whole(root: Path) -> None:
    passwd = parse_passwd((root / "etc/passwd").read_text())
    parse_group((root / "etc/group").read_text())
    for name, fields in (("shadow", 9), ("gshadow", 4)):
        text = (root / "etc" / name).read_text()
        assert text.endswith("\n") and all(len(line.split(":")) == fields for line in text.splitlines()), name
    for user in parse_record(read(root / CASE.record)):
        assert user in passwd, f"the record names {user}, who is not in passwd"
    for user in USERS:
        if user in passwd:
            text = read(root / passwd[user][5].lstrip("/") / ".ssh/authorized_keys")
            managed_keys(text, CASE.marker)


SLOW = ("useradd", "ssh-keygen", "dhcp")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    _needs_root()

    def one(name: str) -> Stopped:
        return stop_while(name, tmp_path_factory.mktemp(name))

    with ThreadPoolExecutor(max_workers=len(SLOW)) as pool:
        return dict(zip(SLOW, pool.map(one, SLOW), strict=True))


@pytest.mark.parametrize("name", SLOW)
def test_sigterm_during_a_slow_step_ends_the_daemon_promptly(stopped: dict[str, Stopped], name: str) -> None:
    result = stopped[name]
    assert result.started, f"{name}: the slow step never ran"
    assert result.took is not None, (
        f"{name}: still running {BOUND:.0f}s after SIGTERM (systemd would SIGKILL it at 90 s "
        f"in the middle of the pass):\n{result.log[-2500:]}"
    )
    assert result.took < BOUND
    assert "Traceback" not in result.log, result.log[-3000:]


@pytest.mark.parametrize("name", SLOW)
def test_no_torn_file_after_a_stop_during_a_slow_step(stopped: dict[str, Stopped], name: str) -> None:
    check_whole(stopped[name].root)
