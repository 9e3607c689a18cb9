"""`nox -s bench`: ours beside Google's Go agent, same machine, same scenario, interleaved.

Every agent runs in a fresh Debian chroot in private namespaces against its own
simulator (tools/bench_guest.py): ours as the .deb lays it out, on Debian's
/usr/bin/python3 with Debian's python3-requests, attr and pyroute2; Google's
agent is Debian's google-guest-agent.  Runs alternate between the agents (ours
first in even runs, theirs first in odd ones), so a load change on the machine
hits both.  Figures are medians over the runs, with min-max.

1. provisioning: N users (one key each) and 3 forwarded IPs, from the agent's
   exec (kernel process events) to the last authorized_keys on disk (inotify);
   processes it forked (process events: every fork, no PATH tricks); beside a
   shell floor that runs only the same useradd per user.
2. reaction: one key changed in the simulator until the new line is on disk,
   p50/p95 over all trials (both daemons up, trials alternating), and how many
   authorized_keys files each agent rewrote for that one change.
3. footprint of the settled daemon at N=50: RSS, PSS, anonymous memory
   (/proc/PID/smaps_rollup), beside python3 alone and python3 + requests in the
   same chroot; CPU seconds and metadata requests over an idle window.
4. exec to the first metadata request (the simulator's request log).
5. boot to SSH in a TCG guest (tools/bench_boot.py): no agent (two floors), ours, Google's,
   cloud-init.

Writes a JSON file and a PNG chart (paths printed).  Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools import bench_guest as bg
from tools.bench_peer import GO, dpkg_version

DEFAULT_OUT = Path("build/bench")
# The table's columns: ours, the --baseline tree's agent, Google's, the floors.
DAEMONS = ("ours", "base", "go")
AGENT_COLUMNS = (*DAEMONS, "floor")


def _failures() -> tuple[type[BaseException], ...]:
    from guestsim import chroot as chroot_mod
    from guestsim import netns as netns_mod

    return (bg.BenchError, chroot_mod.ChrootError, netns_mod.NetnsError, TimeoutError, OSError)


FAILURES = _failures()


# -- statistics -------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    """Median and min-max of the runs, and the samples themselves."""
    clean = [v for v in values if v is not None]
    if not clean:
        return {"median": None, "min": None, "max": None, "n": 0, "samples": []}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
        "samples": clean,
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p95 of 40 trials is the 38th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# -- the phases -------------------------------------------------------------------------


def provisioning(
    kinds: list[bg.AgentKind], keys: list[str], runs: int, tar: Path, workdir: Path
) -> dict[str, list[dict[str, Any]]]:
    """``runs`` fresh first boots per agent with len(keys) users, alternating the order."""
    out: dict[str, list[dict[str, Any]]] = {k.key: [] for k in kinds}
    for run in range(runs):
        order = kinds if run % 2 == 0 else list(reversed(kinds))
        for kind in order:
            where = workdir / f"prov-{len(keys)}-{run}-{kind.key}"
            try:
                with bg.guest(kind, keys, tar, where) as g:
                    figures = g.provision(where / "procs.log")
            except FAILURES as err:
                bg.log(f"N={len(keys)} run {run + 1}/{runs} {kind.label}: FAILED {err}")
                out.setdefault("errors", []).append({"agent": kind.key, "run": run, "error": str(err)})
                _rmtree(where)
                continue
            out[kind.key].append(figures)
            bg.log(
                f"N={len(keys)} run {run + 1}/{runs} {kind.label}: {figures['provision_s']:.2f}s, "
                f"{figures['processes']} processes, first request "
                f"{_fmt(figures['first_request_ms'], '.0f')} ms"
            )
            _rmtree(where)
    return out


def steady(
    kinds: list[bg.AgentKind],
    keys: list[str],
    runs: int,
    trials: int,
    idle: float,
    tar: Path,
    workdir: Path,
) -> dict[str, Any]:
    """Both daemons up at N users (and the poll floor): reaction trials alternating, memory,
    then (last run) an idle window."""
    result: dict[str, Any] = {
        k.key: {"reaction_ms": [], "rewritten": [], "memory": [], "provision": []} for k in kinds
    }
    floors: dict[str, list[dict[str, float]]] = {"python3": [], "python3+requests": []}
    for run in range(runs):
        order = kinds if run % 2 == 0 else list(reversed(kinds))
        try:
            _steady_run(run, runs, order, keys, trials, idle, tar, workdir, result, floors)
        except FAILURES as err:
            bg.log(f"steady run {run + 1}/{runs}: FAILED {err}")
            result.setdefault("errors", []).append({"run": run, "error": str(err)})
        for kind in order:
            _rmtree(workdir / f"steady-{run}-{kind.key}")
    result["floors"] = floors
    return result


def _steady_run(
    run: int,
    runs: int,
    order: list[bg.AgentKind],
    keys: list[str],
    trials: int,
    idle: float,
    tar: Path,
    workdir: Path,
    result: dict[str, Any],
    floors: dict[str, list[dict[str, float]]],
) -> None:
    with contextlib.ExitStack() as stack:
        guests = []
        for kind in order:
            where = workdir / f"steady-{run}-{kind.key}"
            g = stack.enter_context(bg.guest(kind, keys, tar, where))
            result[kind.key]["provision"].append(g.provision(where / "procs.log"))
            guests.append(g)
        for g in guests:
            g.settle()
        for i in range(trials):
            for g in guests if i % 2 == 0 else reversed(guests):
                ms, rewritten = g.reaction_trial()
                result[g.kind.key]["reaction_ms"].append(ms)
                result[g.kind.key]["rewritten"].append(rewritten)
        bg.log(
            f"reaction run {run + 1}/{runs}: "
            + ", ".join(
                f"{g.kind.label} p50 {statistics.median(result[g.kind.key]['reaction_ms'][-trials:]):.1f} ms"
                for g in guests
            )
        )
        for g in guests:
            assert g.pid is not None
            result[g.kind.key]["memory"].append(bg.smaps_rollup(g.pid))
        ours_guest = next((g for g in guests if g.kind.key == "ours"), guests[0])
        for name, code in FLOOR_PROGRAMS.items():
            log_path = workdir / f"floor-{name}-{run}.log"
            floors[name].append(python_floor(ours_guest, code, log_path))
        if run == runs - 1 and idle > 0:
            daemons = [g for g in guests if g.kind.key != "pollfloor"]
            result["idle"] = idle_window(daemons, idle)


FLOOR_PROGRAMS = {
    "python3": "import time; time.sleep(1e6)",
    "python3+requests": "import requests, time; time.sleep(1e6)",
}


def python_floor(g: bg.Guest, code: str, where: Path) -> dict[str, float]:
    """Debian's python3 in the same chroot, doing nothing but (maybe) importing requests."""
    proc = g.root.spawn(["/usr/bin/python3", "-c", code], netns=g.net.guest_ns, log=where)
    try:
        pid = None
        deadline = time.monotonic() + 20
        while pid is None and time.monotonic() < deadline:
            pid = bg.descendant(proc.pid, "python3")
            time.sleep(0.05)
        if pid is None:
            raise bg.BenchError(f"the python3 floor did not start: {where.read_text()[-500:]}")
        time.sleep(2.0)  # its imports are done long before
        return bg.smaps_rollup(pid)
    finally:
        from guestsim import chroot as chroot_mod

        chroot_mod.stop(proc)


