"""`nox -s bench`: provisioning time, reaction time and memory, ours beside Google's agent.

Ours runs against a sandbox root with real shadow-utils; Google's Go agent
(Debian's google-guest-agent) runs chrooted in private namespaces against the
same simulator scenario (tools/bench_peer.py). Both talk only to the simulator
on loopback or inside namespaces this script creates.

Figures, for each agent:
- provision: wall time from start to all N users' authorized_keys on disk,
  and the processes it started per user;
- reaction: time from a metadata change to the new authorized_keys on disk
  (p50/p90 over repeated single-key changes, daemon running);
- rss: the daemon's resident memory after the reaction runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guestagent.entrypoints.sandbox import make_sandbox
from guestsim import Simulator

MARK = "# Added by Google"
COUNTED = ("useradd", "groupadd", "usermod", "userdel", "gpasswd", "visudo")


def make_keys(count: int, workdir: Path) -> list[str]:
    keys = []
    for i in range(count):
        path = workdir / f"k{i}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"user{i}", "-f", str(path)], check=True
        )
        keys.append(path.with_suffix(".pub").read_text().strip())
    return keys


def scenario(keys: list[str]) -> dict[str, Any]:
    return {"users": [{"name": f"user{i:02d}", "keys": [k]} for i, k in enumerate(keys)]}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.0005) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(interval)
    return time.perf_counter() - started


def counting_shims(workdir: Path) -> tuple[Path, Path]:
    """A PATH directory whose account tools log each start, then exec the real one."""
    shim_dir = workdir / "shims"
    shim_dir.mkdir(parents=True)
    log = workdir / "exec.log"
    for name in COUNTED:
        real = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if real is None:
            continue
        shim = shim_dir / name
        shim.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return shim_dir, log


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def keys_file(root: Path, user: str) -> Path:
    return root / "home" / user / ".ssh/authorized_keys"


def bench_ours(keys: list[str], changes: int, workdir: Path) -> dict[str, Any]:
    users = [f"user{i:02d}" for i in range(len(keys))]
    agent = [sys.executable, "-m", "guestagent"]
    result: dict[str, Any] = {"agent": "guestagent (this project)"}
    with Simulator(scenario(keys)) as sim:
        url = sim.url("gce")
        times = []
        for attempt in range(3):
            root = Path(make_sandbox(str(workdir / f"ours{attempt}")))
            shim_dir, log = counting_shims(workdir / f"shim{attempt}") if attempt == 0 else (None, None)
            env = dict(os.environ)
            if shim_dir is not None:
                env["PATH"] = f"{shim_dir}:{env['PATH']}"
            started = time.perf_counter()
            done = subprocess.run(
                [*agent, "run", "--once", "--root", str(root), "--metadata-url", url],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            times.append(time.perf_counter() - started)
            if done.returncode != 0 or not all(keys_file(root, u).exists() for u in users):
                raise SystemExit(f"our agent failed: {done.stderr[-2000:]}")
            if log is not None:
                result["processes_per_user"] = round(len(log.read_text().split()) / len(users), 2)
        result["provision_s"] = round(statistics.median(times), 3)

        root = Path(make_sandbox(str(workdir / "ours-daemon")))
        daemon = subprocess.Popen(
            [*agent, "daemon", "--root", str(root), "--metadata-url", url, "--log-level", "WARNING"],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: all(keys_file(root, u).exists() for u in users), timeout=60)
            result["reaction_ms"] = reaction(sim, keys, users, root, changes)
            result["rss_mib"] = round(rss_kib(daemon.pid) / 1024, 1)
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
    return result


def reaction(sim: Simulator, keys: list[str], users: list[str], root: Path, changes: int) -> dict[str, float]:
    """Change user00's key back and forth; time until the file on disk shows it."""
    samples = []
    target = keys_file(root, users[0])
    for i in range(changes):
        new_key = keys[1] if i % 2 == 0 else keys[0]
        lines = [f"{u}:{keys[j]}" for j, u in enumerate(users)]
        lines[0] = f"{users[0]}:{new_key}"
        expected = f"{MARK}\n{new_key}\n"
        time.sleep(0.2)  # let the agent park in its next long poll
        started = time.perf_counter()
        sim.set("instance/attributes/ssh-keys", "\n".join(lines))
        wait_until(lambda: target.read_text() == expected, timeout=30)  # noqa: B023 - evaluated at once
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50": round(statistics.median(samples), 2),
        "p90": round(samples[int(len(samples) * 0.9) - 1], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--no-peer", action="store_true", help="skip Google's agent")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark creates users inside sandbox roots and namespaces: run it as root")
    rows = []
    with tempfile.TemporaryDirectory(prefix="guestagent-bench-") as tmp:
        workdir = Path(tmp)
        keys = make_keys(args.users, workdir)
        rows.append(bench_ours(keys, args.changes, workdir))
        if not args.no_peer:
            from tools.bench_peer import bench_google

            rows.append(bench_google(keys, args.changes, workdir))
    print(f"\n{args.users} users, {args.changes} single-key changes\n")
    # As wide as the longest name: the peer's carries its Debian version.
    width = max(34, *(len(row["agent"]) for row in rows))
    header = (
        f"{'agent':{width}} {'provision':>10} {'proc/user':>10} {'react p50':>10} {'react p90':>10} "
        f"{'RSS':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['agent']:{width}} {row['error']}")
            continue
        print(
            f"{row['agent']:{width}} {row['provision_s']:>9.2f}s {row.get('processes_per_user', '?'):>10} "
            f"{row['reaction_ms']['p50']:>8.1f}ms {row['reaction_ms']['p90']:>8.1f}ms "
            f"{row['rss_mib']:>6.1f}MiB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
