"""Hostile metadata and SIGKILL against the real agent: real shadow-utils in a sandbox root,
the simulator on loopback. Each promise here was once broken (see the README's promises):
a bad entry never stops the good ones, garbage never reads as "no keys", a crash at any
point is repaired by the next run, and no thread of the daemon dies for good."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import (
    AGENT,
    group_members,
    passwd_entry,
    read,
    scenario,
    ssh_keys_value,
    wait_until,
)
from tests.keys import ED25519, ED25519_BOB, RSA

pytestmark = pytest.mark.root
DEEP = "[" * 4000 + "]" * 4000
SUDO = "google-sudoers"


def keys_of(sandbox: Path, user: str) -> str | None:
    return read(sandbox / f"home/{user}/.ssh/authorized_keys")


# ---- 1. deep nesting


def test_deep_nesting_in_one_key_comment_rejects_that_key_and_provisions_the_rest(
    sandbox: Path, run_agent
) -> None:
    deep_key = f"{RSA.rsplit(' ', 1)[0]} google-ssh {DEEP}"
    with Simulator(scenario({})) as sim:
        sim.set("instance/attributes/ssh-keys", f"alice:{ED25519}\nmallory:{deep_key}\nbob:{ED25519_BOB}")
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert ED25519 in (keys_of(sandbox, "alice") or "") and ED25519_BOB in (keys_of(sandbox, "bob") or "")
    assert passwd_entry(sandbox, "mallory") is None
    assert "line 2: google-ssh comment refused: JSON nested deeper than" in result.stderr


def test_a_deeply_nested_document_is_retried_like_a_server_that_is_down(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        sim.add_fault("*", "body", body='{"instance": ' + DEEP + "}")
        result = run_agent("run", "--once", "--wait", "1", url=sim.url("gce"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "JSON nested deeper than" in result.stderr


def test_the_daemon_survives_deep_nesting_and_provisions_once_metadata_is_good(
    sandbox: Path, start_daemon
) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        fault = sim.add_fault("*", "body", body='{"instance": ' + DEEP + "}")
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: len(sim.requests(method="GET")) >= 3, timeout=30)
        sim.remove_fault(fault)
        wait_until(lambda: ED25519 in (keys_of(sandbox, "alice") or ""), timeout=30)
        # And the watch that follows survives it too: nested answers, then a real change.
        # Once its poll is held (after the pass that makes the RSA host key), an unrelated
        # change releases it and the watch's next two requests meet the fault.
        wait_until(lambda: sim.held_polls() == 1, timeout=60)
        sim.add_fault("*", "body", body='{"instance": ' + DEEP + "}", count=2, method="GET")
        sim.set("instance/attributes/unrelated", "1")
        # A fault that has had its count leaves the list.
        wait_until(lambda: all(f["hits"] >= 2 for f in sim.faults()), timeout=30)
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [ED25519], "bob": [ED25519_BOB]}))
        wait_until(lambda: ED25519_BOB in (keys_of(sandbox, "bob") or ""), timeout=60)
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log()


# ---- 2. wrong types never read as empty


@pytest.mark.parametrize("garbage", [{"alice": ED25519}, [f"alice:{ED25519}"]])
def test_wrong_typed_ssh_keys_keep_every_managed_key_and_sudo(sandbox: Path, run_agent, garbage: object) -> None:
    with Simulator(scenario({"alice": [ED25519], "bob": [ED25519_BOB]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        before = {u: keys_of(sandbox, u) for u in ("alice", "bob")}
        record = read(sandbox / "var/lib/google/google_users")
        sim.set("instance/attributes/ssh-keys", garbage)
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stderr
    assert {u: keys_of(sandbox, u) for u in ("alice", "bob")} == before
    assert group_members(sandbox, SUDO) == {"alice", "bob"}
    assert read(sandbox / "var/lib/google/google_users") == record == "alice\nbob\n"
    assert "accounts: HELD instance/attributes/ssh-keys: is a JSON" in result.stdout


def test_the_daemon_holds_accounts_on_garbage_and_follows_the_next_good_change(
    sandbox: Path, start_daemon
) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: ED25519 in (keys_of(sandbox, "alice") or ""), timeout=30)
        sim.set("instance/attributes/ssh-keys", {"alice": ED25519})
        wait_until(lambda: "accounts: kept as is" in daemon.log(), timeout=30)
        assert ED25519 in (keys_of(sandbox, "alice") or "")
        assert group_members(sandbox, SUDO) == {"alice"}
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [RSA]}))
        wait_until(lambda: RSA in (keys_of(sandbox, "alice") or ""), timeout=30)
    assert ED25519 not in (keys_of(sandbox, "alice") or "")


# ---- 3. SIGKILL at any point: the next run converges


def test_a_user_whose_home_was_never_made_is_repaired(sandbox: Path, run_agent) -> None:
    # What a kill between useradd's rename of passwd and its mkdir of the home leaves behind.
    subprocess.run(["useradd", "--prefix", str(sandbox), "-s", "/bin/bash", "alice"], check=True)
    assert not (sandbox / "home/alice").exists()
    (sandbox / "etc/skel/.profile-marker").write_text("from skel\n")
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stdout + result.stderr
    home = sandbox / "home/alice"
    uid = int(passwd_entry(sandbox, "alice")[2])  # type: ignore[index]
    assert home.stat().st_uid == uid and (home / ".profile-marker").stat().st_uid == uid
    assert (home / ".profile-marker").read_text() == "from skel\n"
    assert stat.S_IMODE(home.stat().st_mode) in (0o700, 0o750, 0o755)
    assert ED25519 in (keys_of(sandbox, "alice") or "")
    assert "alice" in (group_members(sandbox, SUDO) or set())


def test_temp_files_a_killed_write_left_are_cleaned_up(sandbox: Path, run_agent) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        ssh = sandbox / "home/alice/.ssh"
        (ssh / ".authorized_keys.0badf00d.tmp").write_text("half a key")
        (ssh / "notes.tmp").write_text("the user's own file\n")
        (sandbox / "var/lib/google/.google_users.deadbeef.tmp").write_text("ali")
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [ED25519, RSA]}))
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [RSA], "bob": [ED25519_BOB]}))
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
    assert sorted(os.listdir(ssh)) == ["authorized_keys", "notes.tmp"]
    assert sorted(os.listdir(sandbox / "var/lib/google")) == ["google_users"]


def test_temp_files_beside_a_file_never_written_again_go_at_the_next_start(
    sandbox: Path, run_agent, tmp_path: Path
) -> None:
    # A killed write of alice's file, whose content another pass then settled: nothing
    # writes that file again, so the next start's full pass sweeps what was left.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".authorized_keys.0badf00d.tmp").write_text("not the agent's to remove")
    with Simulator(scenario({"alice": [ED25519], "bob": [ED25519_BOB]})) as sim:
        assert run_agent("run", "--once", url=sim.url("gce")).returncode == 0
        alice = sandbox / "home/alice/.ssh"
        (alice / ".authorized_keys.0badf00d.tmp").write_text("half a key")
        (alice / ".authorized_keys.tmp").write_text("not the agent's pattern\n")
        bob = sandbox / "home/bob/.ssh"
        for name in os.listdir(bob):
            (bob / name).unlink()
        bob.rmdir()
        bob.symlink_to(elsewhere)  # never followed, not even to sweep
        result = run_agent("run", "--once", url=sim.url("gce"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(alice)) == [".authorized_keys.tmp", "authorized_keys"]
    assert (elsewhere / ".authorized_keys.0badf00d.tmp").exists()
    assert "removed 1 temp files" in result.stdout + result.stderr


def _consistent(sandbox: Path, users: list[str]) -> None:
    for user in users:
        entry = passwd_entry(sandbox, user)
        assert entry is not None, user
        home = sandbox / entry[5].lstrip("/")
        assert home.is_dir() and home.stat().st_uid == int(entry[2]), user
        assert ED25519 in (read(home / ".ssh/authorized_keys") or ""), user
    assert group_members(sandbox, SUDO) == set(users)
    assert read(sandbox / "var/lib/google/google_users") == "".join(f"{u}\n" for u in sorted(users))
    for name in ("passwd", "group", "shadow", "gshadow"):
        assert (sandbox / "etc" / name).read_text().endswith("\n")


def test_sigkill_at_random_points_of_a_big_pass_then_a_run_converges(sandbox: Path) -> None:
    users = [f"user{i:03d}" for i in range(60)]
    rng = random.Random(8)
    with Simulator(scenario({u: [ED25519] for u in users})) as sim:
        cmd = [*AGENT, "run", "--once", "--root", str(sandbox), "--metadata-url", sim.url("gce"), "--platform", "gce"]
        for _ in range(6):
            # Its own process group, killed whole: what systemd's stop does to the unit's
            # cgroup, so no orphaned useradd is still holding /etc/passwd's lock afterwards.
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            time.sleep(rng.uniform(0.2, 2.5))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    _consistent(sandbox, users)
    leftovers = [p for p in sandbox.rglob("*.tmp") if p.name.startswith(".")]
    assert leftovers == []