def idle_window(guests: list[bg.Guest], seconds: float) -> dict[str, Any]:
    """CPU seconds and metadata requests of each settled daemon over ``seconds`` of no change."""
    for g in guests:
        g.wait_parked()
    start_wall = time.time()
    cpu0 = {g.kind.key: bg.cpu_seconds(g.pid) for g in guests if g.pid}
    bg.log(f"idle window: {seconds:.0f} s")
    time.sleep(seconds)
    cpu1 = {g.kind.key: bg.cpu_seconds(g.pid) for g in guests if g.pid}
    end_wall = time.time()
    out: dict[str, Any] = {"seconds": seconds}
    for g in guests:
        # A long poll is logged when it ends: stop the agent first so the one it holds is too.
        assert g.proc is not None
        from guestsim import chroot as chroot_mod

        pid = g.pid
        memory = bg.smaps_rollup(pid) if pid else {}
        chroot_mod.stop(g.proc)
        count = sum(
            1
            for r in g.sim.requests()
            if start_wall <= dt.datetime.fromisoformat(r["time"]).timestamp() < end_wall
        )
        out[g.kind.key] = {
            "cpu_s": round(cpu1[g.kind.key] - cpu0[g.kind.key], 3),
            "requests": count,
            "memory": memory,
        }
    return out


