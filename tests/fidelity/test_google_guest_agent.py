"""Debian's google-guest-agent (Google's Go agent, 20211116) against the simulator's GCE.

The agent runs chrooted, in its own PID/mount/UTS namespaces, in a private network
namespace whose only "outside" is the simulator at 169.254.169.254.  The tests check
what a user of a GCE image would notice: accounts, sudo, authorized_keys, local routes
for forwarded IPs, and the host keys published as guest attributes.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod

from .conftest import (
    INSTANCE_ID,
    KEY_ALICE,
    KEY_BOB,
    KEY_CAROL,
    scenario,
    start_simulator,
    tail,
    wait_until,
)

# One xdist group per module: its tests share one chroot, simulator and running peer
# (module fixtures), and must not be spread over workers that would each build them.
pytestmark = [
    pytest.mark.fidelity,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.xdist_group("fidelity-google-guest-agent"),
]

# The chroot shares the host's clock, so the clock-skew daemon (which runs hwclock) must
# stay off.  The tuning scripts are off for the same reason: they write IRQ affinity and
# block-queue settings that are global to the machine (they are also absent in Debian's
# package, and /proc/sys, /proc/irq are read-only in the chroot as a second line).
INSTANCE_CONFIGS = """\
[Daemons]
clock_skew_daemon = false

