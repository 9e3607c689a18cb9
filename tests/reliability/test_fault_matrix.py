"""Every simulator fault, against `run --once` and the daemon, on every platform of the table.

What each case holds the agent to:

- never a traceback;
- nothing applied while the fault lasts (no partial snapshot, nothing from garbage: the
  user and key a garbage body names never appear), nothing already provisioned removed;
- one log line per state change, not one per retry (the failure lines are counted: the
  same line twice in a row is a retry that was logged);
- converged to the metadata of the moment within a generous bound after the fault ends.

`run --once`: the whole matrix, every fault on every platform, each case in its own clone
of a provisioned sandbox and its own simulator, all side by side (their time goes on
timeouts and backoff, not on the CPU). Each run is the real CLI forked from the zygote of
conftest.py (an interpreter that imported the agent once), which saves ~0.5 s of CPU a run.

Platforms are the rows of conftest.PLATFORMS: GCE, EC2, NoCloud, OpenStack, DigitalOcean
and Azure. The partial faults go where a snapshot takes several requests (EC2's walk,
NoCloud's and OpenStack's files): one of them fails, is cut short (also the 404 that says a
file is absent) or is garbage, and the rest answer; the snapshot must then be all or
nothing. On Azure every fault also spoils the WireServer (same host and port).

The daemon: a reduced set per platform, one daemon going through the faults one after
the other: down at start (the daemon starts first, the simulator later on the same port),
then down mid-run (suspend/resume), 503 and a garbage body everywhere, the rest spread
over the platforms (GCE flavor, reset and flap; EC2 truncate, html and 429; NoCloud and
OpenStack reset, truncate and html; DigitalOcean truncate, 429 and flap; Azure, polling
IMDS every 0.5 s here, reset, truncate and html). Latency and black holes are left out of the daemon set: a held
long poll is only timed out after 70 s; the run-once matrix covers both on every platform.
"""

from __future__ import annotations