# -- the report -------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cell(s: dict[str, Any] | None, spec: str, scale: float = 1.0) -> str:
    if not s or s.get("median") is None:
        return "-"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    return f"{format(m, spec)} [{format(lo, spec)}-{format(hi, spec)}]"


def build_report(data: dict[str, Any]) -> dict[str, Any]:
    """The summarised figures (what the table, the chart and docs/benchmarks.md show)."""
    rep: dict[str, Any] = {"provision": {}, "agents": data["agents"]}
    for n, per_kind in data["provision"].items():
        rep["provision"][n] = {
            key: {
                "time_s": summary([r["provision_s"] for r in runs]),
                "processes": summary([r["processes"] for r in runs]),
                "first_request_ms": summary([r["first_request_ms"] for r in runs]),
                "cpu_s": summary([r["cpu_s"] for r in runs]),
                "programs": runs[0]["programs"] if runs else {},
            }
            for key, runs in per_kind.items()
            if key != "errors"
        }
    st = data.get("steady")
    if st:
        rep["steady"] = {}
        for key in data["agents"]:
            if key not in st or key == "floor":
                continue
            if not st[key]["reaction_ms"]:
                continue
            ms = st[key]["reaction_ms"]
            rep["steady"][key] = {
                "reaction_p50_ms": percentile(ms, 50) if ms else None,
                "reaction_p95_ms": percentile(ms, 95) if ms else None,
                "reaction_trials": len(ms),
                "rewritten": sorted(set(st[key]["rewritten"])),
                "rss_mib": summary([m["rss"] for m in st[key]["memory"]]),
                "pss_mib": summary([m["pss"] for m in st[key]["memory"]]),
                "anon_mib": summary([m["anon"] for m in st[key]["memory"]]),
                "first_request_ms": summary([p["first_request_ms"] for p in st[key]["provision"]]),
            }
            if "idle" in st and key in st["idle"]:
                rep["steady"][key]["idle"] = st["idle"][key]
        rep["floors"] = {
            name: {
                "rss_mib": summary([m["rss"] for m in samples]),
                "pss_mib": summary([m["pss"] for m in samples]),
                "anon_mib": summary([m["anon"] for m in samples]),
            }
            for name, samples in st["floors"].items()
        }
        if "idle" in st:
            rep["idle_seconds"] = st["idle"]["seconds"]
    if data.get("boot"):
        rep["boot"] = data["boot"]
    return rep


