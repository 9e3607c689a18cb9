"""The peer row of `nox -s bench`: Debian's google-guest-agent (Google's Go agent).

It runs exactly as the fidelity tests run it (tests/fidelity/): a fresh copy of the
cached Debian rootfs (guestsim.chroot), chrooted in private mount/PID/UTS namespaces,
inside the private network namespace of guestsim.netns where 169.254.169.254 exists and
leads to our simulator on the host's loopback.  Nothing here talks to a metadata address
from this machine's own network namespace, and nothing touches the machine's accounts:
every useradd the agent runs edits the chroot's /etc.

Figures match tools.bench.bench_ours:
- provision_s: spawn of google_guest_agent in a fresh chroot until every user's
  authorized_keys exists (median over RUNS fresh chroots).  The agent has no "once"
  mode, so this is a first boot of the daemon and includes its instance setup (host
  keys and the like) before it reaches the accounts: that is what a new VM waits for.
- processes_per_user: account tools exec'd (counting wrappers put in place of the
  chroot's own useradd, gpasswd, ... in the first run), divided by the number of users.
- reaction_ms: user00's key flipped back and forth through instance/attributes/ssh-keys
  with the daemon running, until the key line shows up in the chroot's file.
- rss_mib: VmRSS of the google_guest_agent process after the reaction runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from guestsim import Simulator
from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod
from tools.bench import COUNTED, keys_file, rss_kib, scenario, wait_until

PACKAGE = "google-guest-agent"
AGENT_BINARY = "/usr/bin/google_guest_agent"

#: Fresh chroots to provision in; each costs an unpack of the ~300 MB rootfs (seconds).
RUNS = 3

PROVISION_TIMEOUT = 180.0
REACTION_TIMEOUT = 30.0

# Where the counting wrappers log, inside the chroot.
EXEC_LOG = "/var/tmp/bench-exec.log"

# The fidelity tests' instance_configs.cfg (tests/fidelity/test_google_guest_agent.py),
# for the same reasons: the chroot shares the host's clock, so the clock-skew daemon
# (hwclock) stays off, and the tuning scripts would write machine-global IRQ and block
# queue settings.  Copied, not imported: the test module needs pytest.
INSTANCE_CONFIGS = """\
[Daemons]
clock_skew_daemon = false

[InstanceSetup]
optimize_local_ssd = false
set_multiqueue = false
"""


class PeerError(RuntimeError):
    """The peer could not be measured; the message says why."""


def bench_google(keys: list[str], changes: int, workdir: Path) -> dict[str, Any]:
    """Measure Google's agent against the same users and keys as ours (see module doc)."""
    result: dict[str, Any] = {"agent": f"{PACKAGE} (Go)"}
    missing = prerequisites()
    if missing:
        result["error"] = f"cannot run here: {missing}"
        return result
    try:
        tar = chroot_mod.ensure_rootfs_tar(log=workdir / "mmdebstrap.log")
    except (chroot_mod.ChrootError, subprocess.TimeoutExpired, OSError) as err:
        result["error"] = f"no Debian rootfs with {PACKAGE}: {str(err)[:300]}"
        return result
    try:
        _measure(tar, keys, changes, workdir, result)
    except (PeerError, chroot_mod.ChrootError, netns_mod.NetnsError) as err:
        result["error"] = (str(err) or type(err).__name__).splitlines()[0][:300]
        print(f"bench_peer: {err}", file=sys.stderr)
    return result


