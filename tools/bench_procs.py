"""Which processes an agent starts, and when it was exec'd: the kernel's process events.

`python -m tools.bench_procs OUT` subscribes to the proc connector (netlink,
CONFIG_PROC_EVENTS; root) and writes one line per fork, exec and exit on the
machine to OUT until SIGTERM, after a first line "READY".  It runs as its own
process so that reading events (the machine has other users: thousands of them)
never competes for the benchmark's GIL with the simulator thread.

It only listens: nothing is changed on the machine, no process is traced or
slowed down, and an agent needs no wrapper or PATH trick to be counted.  The
lines are analysed afterwards by :func:`analyse`, which follows the process tree
below the PID the benchmark started and finds the agent by its exec.

Line formats (timestamps are CLOCK_MONOTONIC nanoseconds, as time.monotonic_ns()):
    F TS PARENT_TGID CHILD_PID CHILD_TGID     a fork (a thread when CHILD_PID != CHILD_TGID)
    E TS PID TGID ARGV0 ARGV1                  an exec (argv read from /proc at once; "?" if gone)
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")
_PIDS4 = struct.Struct("=iiii")
_PIDS2 = struct.Struct("=ii")
_HEAD = _NLMSGHDR.size + _CN_MSG.size


def _argv(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if not raw:  # exec'd but its arguments not set up yet: the name is there already
            raw = Path(f"/proc/{pid}/comm").read_bytes().strip()
    except OSError:
        return "? ?"
    parts = [p.decode(errors="replace").replace(" ", "_") for p in raw.split(b"\0") if p][:2]
    return " ".join([*parts, "-", "-"][:2])


def record(out_path: str) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    # A busy machine makes events in bursts; a large buffer keeps them from being dropped.
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((0, CN_IDX_PROC))
    body = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0) + struct.pack("=I", PROC_CN_MCAST_LISTEN)
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), NLMSG_DONE, 0, 0, 0) + body)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    dropped = 0
    with open(out_path, "w", buffering=1 << 16) as out:
        out.write("READY\n")
        out.flush()
        # A timeout, so that SIGTERM is noticed on a quiet machine too (the lines are flushed
        # at the end; a recorder killed while blocked would lose them).
        sock.settimeout(0.5)
        while not stop:
            try:
                data = sock.recv(65536)
            except (InterruptedError, TimeoutError):
                continue
            except OSError:  # ENOBUFS: the kernel dropped events
                dropped += 1
                continue
            offset = 0
            while offset + _HEAD <= len(data):
                length = _NLMSGHDR.unpack_from(data, offset)[0]
                if length < _HEAD:
                    break
                event = offset + _HEAD
                what, _cpu, stamp = _EVENT_HEAD.unpack_from(data, event)
                payload = event + _EVENT_HEAD.size
                if what == PROC_EVENT_FORK:
                    _ppid, ptgid, cpid, ctgid = _PIDS4.unpack_from(data, payload)
                    out.write(f"F {stamp} {ptgid} {cpid} {ctgid}\n")
                elif what == PROC_EVENT_EXEC:
                    pid, tgid = _PIDS2.unpack_from(data, payload)
                    out.write(f"E {stamp} {pid} {tgid} {_argv(pid)}\n")
                offset += (length + 3) & ~3
        out.write(f"DROPPED {dropped}\n")


class Recorder:
    """The recorder as a child process: `with Recorder(path) as rec: ...; rec.analyse(pid, marker)`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recorder:
        self.path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench_procs", str(self.path)],
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + 10
        while not (self.path.exists() and self.path.read_text().startswith("READY")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the process-event recorder did not start (root and CONFIG_PROC_EVENTS?)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def analyse(self, root_pid: int, marker: str, agent_pid: int | None = None) -> Spawned:
        self.stop()
        return analyse(self.path.read_text().splitlines(), root_pid, marker, agent_pid)


@dataclass
class Spawned:
    """What the agent (the process below root_pid whose exec matched the marker) started."""

    exec_ns: int | None = None  # when the agent was exec'd (CLOCK_MONOTONIC ns)
    pid: int | None = None
    processes: int = 0  # processes forked by the agent and its descendants
    threads: int = 0  # threads created in the agent's own process
    programs: Counter[str] = field(default_factory=Counter)  # execs below the agent, by basename
    dropped: int = 0

    def processes_until(self, until_ns: int) -> int:
        return sum(1 for stamp in self._fork_stamps if stamp <= until_ns)

    _fork_stamps: list[int] = field(default_factory=list)


def analyse(lines: list[str], root_pid: int, marker: str, agent_pid: int | None = None) -> Spawned:
    """``agent_pid`` (found in /proc) makes the agent's exec count even when a fork
    event between it and ``root_pid`` was lost (the kernel drops events it cannot queue)."""
    result = Spawned()
    tree = {root_pid}  # tgids below the PID the benchmark started
    if agent_pid is not None:
        tree.add(agent_pid)
    agent_tree: set[int] = set()
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "DROPPED":
            result.dropped = int(parts[1])
            continue
        if parts[0] == "F":
            stamp, ptgid, cpid, ctgid = (int(p) for p in parts[1:5])
            if cpid != ctgid:
                # A thread: the kernel reports the creating process's parent as the parent.
                if ctgid == result.pid:
                    result.threads += 1
                continue
            if ptgid not in tree:
                continue
            tree.add(ctgid)
            if ptgid in agent_tree:
                agent_tree.add(ctgid)
                result.processes += 1
                result._fork_stamps.append(stamp)
        elif parts[0] == "E":
            stamp, _pid, tgid = int(parts[1]), int(parts[2]), int(parts[3])
            argv = parts[4:6]
            if tgid not in tree:
                continue
            if result.pid is None and marker in " ".join(argv):
                result.exec_ns, result.pid = stamp, tgid
                agent_tree.add(tgid)
            elif tgid in agent_tree and tgid != result.pid:
                name = os.path.basename(argv[0]) if argv and argv[0] != "?" else "?"
                # An interpreter's script is what counts (sh -c ..., python3 script).
                result.programs[name] += 1
    return result


if __name__ == "__main__":
    record(sys.argv[1])