def print_table(rep: dict[str, Any]) -> None:
    """One column per agent; the floor column holds the floor that fits each row."""
    agents = rep["agents"]
    cols = [k for k in AGENT_COLUMNS if k in agents or k == "floor"]
    heads = {
        "ours": agents.get("ours", "ours"),
        "base": "baseline",
        "go": agents.get("go", "Go"),
        "floor": "floor",
    }
    width, colw = 34, 27
    print()
    print(f"{'':{width}}" + "".join(f"{heads[k][: colw - 1]:>{colw}}" for k in cols))
    print("-" * (width + colw * len(cols)))

    def row(label: str, values: dict[str, str]) -> None:
        print(f"{label:{width}}" + "".join(f"{values.get(k, ''):>{colw}}" for k in cols))

    for n, per in rep["provision"].items():
        row(f"provision N={n} (s)", {k: cell(per[k]["time_s"], ".2f") for k in per})
        row(f"  processes forked N={n}", {k: cell(per[k]["processes"], ".0f") for k in per})
        row(f"  CPU s (agent+children) N={n}", {k: cell(per[k]["cpu_s"], ".2f") for k in per if k != "floor"})
        if "ours" in per and "go" in per and per["go"]["time_s"]["median"]:
            ratio = per["ours"]["time_s"]["median"] / per["go"]["time_s"]["median"]
            row("  ours / Go (medians)", {"ours": f"{ratio:.2f}x"})
        row(
            f"exec -> first request N={n} (ms)",
            {k: cell(per[k]["first_request_ms"], ".0f") for k in per if k != "floor"},
        )
    if rep["provision"]:
        row("  (floor: N x useradd in a shell)", {})
    st = rep.get("steady", {})
    if st:
        shown = {k: v for k, v in st.items() if k in DAEMONS}
        if "pollfloor" in st:
            shown["floor"] = st["pollfloor"]
        row("reaction p50 (ms)", {k: _fmt(v["reaction_p50_ms"], ".1f") for k, v in shown.items()})
        row("reaction p95 (ms)", {k: _fmt(v["reaction_p95_ms"], ".1f") for k, v in shown.items()})
        row("  trials", {k: str(v["reaction_trials"]) for k, v in shown.items()})
        row("files rewritten per change", {k: ",".join(map(str, v["rewritten"])) for k, v in shown.items()})
        if "pollfloor" in st:
            row("  (floor: long poll + write, python3)", {})
        floors = rep.get("floors", {})
        for metric, label in (("rss_mib", "RSS"), ("pss_mib", "PSS"), ("anon_mib", "anonymous")):
            values = {k: cell(st[k][metric], ".1f") for k in DAEMONS if k in st}
            if "python3+requests" in floors:
                values["floor"] = cell(floors["python3+requests"][metric], ".1f")
            row(f"{label} settled N=50 (MiB)", values)
        if "python3+requests" in floors:
            row("  (floor: python3 + requests, idle)", {})
        if "python3" in floors:
            f = floors["python3"]
            row(
                "  python3 alone RSS/PSS/anon",
                {"floor": "/".join(_fmt(f[m]["median"], ".1f") for m in ("rss_mib", "pss_mib", "anon_mib"))},
            )
        if "idle_seconds" in rep:
            secs = rep["idle_seconds"]
            idle = {k: v.get("idle", {}) for k, v in st.items() if k in DAEMONS}
            row(f"idle {secs:.0f} s: CPU s", {k: _fmt(v.get("cpu_s"), ".2f") for k, v in idle.items()})
            row(f"idle {secs:.0f} s: requests", {k: str(v.get("requests", "-")) for k, v in idle.items()})
    boot = rep.get("boot", {}).get("variants", {})
    if boot:
        columns = ("ours", "go", "floor")
        row("boot to SSH, TCG (s)", {k: cell(v.get("ssh_s"), ".1f") for k, v in boot.items() if k in columns})
        row("  (floor: no agent; sshd's unit makes host keys)", {})
        # Not daemon columns: their figures go in the label.
        for name, label in (("floor-baked", "floor, host keys baked in"), ("cloud-init", "cloud-init (GCE)")):
            if name in boot:
                row(f"  {label}: {cell(boot[name].get('ssh_s'), '.1f')}", {})
    print()