[InstanceSetup]
optimize_local_ssd = false
set_multiqueue = false
"""


@dataclass
class AgentRun:
    sim: Any
    root: chroot_mod.Chroot
    net: netns_mod.MetadataNetwork
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    host_hostname: str

    def passwd(self) -> dict[str, list[str]]:
        entries = {}
        for line in self.root.read("/etc/passwd").splitlines():
            fields = line.split(":")
            entries[fields[0]] = fields
        return entries

    def group_members(self, group: str) -> set[str]:
        for line in self.root.read("/etc/group").splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return {m for m in fields[3].split(",") if m}
        return set()

    def authorized_keys(self, user: str) -> str | None:
        path = self.root.path(f"/home/{user}/.ssh/authorized_keys")
        return path.read_text() if path.exists() else None

    def diagnose(self) -> str:
        reqs = self.sim.requests()[-15:]
        lines = [f"{r['method']} {r['path']} {r.get('query')} -> {r['status']}" for r in reqs]
        return "agent log:\n" + tail(self.log) + "\nlast requests:\n" + "\n".join(lines)


KEY_ERIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOQ2W6TYaL76R0Vv2ERLn2Vpl+2uZqLqN+V4KLIuVKF+ erin@fid"
KEY_DAVE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+X2Q3SZW3qASUPzmNSRnnOOlT/Bevx8AaFAYiTBi68 dave@fid"


def agent_scenario() -> dict[str, Any]:
    """The shared VM plus two keys in the simulator's google-ssh expiry form.

    erin's key expires in 2035, dave's expired an hour ago: the real agent must parse
    the simulator's ``google-ssh {"userName":..,"expireOn":..}`` rendering to tell them
    apart (it skips expired keys and creates no user for them).
    """
    scn = scenario()
    scn["users"] = [
        *scn["users"],
        {
            "name": "erin",
            "keys": [
                {
                    "key": KEY_ERIN,
                    "google_user": "erin@example.com",
                    "expire_on": "2035-01-01T00:00:00+0000",
                }
            ],
        },
        {"name": "dave", "keys": [{"key": KEY_DAVE, "expire_in": -3600}]},
    ]
    return scn


def _key_blob(key: str) -> str:
    return key.split()[1]


@pytest.fixture(scope="module")
def agent(
    peer_root: chroot_mod.Chroot, metadata_net: netns_mod.MetadataNetwork, workdir: Path
) -> Iterator[AgentRun]:
    sim = start_simulator(("gce",), agent_scenario())
    log = workdir / "google_guest_agent.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        metadata_net.forward_to("127.0.0.1", sim.port)
        peer_root.write("/etc/default/instance_configs.cfg", INSTANCE_CONFIGS)
        started, host_hostname = time.time(), socket.gethostname()
        proc = peer_root.spawn(["/usr/bin/google_guest_agent"], netns=metadata_net.guest_ns, log=log)
        run = AgentRun(sim, peer_root, metadata_net, proc, log, started, host_hostname)
        done = wait_until(
            lambda: (
                run.authorized_keys("alice")
                and run.authorized_keys("bob")
                and "hostkeys/ssh-ed25519" in sim.guest_attributes()
            ),
            timeout=60,
        )
        if not done:
            pytest.fail("the agent did not provision within 60 s\n" + run.diagnose())
        yield run
    finally:
        if proc is not None:
            chroot_mod.stop(proc)
        sim.stop()


def test_users_are_created_with_bash_and_home(agent: AgentRun) -> None:
    users = agent.passwd()
    for name in ("alice", "bob"):
        assert name in users, agent.diagnose()
        fields = users[name]
        assert fields[5] == f"/home/{name}"
        assert fields[6] == "/bin/bash"
        assert agent.root.path(f"/home/{name}").is_dir()


def test_users_are_in_google_sudoers(agent: AgentRun) -> None:
    assert {"alice", "bob"} <= agent.group_members("google-sudoers")
    sudoers = agent.root.path("/etc/sudoers.d/google_sudoers")
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL" in sudoers.read_text()


def test_sudo_accepts_the_generated_sudoers(agent: AgentRun) -> None:
    """The real sudo, in the chroot, says alice may run anything without a password."""
    out = agent.root.run(["sudo", "-l", "-U", "alice"], netns=agent.net.guest_ns, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "NOPASSWD: ALL" in out.stdout


def test_authorized_keys_files_modes_and_owner(agent: AgentRun) -> None:
    users = agent.passwd()
    for name, key in (("alice", KEY_ALICE), ("bob", KEY_BOB)):
        ssh_dir = agent.root.path(f"/home/{name}/.ssh")
        keys = ssh_dir / "authorized_keys"
        uid = int(users[name][2])
        assert stat.S_IMODE(ssh_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        assert keys.stat().st_uid == uid
        assert ssh_dir.stat().st_uid == uid
        text = keys.read_text()
        assert _key_blob(key) in text
        assert "# Added by Google" in text
        # Each user gets only their own key (bob's is a project key: still provisioned,
        # since nothing blocks project keys).
        other = KEY_BOB if name == "alice" else KEY_ALICE
        assert _key_blob(other) not in text


def test_forwarded_ip_routes_in_guest_namespace(agent: AgentRun) -> None:
    want = {"10.128.0.100", "10.128.0.200", "10.8.0.0/24"}
    routes = wait_until(lambda: agent.net.guest_routes("table", "local", "proto", "66"), timeout=20)
    got = {r["dst"] for r in routes}
    assert got == want, agent.diagnose()
    assert all(r["type"] == "local" and r["dev"] == "eth0" and r.get("scope") == "host" for r in routes)


def test_host_keys_published_as_guest_attributes(agent: AgentRun) -> None:
    attrs = agent.sim.guest_attributes()
    for keytype, name in (("ssh-ed25519", "ed25519"), ("ecdsa-sha2-nistp256", "ecdsa"), ("ssh-rsa", "rsa")):
        pub = agent.root.read(f"/etc/ssh/ssh_host_{name}_key.pub").split()
        assert pub[0] == keytype
        assert attrs.get(f"hostkeys/{keytype}", "").strip() == pub[1]
    # The first-boot marker holds the instance id the simulator served.
    assert agent.root.read("/etc/google_instance_id").strip() == INSTANCE_ID
    assert "guest-agent/sshable" in attrs


def test_agent_requests_carry_metadata_flavor(agent: AgentRun) -> None:
    """The agent's own requests all carried the header the real server insists on."""
    reqs = [r for r in agent.sim.requests() if r["path"].startswith("/computeMetadata")]
    assert reqs
    assert all(r["headers"].get("metadata-flavor") == "Google" for r in reqs)
    assert all(r["status"] in (200, 0) for r in reqs), json.dumps(reqs[-5:], indent=1)


def test_expiring_keys_in_google_ssh_form(agent: AgentRun) -> None:
    erin = agent.authorized_keys("erin")
    assert erin is not None and _key_blob(KEY_ERIN) in erin, agent.diagnose()
    # The expired key made no account, and its key is nowhere on the box.
    assert "dave" not in agent.passwd()
    assert not agent.root.path("/home/dave").exists()
    served = agent.sim.get("instance/attributes/ssh-keys")
    assert "dave:" in served and "google-ssh" in served  # it was there to be refused