def prerequisites() -> str:
    """What is missing on this machine to run the peer, or "" when nothing is."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, chroot, mounts)"
    tools = chroot_mod.missing_tools() + netns_mod.missing_tools()
    if tools:
        return f"missing tools: {', '.join(tools)} (./dev setup installs them)"
    probe = f"{netns_mod.NS_PREFIX}probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return ""


def _measure(tar: Path, keys: list[str], changes: int, workdir: Path, out: dict[str, Any]) -> None:
    """Fill ``out`` with the figures (in place, so an error later keeps the version)."""
    users = [f"user{i:02d}" for i in range(len(keys))]
    times: list[float] = []
    netns_mod.sweep_stale()  # namespaces of an earlier, killed run
    with Simulator(scenario(keys)) as sim, netns_mod.MetadataNetwork(workdir / "peer-net") as net:
        net.forward_to("127.0.0.1", sim.port)
        for attempt in range(RUNS):
            counting = attempt == 0
            # The reactions are measured on the last run's daemon, which never had the
            # counting wrappers in its way (as ours: shims only in its first attempt).
            last = attempt == RUNS - 1
            with chroot_mod.unpacked(tar, workdir, hostname="bench-vm") as root:
                if attempt == 0:
                    out["agent"] = f"{PACKAGE} {installed_version(root)} (Go)"
                prepare(root, counting=counting)
                log = workdir / f"google_guest_agent.{attempt}.log"
                proc: subprocess.Popen[bytes] | None = None
                try:
                    started = time.perf_counter()
                    proc = root.spawn([AGENT_BINARY], netns=net.guest_ns, log=log)
                    first = _wait_provisioned(proc, root.root, users, log, started)
                    times.append(time.perf_counter() - started)
                    print(
                        f"bench_peer: run {attempt + 1}/{RUNS}: first keys file after {first:.2f}s, "
                        f"all {len(users)} after {times[-1]:.2f}s",
                        file=sys.stderr,
                    )
                    if counting:
                        out["processes_per_user"] = round(_count_execs(root) / len(users), 2)
                    if last:
                        out["reaction_ms"] = reaction(proc, sim, keys, users, root.root, changes, log)
                        pid = agent_pid(proc.pid)
                        if pid is None:
                            raise PeerError("google_guest_agent process not found for its RSS")
                        out["rss_mib"] = round(rss_kib(pid) / 1024, 1)
                finally:
                    if proc is not None:
                        # SIGKILLs the unshare; --kill-child takes the agent's whole PID
                        # namespace with it, and stop() waits until it is gone so the
                        # rootfs can be removed.
                        chroot_mod.stop(proc)
    out["provision_s"] = round(statistics.median(times), 3)


def installed_version(root: chroot_mod.Chroot) -> str:
    """The package version dpkg installed in the rootfs (what actually runs).

    Only a stanza whose status is exactly "install ok installed" counts (as ./dev and
    noxfile.py decide it): a removed package keeps a "deinstall ok config-files" stanza
    with its old version, and a half-installed one is not what runs.
    """
    status = root.path("/var/lib/dpkg/status")
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line[0].isspace()
        )
        if (
            fields.get("Package", "").strip() == PACKAGE
            and fields.get("Status", "").strip() == "install ok installed"
        ):
            return fields.get("Version", "?").strip()
    return "?"


def prepare(root: chroot_mod.Chroot, *, counting: bool) -> None:
    """The fidelity tests' setup, plus counting wrappers for the account tools."""
    root.write("/etc/default/instance_configs.cfg", INSTANCE_CONFIGS)
    hosts = root.read("/etc/hosts") if root.path("/etc/hosts").exists() else ""
    root.write("/etc/hosts", hosts + "169.254.169.254 metadata.google.internal\n")
    if counting:
        install_counting_wrappers(root)


def install_counting_wrappers(root: chroot_mod.Chroot) -> list[str]:
    """Put a logging shell wrapper in place of each account tool in the chroot.

    The agent finds the tools on PATH (or by absolute path), so the wrapper must sit
    where the real binary was; the real one is renamed next to it and exec'd, keeping
    its setuid bits and argv.  Only ever paths below the chroot are touched.
    """
    wrapped = []
    for name in COUNTED:
        for directory in ("/usr/sbin", "/usr/bin"):
            inside = f"{directory}/{name}"
            host = root.path(inside)
            # Resolve nothing: the rootfs's /usr/sbin and /usr/bin are real directories
            # (its /sbin and /bin are the relative usrmerge links), and a symlinked
            # tool would point into the host's tree if followed from here.
            if host.is_symlink() or not host.is_file():
                continue
            real = f"{inside}.bench-real"
            os.rename(host, root.path(real))
            root.write(inside, f'#!/bin/sh\necho {name} >> {EXEC_LOG}\nexec {real} "$@"\n', mode=0o755)
            wrapped.append(inside)
            break
    if not wrapped:
        raise PeerError("none of the account tools found in the rootfs")
    return wrapped


