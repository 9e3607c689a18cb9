"""What each import costs the settled daemon, on Debian's python3 in the bench chroot.

Three views, all of the same installed tree (tools/bench_guest.py lays it out as
the .deb does):

- ``settled``: the daemon provisions the N=50 scenario and settles; a probe
  (the packaged launcher plus a SIGUSR1 handler) then lists ``sys.modules`` and
  takes a tracemalloc snapshot.  Allocations are summed per *import statement*
  of the agent's own modules (cumulative over the traceback), so the figure for
  ``cli.py:10`` is everything that line pulled in and that is still alive.
- ``steps``: a fresh interpreter imports the daemon's dependencies one group at
  a time and reads its anonymous memory and RSS after each (C libraries such as
  libssl count there, not in tracemalloc).
- ``importtime``: ``python3 -X importtime`` of the daemon's entry modules.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from tools import bench_guest as bg

PROBE = r"""
import os, signal, sys, tracemalloc

def dump(*_):
    out = {"modules": sorted(sys.modules)}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        out["traced"] = tracemalloc.get_traced_memory()[0]
        lines = {}
        for stat in snap.statistics("traceback"):
            seen = set()
            for frame in stat.traceback:
                if "/guestagent/" not in frame.filename:
                    continue
                key = (frame.filename.split("/guestagent/", 1)[1], frame.lineno)
                if key in seen:
                    continue
                seen.add(key)
                lines[key] = lines.get(key, 0) + stat.size
        out["lines"] = sorted(([f, n, s] for (f, n), s in lines.items()), key=lambda x: -x[2])[:400]
        files = {}
        for stat in snap.statistics("filename"):
            name = stat.traceback[0].filename
            files[name] = files.get(name, 0) + stat.size
        out["files"] = sorted(files.items(), key=lambda x: -x[1])[:60]
    with open("/bench/probe.json.tmp", "w") as handle:
        json.dump(out, handle)
    os.rename("/bench/probe.json.tmp", "/bench/probe.json")  # whole, or not there yet

import json
signal.signal(signal.SIGUSR1, dump)
from guestagent.entrypoints.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Import groups in the order the daemon meets them; each step's cost is what it adds.
STEPS = (
    ("python3", ""),
    ("stdlib the daemon needs", "import logging, threading, queue, subprocess, json, signal, socket"),
    ("argparse + configparser", "import argparse, configparser"),
    ("attrs", "import attrs"),
    ("requests", "import requests"),
    ("guestagent.domain (config, gce)", "import guestagent.domain.config, guestagent.domain.platforms.gce"),
    ("guestagent.entrypoints.cli", "import guestagent.entrypoints.cli"),
    ("guestagent.entrypoints.daemon", "import guestagent.entrypoints.daemon"),
    ("the chosen platform's transport (gce)", "import guestagent.adapters.platforms.gce"),
    ("all subsystems", "import guestagent.services.registry as r; r.all_subsystems()"),
    (
        "pyroute2 IPRoute (as the agent imports it)",
        "from guestagent.adapters.pyroute2_lite import iproute; iproute()[0]().close()",
    ),
)

STEP_SCRIPT = r"""
import sys, time
def mem():
    got = {}
    for line in open("/proc/self/smaps_rollup"):
        name, _, rest = line.partition(":")
        if name in ("Rss", "Anonymous", "Pss"):
            got[name] = int(rest.split()[0])
    return got
steps = %r
out = []
for label, code in steps:
    t = time.perf_counter()
    exec(code)
    m = mem()
    out.append([label, m["Rss"], m["Pss"], m["Anonymous"], (time.perf_counter() - t) * 1000])
import json
print(json.dumps(out))
"""