import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from guestsim import free_port
from tests.integration.conftest import AgentDaemon, scenario, wait_until
from tests.reliability.conftest import (
    IDS,
    PLATFORMS,
    PlatformCase,
    Zygote,
    ZygoteRun,
    accounts_state,
    check_converged,
    clone,
    ed25519,
    failure_lines,
    key_body,
    read,
    repeated_lines,
    url_of,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALICE, BOB, BOB2, CAROL = (ed25519(n) for n in ("fm-alice", "fm-bob", "fm-bob-2", "fm-carol"))
MALLORY = ed25519("fm-mallory")
BEFORE = {"alice": [ALICE], "bob": [BOB]}
AFTER = {"alice": [ALICE], "bob": [BOB, BOB2], "carol": [CAROL]}
GARBAGE = '{"instance": {"id": "66", "attributes": {"ssh-keys": "mallory:' + MALLORY  # cut short
GARBAGE_TYPED = '["mallory", "' + MALLORY + '", {"ssh-keys": 1}]'
USER_DATA = "#!/bin/sh\n" + "echo 'user data, long enough to be cut short'\n" * 20
# Generous: a loaded 2-core CI box, backoff capped at 5 s (run) or 1 s (daemon).
CONVERGE_WITHIN = 60.0


@attrs.frozen
class Fault:
    name: str
    kind: str  # a simulator fault kind, or "down" (nothing listens until the simulator starts)
    params: dict[str, Any] = attrs.field(factory=dict)
    only: tuple[str, ...] = ()  # platforms it applies to (empty: all)
    # Heals by itself (a count-limited fault): how many requests it spoils.
    count: int | None = None
    # Spoils only part of a snapshot's requests (the platform's partial_pattern).
    partial: bool = False
    # The scenario has user data (where partial_pattern is the user data file, the spoiled
    # answer is then the file's own; without it, the 404 that says there is none).
    user_data: bool = False

    def applies(self, case: PlatformCase) -> bool:
        if self.kind == "flavor":
            return case.flavor
        if self.partial:
            return case.partial_pattern is not None
        return not self.only or case.name in self.only


FAULTS = (
    Fault("down-at-start", "down"),
    Fault("status-500", "status", {"status": 500}),
    Fault("status-503", "status", {"status": 503}),
    Fault("status-429", "status", {"status": 429}),
    # Beyond every read timeout (GCE and NoCloud 10 s, EC2 5 s); once, then answered.
    Fault("latency", "latency", {"delay": 12.0, "method": "GET"}, count=1),
    Fault("reset", "reset"),
    Fault("truncate", "truncate", {"fraction": 0.5}),
    Fault("html-200", "html"),
    Fault("flavor-missing", "flavor", {"flavor": None}),
    Fault("flavor-wrong", "flavor", {"flavor": "Amazon"}),
    Fault("blackhole", "blackhole", {"method": "GET"}, count=1),
    Fault("flap", "flap", {"period": 0.7, "down": "status", "status": 503}),
    Fault("garbage-json", "body", {"body": GARBAGE}),
    Fault("garbage-typed-json", "body", {"body": GARBAGE_TYPED}),
    # Where one snapshot takes several requests (EC2's walk, NoCloud's files): only some fail.
    Fault("partial-503", "status", {"status": 503}, partial=True),
    Fault("partial-reset", "reset", partial=True),
    Fault("partial-truncate", "truncate", {"fraction": 0.3}, partial=True),
    Fault("partial-truncate-data", "truncate", {"fraction": 0.3}, partial=True, user_data=True),
    Fault("partial-garbage", "body", {"body": GARBAGE}, partial=True),
)


def faulted(sim: Any, fid: int) -> int:
    return sum(1 for r in sim.requests() if r.get("fault") == fid)


def _no_garbage(root: Path, text: str) -> list[str]:
    problems = []
    if "mallory:" in (read(root / "etc/passwd") or ""):
        problems.append("a user named by a garbage body was created")
    for path in root.rglob("authorized_keys"):
        if key_body(MALLORY) in path.read_text():
            problems.append(f"a key from a garbage body was installed in {path}")
    if key_body(MALLORY) in text:
        problems.append("key material of the garbage body reached the log")
    return problems


# ---------------------------------------------------------------- run --once


@attrs.frozen
class CaseResult:
    problems: tuple[str, ...]  # held, converged, nothing lost, nothing from garbage
    log_problems: tuple[str, ...]  # one line per state change
    seconds: float


def _agent(zygote: Zygote, root: Path, case: PlatformCase, url: str, work: Path, name: str) -> ZygoteRun:
    argv = [
        "run",
        "--once",
        "--root",
        str(root),
        "--metadata-url",
        url,
        "--platform",
        case.name,
        "--wait",
        "90",
    ]
    return zygote.spawn(argv, work / f"{name}.err")


def run_once_case(zygote: Zygote, case: PlatformCase, fault: Fault, template: Path, work: Path) -> CaseResult:
    """One fault against one `run --once`, in a clone of a provisioned root.

    The fault is on while the run starts; it is taken away once it spoiled a few requests
    (or, for "down", the simulator starts a few retries late), and the same run must then
    converge. A fault that leaves a usable snapshot (a flap's up phase, a 200 with a body
    of garbage where the platform reads it as data, or as an entry it holds on) may let
    the run finish early: then with the whole snapshot or nothing, and the next run converges.
    """
    started = time.monotonic()
    root = clone(template, work / "root")
    accounts = set(case.accounts(AFTER))
    before = accounts_state(root, case, accounts)
    sim = None
    fid = None
    pattern = case.partial_pattern if fault.partial else "*"
    metadata = scenario(AFTER, user_data=USER_DATA) if fault.user_data else scenario(AFTER)
    try:
        if fault.kind == "down":
            port = free_port()
            url = case.url(port)
        else:
            sim = case.start(metadata)
            url = url_of(case, sim)
            fid = sim.add_fault(
                pattern, fault.kind, platform=case.sim_platform, count=fault.count, **fault.params
            )
        proc = _agent(zygote, root, case, url, work, "run")
        try:
            if fault.kind == "down":
                # A few failed attempts (backoff 0.5, 1, 2 s...) before anything listens.
                wait_until(
                    lambda: "retrying" in (read(work / "run.err") or "") or proc.poll() is not None,
                    timeout=60,
                )
                time.sleep(3.5)
            else:
                assert sim is not None and fid is not None
                need = fault.count or 3
                wait_until(
                    lambda: faulted(sim, fid) >= need or proc.poll() is not None, timeout=60, interval=0.05
                )
            during = accounts_state(root, case, accounts)
            finished_early = proc.poll() is not None
            if fault.kind == "down":
                sim = case.start(metadata, port=port)
            elif fault.count is None:
                sim.remove_fault(fid)
            recovered = time.monotonic()
            code = proc.wait(timeout=CONVERGE_WITHIN + 60)
            took = time.monotonic() - recovered
        finally:
            if proc.poll() is None:
                proc.kill()
        accepted = finished_early and code == 0 and fault.kind in ("body", "flap")
        if accepted:
            rerun = _agent(zygote, root, case, url_of(case, sim), work, "rerun")
            rerun_code = rerun.wait(timeout=CONVERGE_WITHIN + 60)
    finally:
        if sim is not None:
            sim.stop()
    stdout, stderr = proc.stdout, proc.stderr
    if accepted:
        stdout += rerun.stdout
        stderr += rerun.stderr
    problems = []
    if "Traceback" in stderr + stdout:
        problems.append("traceback:\n" + stderr[-3000:])
    if code != 0 or (accepted and rerun_code != 0):
        problems.append(f"exit {code}:\n{stdout[-1500:]}{stderr[-1500:]}")
    after = accounts_state(root, case, accounts)
    if during != before and not (fault.kind in ("body", "flap") and during == after):
        problems.append(f"changed while the fault lasted: {before} -> {during}")
    if took > CONVERGE_WITHIN:
        problems.append(f"took {took:.0f}s after recovery")
    try:
        check_converged(root, case, AFTER)
    except AssertionError as exc:
        problems.append(f"not converged: {exc}")
    for account, keys in before["keys"].items():
        lost = set(keys) - set(after["keys"][account])
        if lost:
            problems.append(f"{account} lost {len(lost)} provisioned keys")
    problems += _no_garbage(root, stdout + stderr)
    log_problems = []
    if repeated_lines(stderr):
        lines = failure_lines(stderr)
        log_problems.append(f"{len(lines)} failure lines for one state change (one per retry): {lines[:3]}")
    if fault.kind != "flap" and not finished_early and not failure_lines(stderr):
        log_problems.append("the failure was never logged")
    tag = f"{case.name}/{fault.name}"
    return CaseResult(
        tuple(f"{tag}: {p}" for p in problems),
        tuple(f"{tag}: {p}" for p in log_problems),
        time.monotonic() - started,
    )


# ---------------------------------------------------------------- the daemon

DAEMON_FAULTS: dict[str, tuple[str, ...]] = {
    "gce": ("down-mid-run", "status-503", "garbage-json", "flavor-missing", "reset", "flap"),
    "ec2": ("down-mid-run", "status-503", "garbage-json", "truncate", "html-200", "status-429"),
    "nocloud": ("down-mid-run", "status-503", "garbage-json", "reset", "truncate", "html-200"),
    "openstack": ("down-mid-run", "status-503", "garbage-json", "reset", "truncate", "html-200"),
    "digitalocean": ("down-mid-run", "status-503", "garbage-json", "truncate", "status-429", "flap"),
    # IMDS and the WireServer share the simulator's port: every fault spoils both.
    "azure": ("down-mid-run", "status-503", "garbage-json", "reset", "truncate", "html-200"),
}
# A platform added to the table without a set of its own gets this one.
DAEMON_DEFAULT = ("down-mid-run", "status-503", "garbage-json", "reset", "truncate", "html-200")
# Down at start is every daemon's first phase; this is the server going away later.
BY_FAULT = {f.name: f for f in FAULTS} | {"down-mid-run": Fault("down-mid-run", "down")}


def _phase_users(phase: int) -> dict[str, list[str]]:
    users = {k: list(v) for k, v in AFTER.items()}
    for i in range(phase + 1):
        users[f"phase{i}"] = [ed25519(f"fm-phase-{i}")]
    return users


def daemon_sequence(case: PlatformCase, template: Path, work: Path) -> CaseResult:
    """One daemon through the platform's faults one after the other; each phase changes
    metadata while the fault lasts (a new user, or a new key for the default user)."""
    started = time.monotonic()
    root = clone(template, work / "root")
    accounts = set(case.accounts(_phase_users(10)))
    problems: list[str] = []
    log_problems: list[str] = []
    # Down at start: the daemon is up before anything listens on its metadata port.
    port = free_port()
    daemon = AgentDaemon(root, case.url(port), "--platform", case.name, log=work / "daemon.log")
    sim = None
    try:
        wait_until(lambda: "waiting for metadata" in daemon.log(), timeout=90)
        time.sleep(2.0)  # several retries (backoff capped at 1 s)
        if accounts_state(root, case, accounts) != accounts_state(template, case, accounts):
            problems.append("down-at-start: changed before the server answered")
        sim = case.start(scenario(AFTER), port=port)
        wait_until(lambda: "first pass done" in daemon.log(), timeout=90)
        wait_until(lambda: _converged(root, case, AFTER), timeout=CONVERGE_WITHIN)
        if repeated_lines(daemon.log()):
            log_problems.append(f"down-at-start: logged once per retry: {failure_lines(daemon.log())[:4]}")
        ping = 0
        for phase, name in enumerate(DAEMON_FAULTS.get(case.name, DAEMON_DEFAULT)):
            fault = BY_FAULT[name]
            users = _phase_users(phase)
            mark = len(daemon.log())
            before = accounts_state(root, case, accounts)
            if fault.kind == "down":
                sim.suspend()
                time.sleep(2.5)  # refused connections, retried with backoff (capped at 1 s)
                case.apply(sim, scenario(users))
                time.sleep(0.5)
                during = accounts_state(root, case, accounts)
                sim.resume()
            else:
                fid = sim.add_fault("*", fault.kind, platform=case.sim_platform, **fault.params)
                ping = _spoil(sim, case, fid, 2, ping)
                case.apply(sim, scenario(users))
                ping = _spoil(sim, case, fid, faulted(sim, fid) + 2, ping)
                during = accounts_state(root, case, accounts)
                sim.remove_fault(fid)
            # A flapping server answers now and then: the change may come through in an up phase.
            if during != before and not (fault.kind == "flap" and _converged(root, case, users)):
                problems.append(f"{name}: changed while the fault lasted: {before} -> {during}")
            try:
                wait_until(lambda users=users: _converged(root, case, users), timeout=CONVERGE_WITHIN)
            except AssertionError:
                problems.append(f"{name}: not converged {CONVERGE_WITHIN:.0f}s after the fault ended")
            after = accounts_state(root, case, accounts)
            for account, keys in before["keys"].items():
                if set(keys) - set(after["keys"][account]):
                    problems.append(f"{name}: {account} lost provisioned keys")
            phase_log = daemon.log()[mark:]
            if repeated_lines(phase_log):
                log_problems.append(
                    f"{name}: a failure logged once per retry: {failure_lines(phase_log)[:4]}"
                )
            if not failure_lines(phase_log) and fault.kind != "flap":
                log_problems.append(f"{name}: the failure was never logged")
        if daemon.proc.poll() is not None:
            problems.append("the daemon died")
    finally:
        daemon.stop()
        if sim is not None:
            sim.stop()
    log = daemon.log()
    if "Traceback" in log:
        problems.append("traceback in the daemon log:\n" + log[-3000:])
    problems += _no_garbage(root, log)
    return CaseResult(
        tuple(f"{case.name}/daemon: {p}" for p in problems),
        tuple(f"{case.name}/daemon: {p}" for p in log_problems),
        time.monotonic() - started,
    )


def _spoil(sim: Any, case: PlatformCase, fid: int, requests: int, ping: int) -> int:
    """Wait until the fault spoiled `requests` requests. A long poll that was held before
    the fault came (or one the fault lets through to be spoiled only in its answer: a
    flavor, a cut body) waits for a change: make one nobody acts on, now and then."""
    deadline = time.monotonic() + 60
    while faulted(sim, fid) < requests:
        assert time.monotonic() < deadline, f"the fault spoiled {faulted(sim, fid)} of {requests} requests"
        if case.name == "gce":
            ping += 1
            sim.set("instance/attributes/ping", str(ping), platform="gce")
        time.sleep(0.3)
    return ping


def _converged(root: Path, case: PlatformCase, users: dict[str, list[str]]) -> bool:
    try:
        check_converged(root, case, users)
    except (AssertionError, FileNotFoundError):
        return False
    return True


# ---------------------------------------------------------------- running it all once


@attrs.frozen
class Matrix:
    run_once: dict[str, dict[str, CaseResult]]  # platform -> fault -> result
    daemon: dict[str, CaseResult]  # platform -> result


# Cases side by side: most of their time is backoff and timeouts, not CPU.
PARALLEL = 12


@pytest.fixture(scope="module")
def matrix(provisioned, zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    """Everything once, side by side: the daemons and every run --once case."""
    work = tmp_path_factory.mktemp("fault-matrix")
    templates = {case.name: provisioned(case, BEFORE) for case in PLATFORMS}

    def folder(*parts: str) -> Path:
        path = work.joinpath(*parts)
        path.mkdir(parents=True)
        return path

    with ThreadPoolExecutor(max_workers=len(PLATFORMS)) as daemons, ThreadPoolExecutor(PARALLEL) as runs:
        daemon_futures = {
            case.name: daemons.submit(
                daemon_sequence, case, templates[case.name], folder(case.name, "daemon")
            )
            for case in PLATFORMS
        }
        run_futures = {
            (case.name, fault.name): runs.submit(
                run_once_case, zygote, case, fault, templates[case.name], folder(case.name, fault.name)
            )
            for case in PLATFORMS
            for fault in FAULTS
            if fault.applies(case)
        }
        run_once: dict[str, dict[str, CaseResult]] = {case.name: {} for case in PLATFORMS}
        for (platform, fault_name), future in run_futures.items():
            run_once[platform][fault_name] = _result(future, f"{platform}/{fault_name}")
        return Matrix(
            run_once, {name: _result(future, f"{name}/daemon") for name, future in daemon_futures.items()}
        )


def _result(future: Future[CaseResult], tag: str) -> CaseResult:
    """A case that could not even run (a wait that timed out, say) is that case's problem."""
    try:
        return future.result()
    except Exception as exc:
        return CaseResult(
            (f"{tag}: {exc.__class__.__name__}: {exc}\n{traceback.format_exc()[-1500:]}",), (), 0.0
        )


@pytest.mark.parametrize("platform", IDS)
def test_run_once_holds_then_converges_through_every_fault(matrix: Matrix, platform: str) -> None:
    problems = [p for result in matrix.run_once[platform].values() for p in result.problems]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("platform", IDS)
def test_run_once_logs_one_line_per_state_change(matrix: Matrix, platform: str) -> None:
    problems = [p for result in matrix.run_once[platform].values() for p in result.log_problems]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("platform", IDS)
def test_daemon_holds_then_converges_through_faults(matrix: Matrix, platform: str) -> None:
    result = matrix.daemon[platform]
    assert not result.problems, "\n".join(result.problems)


@pytest.mark.parametrize("platform", IDS)
def test_daemon_logs_one_line_per_state_change(matrix: Matrix, platform: str) -> None:
    result = matrix.daemon[platform]
    assert not result.log_problems, "\n".join(result.log_problems)