def environment() -> dict[str, Any]:
    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": out("git", "describe", "--always", "--dirty"),
        "command": " ".join(sys.argv),
    }


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", default="50,500", help="user counts for provisioning (default 50,500)")
    parser.add_argument("--runs", type=int, default=5, help="runs per agent and size (default 5)")
    parser.add_argument("--trials", type=int, default=20, help="reaction trials per agent and run")
    parser.add_argument("--steady-runs", type=int, default=None, help="steady-phase runs (default --runs)")
    parser.add_argument("--idle", type=float, default=120.0, help="idle window in seconds (default 120)")
    parser.add_argument("--boot-runs", type=int, default=3, help="boots per variant (default 3; 0 skips)")
    parser.add_argument("--no-peer", action="store_true", help="skip Google's agent")
    parser.add_argument("--no-floor", action="store_true", help="skip the useradd-only floor")
    parser.add_argument("--only", choices=["provision", "steady", "boot", "imports"], action="append")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON and PNG")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the agent from this copy of src/ (e.g. before a change), interleaved with ours",
    )
    parser.add_argument(
        "--quick", action="store_true", help="--users 50 --runs 2 --trials 10 --idle 20 --boot-runs 1"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.runs, args.trials, args.idle, args.boot_runs = "50", 2, 10, 20.0, 1
    missing = bg.prerequisites()
    if missing:
        raise SystemExit(f"bench: {missing}")
    phases = set(args.only or ["provision", "steady", "boot", "imports"])
    sizes = [int(n) for n in args.users.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"bench-{stamp}.json"
    png_path = args.out / f"bench-{stamp}.png"
    from guestsim import netns as netns_mod

    netns_mod.sweep_stale()
    data: dict[str, Any] = {"environment": environment(), "provision": {}, "agents": {}}
    with tempfile.TemporaryDirectory(prefix="guestagent-bench-") as tmp:
        workdir = Path(tmp)
        bg.log("rootfs (built once, ~1 min, then cached)")
        tar = bg.rootfs_tar(workdir)
        ours = bg.ours(bg.stage_ours(workdir))
        kinds = [ours] if args.no_peer else [ours, GO]
        data["agents"] = {"ours": "guestagent (this tree)"}
        if args.baseline:
            label = f"guestagent ({args.baseline})"
            kinds.insert(1, bg.ours(bg.stage_ours(workdir, args.baseline, "base"), "base", label))
            data["agents"]["base"] = label
        if not args.no_peer:
            data["agents"]["go"] = f"google-guest-agent {peer_version(tar)}"
        keys = bg.make_keys(max(sizes), workdir)

        def save() -> None:
            json_path.write_text(json.dumps(data, indent=1, default=str))

        if "provision" in phases:
            for n in sizes:
                with_floor = kinds if args.no_floor else [*kinds, bg.shell_floor(keys[:n])]
                if not args.no_floor:
                    data["agents"]["floor"] = "useradd alone (shell)"
                data["provision"][str(n)] = provisioning(with_floor, keys[:n], args.runs, tar, workdir)
                save()
        if "steady" in phases:
            steady_kinds = kinds if args.no_floor else [*kinds, bg.poll_floor()]
            if not args.no_floor:
                data["agents"]["pollfloor"] = "long poll + write (python3)"
            data["steady"] = steady(
                steady_kinds, keys[:50], args.steady_runs or args.runs, args.trials, args.idle, tar, workdir
            )
            save()
        if "imports" in phases:
            from tools.bench_imports import import_costs

            try:
                data["imports"] = import_costs(tar, workdir, ours)
            except FAILURES as err:
                data["imports"] = {"error": str(err)}
            save()
        if "boot" in phases and args.boot_runs > 0:
            from tools.bench_boot import boot_bench

            data["boot"] = boot_bench(args.boot_runs, workdir)
    data["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    data["report"] = build_report(data)
    json_path.write_text(json.dumps(data, indent=1, default=str))
    print_table(data["report"])
    try:
        from tools.bench_chart import chart

        chart(data["report"], png_path)
        print(f"chart: {png_path}")
    except ImportError as err:
        print(f"chart: not drawn ({err}; `pip install matplotlib`)")
    print(f"figures: {json_path}")
    return 0


def peer_version(tar: Path) -> str:
    """The google-guest-agent version in the rootfs, from dpkg's status file in the tarball."""
    status = subprocess.run(
        ["tar", "-xOf", str(tar), "./var/lib/dpkg/status"], capture_output=True, text=True, check=False
    ).stdout
    return dpkg_version(status)


if __name__ == "__main__":
    raise SystemExit(main())
