"""`guestagent daemon`: live changes, key expiry, outages and a prompt SIGTERM."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guestsim import Simulator
from tests.integration.conftest import group_members, passwd_entry, read, scenario, ssh_keys_value, wait_until
from tests.keys import ED25519, ED25519_BOB, RSA

pytestmark = [pytest.mark.root, pytest.mark.slow]
MARK = "# Added by Google"

# Time bounds here must hold on a loaded 2-core CI machine, so each one is generous and
# instead sits far below what it guards against: the agent's long poll asks the simulator
# to hold it POLL_TIMEOUT seconds (its read timeout is 10 s more), systemd kills a unit
# that has not stopped after 90 s. An idle machine does all of these in well under 2 s.
POLL_TIMEOUT = 60
PROMPT = 15.0
# What a SIGTERM'd daemon may take before the test kills it: long enough that a slow but
# clean exit is measured (and fails the bound above) instead of being cut short.
STOP_WAIT = 60.0
# The agent's read timeout for a plain (not long-poll) GET.
READ_TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_live_metadata_change_reaches_the_files(sandbox: Path, start_daemon) -> None:
    keys = sandbox / "home/alice/.ssh/authorized_keys"
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: read(keys) == f"{MARK}\n{ED25519}\n", timeout=20)

        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [RSA], "bob": [ED25519_BOB]}))
        took = wait_until(lambda: read(keys) == f"{MARK}\n{RSA}\n", timeout=2 * PROMPT)
        wait_until(lambda: read(sandbox / "home/bob/.ssh/authorized_keys") == f"{MARK}\n{ED25519_BOB}\n")
        assert group_members(sandbox, "google-sudoers") == {"alice", "bob"}

        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"bob": [ED25519_BOB]}))
        wait_until(lambda: read(keys) == "", timeout=10)
        wait_until(lambda: group_members(sandbox, "google-sudoers") == {"bob"})
        assert daemon.proc.poll() is None
    # released by the pending long poll, not by its timeout
    assert took < PROMPT < POLL_TIMEOUT, f"reaction took {took:.3f}s"


def test_key_expiring_while_running_is_removed_without_a_metadata_event(sandbox: Path, start_daemon) -> None:
    # Far enough ahead that a slow first pass still installs the key before it expires.
    expire = (datetime.now(UTC) + timedelta(seconds=PROMPT)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    scen = scenario({"bob": [ED25519_BOB]})
    scen["users"].append({"name": "alice", "keys": [{"key": ED25519, "expire_on": expire}]})
    keys = sandbox / "home/alice/.ssh/authorized_keys"
    with Simulator(scen) as sim:
        start_daemon(sim.url("gce"))
        wait_until(lambda: MARK in (read(keys) or ""), timeout=PROMPT)
        requests_before = len(sim.requests())
        wait_until(lambda: read(keys) == "", timeout=3 * PROMPT)
        removed_at = datetime.now(UTC)
        wait_until(lambda: group_members(sandbox, "google-sudoers") == {"bob"})
        # no new metadata was served to trigger it: at most the long poll already pending returned
        # (the PUT of guest-agent/sshable after the pass is the agent writing, not reading)
        reads = [r for r in sim.requests()[requests_before:] if r["method"] == "GET"]
        assert len(reads) <= 1
    # at its expiry time, by the daemon's own timer: the long poll pending since the first
    # pass would not have returned before POLL_TIMEOUT
    late = removed_at - datetime.strptime(expire, "%Y-%m-%dT%H:%M:%S%z")
    assert late < timedelta(seconds=PROMPT) < timedelta(seconds=POLL_TIMEOUT), late


def _long_polls(sim: Simulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests(method="GET") if r["query"].get("wait_for_change") == "true"]


def test_sigterm_during_a_pending_long_poll_exits_long_before_the_poll_would_return(
    sandbox: Path, start_daemon
) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: "watching for metadata changes" in daemon.log(), timeout=60)
        # the daemon is now parked in a long poll the simulator holds for POLL_TIMEOUT
        wait_until(lambda: sim.held_polls() == 1, timeout=30)
        took = daemon.stop(timeout=STOP_WAIT)
        # the daemon hung up on the poll; the simulator never answered it
        wait_until(lambda: any(r["outcome"] == "client-closed" for r in _long_polls(sim)), timeout=30)
        polls = _long_polls(sim)
    assert daemon.proc.returncode == 0
    assert polls[-1]["outcome"] == "client-closed"
    assert int(polls[-1]["query"]["timeout_sec"]) == POLL_TIMEOUT
    assert took < PROMPT, f"exit took {took:.1f}s with a {POLL_TIMEOUT}s long poll pending"


def test_server_down_at_start_then_up_provisions_without_restart(sandbox: Path, start_daemon) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/computeMetadata/v1/"
    daemon = start_daemon(url)
    time.sleep(2.0)
    assert passwd_entry(sandbox, "alice") is None
    with Simulator(scenario({"alice": [ED25519]}), port=port):
        wait_until(lambda: read(sandbox / "home/alice/.ssh/authorized_keys") is not None, timeout=15)
    assert "waiting for metadata: metadata server unreachable" in daemon.log()
    # one line per kind of failure, not one per retry (about five retries happened)
    assert daemon.log().count("waiting for metadata") <= 2


@pytest.mark.parametrize("kind", ["status", "html", "truncate", "reset"])
def test_watch_survives_a_bad_server_and_recovers(sandbox: Path, start_daemon, kind: str) -> None:
    keys = sandbox / "home/alice/.ssh/authorized_keys"
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        # The watch starts once the pass after READY (the RSA host key, seconds under load)
        # is over; a fault added before its poll is held could meet only the key's PUTs.
        wait_until(lambda: read(keys) is not None and sim.held_polls() == 1, timeout=60)
        params = {"status": 500} if kind == "status" else {}
        sim.add_fault("*", kind=kind, **params)
        # The poll already held was accepted before the fault: an unrelated change releases it,
        # and every request after that meets the fault (a truncated answer only once the
        # server has one to give: that poll is held until the keys change).
        sim.set("instance/attributes/unrelated", "1")
        wait_until(lambda: sim.faults()[0]["hits"] >= 1, timeout=10)
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [RSA]}))
        wait_until(lambda: sim.faults()[0]["hits"] >= 2, timeout=10)
        time.sleep(1.0)
        assert read(keys) == f"{MARK}\n{ED25519}\n"  # nothing parsed from a bad answer
        sim.clear_faults()
        wait_until(lambda: read(keys) == f"{MARK}\n{RSA}\n", timeout=10)
        assert daemon.proc.poll() is None
        assert "retrying with backoff" in daemon.log()


def test_a_black_holed_poll_does_not_hold_shutdown(sandbox: Path, start_daemon) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: "watching for metadata changes" in daemon.log(), timeout=20)
        sim.add_fault("*", kind="blackhole")
        sim.set("instance/attributes/unrelated", "1")
        wait_until(lambda: sim.faults()[0]["hits"] >= 1, timeout=30)
        took = daemon.stop(timeout=STOP_WAIT)
    assert daemon.proc.returncode == 0
    # the held poll's read timeout is POLL_TIMEOUT + 10 s
    assert took < PROMPT, f"exit took {took:.1f}s"


def test_sigterm_while_the_first_request_hangs_exits_promptly(sandbox: Path, start_daemon) -> None:
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        sim.add_fault("*", kind="blackhole")
        daemon = start_daemon(sim.url("gce"))
        wait_until(lambda: sim.faults()[0]["hits"] >= 1, timeout=30)  # the first GET is now held
        took = daemon.stop(timeout=STOP_WAIT)
    assert daemon.proc.returncode == 0
    # Not waiting out the GET's READ_TIMEOUT is the property, so this bound stays under it;
    # no pass is under way, the exit is the interpreter's teardown (~0.1 s idle).
    assert took < READ_TIMEOUT - 2, f"exit took {took:.1f}s"


def test_a_swallowed_guest_attribute_write_does_not_hold_shutdown(sandbox: Path, start_daemon) -> None:
    """SIGTERM waits for the pass under way; a PUT the server never answers keeps it short."""
    with Simulator(scenario({"alice": [ED25519]})) as sim:
        daemon = start_daemon(sim.url("gce"))
        # After READY, the RSA host key is made and published: that pass is over first.
        wait_until(lambda: "no host key left to make" in daemon.log(), timeout=60)
        sim.add_fault("instance/guest-attributes/*", kind="blackhole", method="PUT")
        sim.set("instance/attributes/ssh-keys", ssh_keys_value({"alice": [RSA]}))
        wait_until(lambda: sim.faults()[0]["hits"] >= 1, timeout=30)  # the sshable PUT is held
        took = daemon.stop(timeout=STOP_WAIT)
        assert read(sandbox / "home/alice/.ssh/authorized_keys") == f"{MARK}\n{RSA}\n"
    assert daemon.proc.returncode == 0
    # the held PUT never answers: only the write timeout (1 s) ends the pass SIGTERM waits for
    assert took < PROMPT, f"exit took {took:.1f}s"