def test_live_ssh_keys_change_reaches_the_files(agent: AgentRun) -> None:
    """A metadata change arrives over the long poll: carol appears, alice's key goes."""
    sim = agent.sim
    lines = f"carol:{KEY_CAROL}\nalice:{KEY_BOB}"
    started = time.monotonic()
    sim.set("instance/attributes/ssh-keys", lines)
    carol = wait_until(lambda: agent.authorized_keys("carol"), timeout=30)
    assert carol and _key_blob(KEY_CAROL) in carol, agent.diagnose()
    alice = wait_until(
        lambda: (k := agent.authorized_keys("alice")) is not None and _key_blob(KEY_ALICE) not in k and k,
        timeout=30,
    )
    assert alice, agent.diagnose()
    assert _key_blob(KEY_BOB) in alice
    assert "carol" in agent.group_members("google-sudoers")
    elapsed = time.monotonic() - started
    assert elapsed < 30


def test_removed_project_key_is_revoked(agent: AgentRun) -> None:
    """bob's key leaves project metadata: he loses key and sudo, keeps his account."""
    agent.sim.set("project/attributes/ssh-keys", "")
    revoked = wait_until(
        lambda: (
            "bob" not in agent.group_members("google-sudoers")
            and _key_blob(KEY_BOB) not in (agent.authorized_keys("bob") or "")
        ),
        timeout=30,
    )
    assert revoked, agent.diagnose()
    assert "bob" in agent.passwd()  # deprovision_remove defaults to false
    assert agent.root.path("/home/bob").is_dir()
    # alice holds KEY_BOB herself since the live change, as an instance key: unaffected.
    assert _key_blob(KEY_BOB) in (agent.authorized_keys("alice") or "")


def test_enable_oslogin_round_trip(agent: AgentRun) -> None:
    """enable-oslogin=TRUE (GCE's spelling varies) switches the agent to OS Login; back
    to false restores nsswitch.conf byte for byte and the managed users' sudo."""
    nsswitch = agent.root.path("/etc/nsswitch.conf")
    before = nsswitch.read_bytes()
    agent.sim.set("instance/attributes/enable-oslogin", "TRUE")
    on = wait_until(
        lambda: b"oslogin" in nsswitch.read_bytes() and "alice" not in agent.group_members("google-sudoers"),
        timeout=30,
    )
    assert on, agent.diagnose()
    agent.sim.set("instance/attributes/enable-oslogin", "false")
    off = wait_until(
        lambda: nsswitch.read_bytes() == before and "alice" in agent.group_members("google-sudoers"),
        timeout=30,
    )
    assert off, agent.diagnose()
    # Which keys the Go agent writes back after OS Login is switched off depends on its
    # in-memory key cache (seen both ways in CI); that is its behaviour, not the simulator's.
    assert agent.authorized_keys("alice")


def test_startup_script_runner_runs_the_script(agent: AgentRun) -> None:
    """google_metadata_script_runner (same package) fetches and runs startup-script."""
    script = '#!/bin/bash\necho "ran as $(id -un) in $PWD" > /var/tmp/startup-ran\necho hello\n'
    agent.sim.set("instance/attributes/startup-script", script)
    out = agent.root.run(
        ["/usr/bin/google_metadata_script_runner", "startup"],
        netns=agent.net.guest_ns,
        timeout=60,
    )
    ran = agent.root.path("/var/tmp/startup-ran")
    assert ran.exists(), out.stdout + out.stderr
    assert ran.read_text().startswith("ran as root")
    logged = out.stdout + out.stderr
    assert "startup-script: hello" in logged
    assert "startup-script exit status 0" in logged


def test_host_was_not_touched(agent: AgentRun) -> None:
    """Everything the agent did stayed in the chroot and the private namespaces."""
    host_users = Path("/etc/passwd").read_text()
    assert "\nalice:" not in host_users and "\ncarol:" not in host_users
    assert not Path("/etc/sudoers.d/google_sudoers").exists() or (
        Path("/etc/sudoers.d/google_sudoers").stat().st_mtime < agent.started
    )
    host_routes = subprocess.run(
        ["ip", "route", "show", "table", "local", "proto", "66"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert host_routes.strip() == ""
    assert socket.gethostname() == agent.host_hostname