def _count_execs(root: chroot_mod.Chroot) -> int:
    """Account-tool starts so far, once the agent has finished its pass over the users.

    The last user's keys file can be written before that user's group changes, so the
    log is read only after it has stopped growing for a while.
    """
    path = root.path(EXEC_LOG)
    size, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 2.0:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, quiet_since = now, time.monotonic()
        time.sleep(0.1)
    names = path.read_text().split() if path.exists() else []
    # Which tools make up the figure, for whoever wonders why it is what it is.
    counts = ", ".join(f"{name} {n}" for name, n in Counter(names).most_common())
    print(f"bench_peer: account tools the Go agent exec'd: {counts or 'none'}", file=sys.stderr)
    return len(names)


def _wait_provisioned(
    proc: subprocess.Popen[bytes], root: Path, users: list[str], log: Path, started: float
) -> float:
    """Wait for every user's keys file; return when the first one appeared (s after start).

    The first file splits the agent's first-boot setup from its account work.
    """
    first: list[float] = []

    def done() -> bool:
        if proc.poll() is not None:
            raise PeerError(f"google_guest_agent exited {proc.returncode}: {_tail(log)}")
        # Any user: the Go agent walks its users in map order, which is random.
        if not first and any(keys_file(root, u).exists() for u in users):
            first.append(time.perf_counter() - started)
        return all(keys_file(root, u).exists() for u in users)

    try:
        wait_until(done, timeout=PROVISION_TIMEOUT)
    except TimeoutError:
        have = sum(keys_file(root, u).exists() for u in users)
        raise PeerError(
            f"google_guest_agent provisioned {have}/{len(users)} users in {PROVISION_TIMEOUT:.0f}s: "
            + _tail(log)
        ) from None
    return first[0] if first else 0.0


def reaction(
    proc: subprocess.Popen[bytes],
    sim: Simulator,
    keys: list[str],
    users: list[str],
    root: Path,
    changes: int,
    log: Path,
) -> dict[str, float]:
    """Flip user00's key ``changes`` times; time each until the key line is on disk.

    Only the key lines are compared: the Go agent writes the same "# Added by Google"
    marker as ours, but how it lays out the rest of the file is its own business.
    """
    samples = []
    target = keys_file(root, users[0])
    for i in range(changes):
        new_key, old_key = (keys[1], keys[0]) if i % 2 == 0 else (keys[0], keys[1])
        lines = [f"{u}:{keys[j]}" for j, u in enumerate(users)]
        lines[0] = f"{users[0]}:{new_key}"
        time.sleep(0.2)  # let the agent park in its next long poll (as for ours)
        started = time.perf_counter()
        sim.set("instance/attributes/ssh-keys", "\n".join(lines))
        try:
            wait_until(lambda: _shows(target, new_key, old_key), timeout=REACTION_TIMEOUT)  # noqa: B023
        except TimeoutError:
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            raise PeerError(
                f"change {i + 1}/{changes} not on disk after {REACTION_TIMEOUT:.0f}s (agent {state}): "
                + _tail(log)
            ) from None
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50": round(statistics.median(samples), 2),
        "p90": round(samples[max(int(len(samples) * 0.9) - 1, 0)], 2),
    }


def _shows(path: Path, new_key: str, old_key: str) -> bool:
    try:
        lines = path.read_text().splitlines()
    except OSError:  # between the agent's remove and write, or mid-rename
        return False
    return new_key in lines and old_key not in lines


def agent_pid(wrapper_pid: int) -> int | None:
    """Host PID of google_guest_agent below the ``ip netns exec``/``unshare`` we started.

    The agent is PID 1 of its PID namespace, but /proc here is the host's, so its
    process is found by walking the wrapper's descendants and matching argv[0].
    """
    pending = [wrapper_pid]
    while pending:
        pid = pending.pop()
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.decode(errors="replace") == AGENT_BINARY:
            return pid
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return None


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no agent log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty agent log)"