def import_costs(tar: Path, workdir: Path, ours: bg.AgentKind) -> dict[str, Any]:
    keys = bg.make_keys(50, workdir / "imports")
    where = workdir / "imports"
    with bg.guest(ours, keys, tar, where) as g:
        g.root.write("/bench/probe.py", PROBE)
        steps = g.root.run(
            ["/usr/bin/python3", "-c", STEP_SCRIPT % (STEPS,)], netns=g.net.guest_ns, timeout=120, check=True
        )
        importtime = g.root.run(
            [
                "/usr/bin/python3",
                "-X",
                "importtime",
                "-c",
                "import guestagent.entrypoints.cli, guestagent.entrypoints.daemon",
            ],
            netns=g.net.guest_ns,
            timeout=120,
            check=True,
        )
        probe = bg.AgentKind(
            key="ours",
            label="guestagent (tracemalloc probe)",
            argv=("/usr/bin/python3", "/bench/probe.py", "daemon"),
            marker="/bench/probe.py",
            prepare=ours.prepare,
            env=(("PYTHONTRACEMALLOC", "30"),),
        )
        g.kind = probe
        g.provision(where / "procs.log")
        g.settle()
        assert g.pid is not None
        os.kill(g.pid, signal.SIGUSR1)
        path = g.root.path("/bench/probe.json")
        # A snapshot of every traced allocation takes a while on a loaded machine.
        deadline = time.monotonic() + 300
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not path.exists():
            raise bg.BenchError(f"the tracemalloc probe wrote nothing within 300 s: {g.tail()}")
        settled = json.loads(path.read_text())
    step_rows = json.loads(steps.stdout)
    rows, last = [], None
    for label, rss, _pss, anon, ms in step_rows:
        rows.append(
            {
                "step": label,
                "rss_mib": rss / 1024,
                "anon_mib": anon / 1024,
                "added_rss_mib": None if last is None else (rss - last[0]) / 1024,
                "added_anon_mib": None if last is None else (anon - last[1]) / 1024,
                "ms": ms,
            }
        )
        last = (rss, anon)
    return {
        "steps": rows,
        "importtime_top": parse_importtime(importtime.stderr)[:40],
        "settled_modules": len(settled["modules"]),
        "settled_agent_modules": [m for m in settled["modules"] if m.startswith("guestagent")],
        "settled_other_top_packages": sorted({m.split(".")[0] for m in settled["modules"]}),
        "traced_mib": settled.get("traced", 0) / 2**20,
        "import_lines": settled.get("lines", [])[:80],
        "files": settled.get("files", []),
    }


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """Modules by cumulative import time (µs), largest first."""
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append(
                {
                    "module": match.group(4),
                    "self_us": int(match.group(1)),
                    "cumulative_us": int(match.group(2)),
                    "depth": len(match.group(3)) // 2,
                }
            )
    return sorted(rows, key=lambda r: -r["cumulative_us"])


def main() -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write everything here")
    parser.add_argument(
        "--src", type=Path, default=bg.REPO / "src", help="the src/ to measure (default: this tree's)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guestagent-imports-") as tmp:
        workdir = Path(tmp)
        tar = bg.rootfs_tar(workdir)
        result = import_costs(tar, workdir, bg.ours(bg.stage_ours(workdir, args.src)))
    print(f"{'step':50} {'RSS':>8} {'anon':>8} {'+RSS':>8} {'+anon':>8} {'ms':>7}")
    for row in result["steps"]:
        print(
            f"{row['step']:50} {row['rss_mib']:8.1f} {row['anon_mib']:8.1f} "
            f"{row['added_rss_mib'] or 0:8.1f} {row['added_anon_mib'] or 0:8.1f} {row['ms']:7.1f}"
        )
    print(
        f"\nsettled daemon: {result['settled_modules']} modules, "
        f"{len(result['settled_agent_modules'])} of them guestagent; traced {result['traced_mib']:.1f} MiB"
    )
    print("top-level packages:", " ".join(result["settled_other_top_packages"]))
    print("\nlive Python memory by the agent's import line (cumulative, KiB):")
    for name, line, size in result["import_lines"][:40]:
        print(f"{size / 1024:9.0f}  {name}:{line}")
    print("\nimport time (cumulative ms):")
    for row in result["importtime_top"][:25]:
        print(f"{row['cumulative_us'] / 1000:8.1f}  {'  ' * row['depth']}{row['module']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
