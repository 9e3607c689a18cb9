"""One benchmark "VM": a fresh Debian chroot, its own simulator and network, one agent.

Both agents are measured the same way, which is the point of this module: a
fresh copy of one cached Debian bookworm rootfs (``guestsim.chroot``: Debian's
python3 with python3-requests/-attr/-pyroute2/-yaml/-pycdlib, and Debian's
google-guest-agent), entered in private mount/PID/UTS namespaces inside the
private network namespace of ``guestsim.netns``, where 169.254.169.254 leads to
a simulator on the host's loopback.  Each agent runs as PID 1 of its namespace
with "/" as its root, as it would on a VM's first boot: real useradd on the
chroot's /etc, routes in the guest namespace, host keys with ssh-keygen.

Ours is installed the way the .deb lays it out (``/usr/lib/python3/dist-packages
/guestagent`` byte-compiled, as py3compile does at install, and the packaged
``/usr/bin/guestagent`` launcher on ``#!/usr/bin/python3``).

Nothing here reaches a metadata address from the machine's own network
namespace or changes the machine's accounts: every change lands in the chroot
or the private namespaces, which are removed afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestsim import Simulator
from guestsim import chroot as chroot_mod
from guestsim import netns as netns_mod
from tools.bench_inotify import FileChange, KeysWatcher
from tools.bench_procs import Recorder, Spawned

REPO = Path(__file__).resolve().parent.parent

#: The rootfs: the fidelity tests' packages plus what our .deb depends on.
ROOTFS_PACKAGES = (
    *chroot_mod.DEFAULT_PACKAGES,
    "python3-requests",
    "python3-attr",
    "python3-pyroute2",
    "python3-yaml",
    "python3-pycdlib",
)

GUEST_MAC = "42:01:0a:80:00:02"
INSTANCE_ID = "4520031799277581759"
DMI = {"product_name": "Google Compute Engine", "sys_vendor": "Google", "bios_vendor": "Google"}
MARK = "# Added by Google"

# Both agents get the fidelity tests' configuration: the chroot shares the host's
# clock (no clock-skew daemon: hwclock), and the tuning would write machine-global
# IRQ and block-queue settings.  Same options, same meaning in both agents.
INSTANCE_CONFIGS = """\
[Daemons]
clock_skew_daemon = false

[InstanceSetup]
optimize_local_ssd = false
set_multiqueue = false
"""

PROVISION_TIMEOUT = 600.0
REACTION_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """An agent could not be measured; the message says why."""


@dataclass(frozen=True)
class AgentKind:
    """How to install and start one agent in a fresh chroot."""

    key: str  # "ours" / "go": JSON keys
    label: str
    argv: tuple[str, ...]
    marker: str  # a string in argv[0] or argv[1] of the agent's exec (bench_procs)
    prepare: Callable[[chroot_mod.Chroot], None]
    env: tuple[tuple[str, str], ...] = ()
    daemon: bool = True  # stays up after provisioning (the shell floor does not)


def keys_file(root: Path, user: str) -> Path:
    return root / "home" / user / ".ssh/authorized_keys"


def user_names(count: int) -> list[str]:
    return [f"user{i:03d}" for i in range(count)]


def make_keys(count: int, workdir: Path) -> list[str]:
    """``count`` real ed25519 public keys (the private halves are thrown away)."""
    keydir = workdir / "keys"
    keydir.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        path = keydir / f"k{i}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"user{i}@bench", "-f", str(path)],
            check=True,
        )
        keys.append(path.with_suffix(".pub").read_text().strip())
        path.unlink()
    return keys


def scenario(keys: list[str]) -> dict[str, Any]:
    """N users with one key each, one NIC with 3 forwarded IPs: the same VM for every agent."""
    return {
        "instance": {
            "name": "bench-vm",
            "id": INSTANCE_ID,
            "hostname": "bench-vm.c.bench-project.internal",
            "zone": "us-central1-a",
        },
        "project": {"id": "bench-project", "numeric_id": 123456789012},
        "users": [{"name": u, "keys": [k]} for u, k in zip(user_names(len(keys)), keys, strict=True)],
        "network": {
            "interfaces": [
                {
                    "mac": GUEST_MAC,
                    "ip": "10.128.0.2/24",
                    "gateway": "10.128.0.1",
                    "forwarded_ips": ["10.128.0.100", "10.128.0.101", "10.128.0.102"],
                }
            ]
        },
    }


def ssh_keys_value(keys: list[str], first: str) -> str:
    """instance/attributes/ssh-keys with user000's key replaced by ``first``."""
    users = user_names(len(keys))
    lines = [f"{u}:{k}" for u, k in zip(users, keys, strict=True)]
    lines[0] = f"{users[0]}:{first}"
    return "\n".join(lines)


def rootfs_tar(workdir: Path) -> Path:
    spec = chroot_mod.RootfsSpec(packages=ROOTFS_PACKAGES)
    return chroot_mod.ensure_rootfs_tar(spec, log=workdir / "mmdebstrap.log")


def prerequisites() -> str:
    """What is missing on this machine to run the chroots, or "" when nothing is."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, chroot, mounts, process events)"
    tools = chroot_mod.missing_tools() + netns_mod.missing_tools()
    if tools:
        return f"missing tools: {', '.join(tools)} (./dev setup installs them)"
    return ""


# -- our agent, laid out as the .deb installs it ----------------------------------------

SITE = "/usr/lib/python3/dist-packages"


def stage_ours(workdir: Path, src: Path = REPO / "src", name: str = "ours") -> Path:
    """``src`` (this tree's src/ by default) as the package ``guestagent``, byte-compiled
    by Debian's python3 once."""
    stage = workdir / f"{name}-stage" / "guestagent"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(src, stage, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # py3compile does this at install; -d makes the recorded paths the installed ones.
    subprocess.run(
        ["/usr/bin/python3", "-m", "compileall", "-q", "-d", f"{SITE}/guestagent", str(stage)],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    return stage


def install_ours(stage: Path) -> Callable[[chroot_mod.Chroot], None]:
    def prepare(root: chroot_mod.Chroot) -> None:
        shutil.copytree(stage, root.path(f"{SITE}/guestagent"))
        launcher = root.path("/usr/bin/guestagent")
        shutil.copy2(REPO / "packaging/bin/guestagent", launcher)
        launcher.chmod(0o755)

    return prepare


def ours(stage: Path, key: str = "ours", label: str = "guestagent") -> AgentKind:
    return AgentKind(
        key=key,
        label=label,
        argv=("/usr/bin/guestagent", "daemon"),
        marker="/usr/bin/guestagent",
        prepare=install_ours(stage),
    )


# -- the floor: useradd alone -----------------------------------------------------------

FLOOR_SCRIPT = """\
#!/bin/sh
# The provisioning floor: the same useradd per user as the agents run, key files
# written by the shell itself (no chown, no validation, no metadata request).
set -e
groupadd google-sudoers
while read -r user; do
  useradd -m -s /bin/bash -p '*' -G adm,dip,plugdev,video,google-sudoers "$user"
done < /bench/users
umask 077
mkdir $(sed 's|.*|/home/&/.ssh|' /bench/users)
while read -r user type blob comment; do
  printf '%s\\n%s %s %s\\n' '# Added by Google' "$type" "$blob" "$comment" \\
    > "/home/$user/.ssh/authorized_keys"
done < /bench/keys
"""


def shell_floor(keys: list[str]) -> AgentKind:
    users = user_names(len(keys))

    def prepare(root: chroot_mod.Chroot) -> None:
        root.write("/bench/floor.sh", FLOOR_SCRIPT, mode=0o755)
        root.write("/bench/users", "".join(f"{u}\n" for u in users))
        root.write("/bench/keys", "".join(f"{u} {k}\n" for u, k in zip(users, keys, strict=True)))

    return AgentKind(
        key="floor",
        label="useradd alone (shell)",
        argv=("/bin/sh", "/bench/floor.sh"),
        marker="/bench/floor.sh",
        prepare=prepare,
        daemon=False,
    )


# -- the reaction floor: a long poll and a write, nothing else -----------------------------

POLL_SCRIPT = """\
# The reaction floor: one kept-alive long poll, the recursive JSON parsed, each
# changed user's key written by rename. No validation, no accounts, no logging.
import http.client, json, os
conn, etag, last = None, "NONE", {}
while True:
    if conn is None:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=90)
    wait = "" if etag == "NONE" else "&wait_for_change=true&timeout_sec=60"
    try:
        conn.request("GET", "/computeMetadata/v1/?recursive=true&alt=json&last_etag=" + etag + wait,
                     headers={"Metadata-Flavor": "Google"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError:
        conn = None
        continue
    etag = resp.getheader("ETag") or etag
    keys = json.loads(body)["instance"]["attributes"].get("ssh-keys", "")
    want = dict(line.split(":", 1) for line in keys.splitlines() if ":" in line)
    for user, key in want.items():
        if last.get(user) != key:
            home = "/home/" + user + "/.ssh"
            os.makedirs(home, exist_ok=True)
            with open(home + "/authorized_keys.tmp", "w") as out:
                out.write("# Added by Google\\n" + key + "\\n")
            os.rename(home + "/authorized_keys.tmp", home + "/authorized_keys")
    last = want
"""


def poll_floor() -> AgentKind:
    def prepare(root: chroot_mod.Chroot) -> None:
        root.write("/bench/poll.py", POLL_SCRIPT)

    return AgentKind(
        key="pollfloor",
        label="long poll + write (python3)",
        argv=("/usr/bin/python3", "/bench/poll.py"),
        marker="/bench/poll.py",
        prepare=prepare,
    )


# -- one guest --------------------------------------------------------------------------


@dataclass
class Guest:
    kind: AgentKind
    keys: list[str]
    sim: Simulator
    net: netns_mod.MetadataNetwork
    root: chroot_mod.Chroot
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None  # the agent's host PID
    spawned_at: float = 0.0  # time.monotonic() just before the spawn
    exec_at: float | None = None  # time.monotonic() of the agent's exec (process events)
    flips: int = 0  # reaction trials so far: user000 has keys[1] after an odd number

    @property
    def users(self) -> list[str]:
        return user_names(len(self.keys))

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no agent log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty agent log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        self.spawned_at = time.monotonic()
        self.proc = self.root.spawn(
            list(self.kind.argv), netns=self.net.guest_ns, dmi=DMI, env=dict(self.kind.env), log=self.log
        )

    def find_pid(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            pid = descendant(self.proc.pid, self.kind.marker)
            if pid is not None:
                self.pid = pid
                return pid
            time.sleep(0.02)
        raise BenchError(f"{self.kind.label}: process not found: {self.tail()}")

    # -- provisioning ----------------------------------------------------------------------

    def provision(self, recorder_log: Path, settle: float = 2.0) -> dict[str, Any]:
        """Start the agent; wait for every user's authorized_keys; the figures of that boot."""
        users = self.users
        watcher = KeysWatcher(self.root.path("/home"), users)
        try:
            with Recorder(recorder_log) as recorder:
                self.spawn()
                assert self.proc is not None
                if not watcher.wait(PROVISION_TIMEOUT, alive=self.alive):
                    state = "running" if self.alive() else f"exited {self.proc.returncode}"
                    raise BenchError(
                        f"{self.kind.label} provisioned {len(watcher.seen)}/{len(users)} users "
                        f"({state}): {self.tail()}"
                    )
                time.sleep(settle)  # what it starts right after the last key still counts
                pid = self.find_pid() if self.kind.daemon else None
                spawned = recorder.analyse(self.proc.pid, self.kind.marker, pid)
        finally:
            watcher.close()
        return self._provision_figures(spawned, watcher.seen)

    def _provision_figures(self, spawned: Spawned, seen: dict[str, float]) -> dict[str, Any]:
        if spawned.exec_ns is None:
            raise BenchError(f"{self.kind.label}: its exec was not seen in the process events")
        exec_at = spawned.exec_ns / 1e9
        self.exec_at = exec_at
        last = max(seen.values())
        first_request = self.first_request_wall()
        exec_wall = exec_at + (time.time() - time.monotonic())
        return {
            "provision_s": last - exec_at,
            "first_keys_s": min(seen.values()) - exec_at,
            "spawn_to_exec_s": exec_at - self.spawned_at,
            "first_request_ms": None if first_request is None else (first_request - exec_wall) * 1000,
            "processes": spawned.processes_until(int(last * 1e9)),
            "processes_settled": spawned.processes,
            "threads": spawned.threads,
            "programs": dict(spawned.programs.most_common()),
            "events_dropped": spawned.dropped,
            "cpu_s": cpu_seconds(self.pid) if self.pid else None,
        }

    def first_request_wall(self) -> float | None:
        requests = self.sim.requests()
        if not requests:
            return None
        return min(dt.datetime.fromisoformat(r["time"]).timestamp() for r in requests)

    # -- steady state ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for user in self.users:
            try:
                st = keys_file(self.root.root, user).stat()
            except OSError:
                continue
            out[user] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    def wait_parked(self, timeout: float = 30.0) -> None:
        """Until the agent holds a long poll (it is waiting for the next change)."""
        deadline = time.monotonic() + timeout
        while self.sim.held_polls() < 1:
            if time.monotonic() > deadline or not self.alive():
                raise BenchError(f"{self.kind.label} is not waiting on a long poll: {self.tail()}")
            time.sleep(0.01)

    def settle(self, timeout: float = 15.0, quiet: float = 0.5) -> dict[str, tuple[int, int, int]]:
        """Until no authorized_keys changes for ``quiet`` s and the agent is parked again."""
        deadline = time.monotonic() + timeout
        last, since = self.snapshot(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.snapshot()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet and self.sim.held_polls() >= 1:
                break
        return last

    def reaction_trial(self) -> tuple[float, int]:
        """Flip user000's key; (ms until the new key is on disk, files rewritten)."""
        keys = self.keys
        new, old = (keys[1], keys[0]) if self.flips % 2 == 0 else (keys[0], keys[1])
        self.flips += 1
        target = keys_file(self.root.root, self.users[0])
        self.wait_parked()
        before = self.snapshot()
        change = FileChange(target)
        try:
            started = time.perf_counter()
            self.sim.set("instance/attributes/ssh-keys", ssh_keys_value(keys, new))
            seen = change.wait(lambda text: _shows(text, new, old), REACTION_TIMEOUT)
        finally:
            change.close()
        if seen is None:
            state = "running" if self.alive() else "exited"
            raise BenchError(f"{self.kind.label}: change {self.flips} not on disk ({state}): {self.tail()}")
        after = self.settle()
        rewritten = sum(1 for user, st in after.items() if before.get(user) != st)
        return (seen - started) * 1000, rewritten


def _shows(text: str, new_key: str, old_key: str) -> bool:
    lines = text.splitlines()
    return new_key in lines and old_key not in lines


@contextlib.contextmanager
def guest(kind: AgentKind, keys: list[str], tar: Path, workdir: Path) -> Iterator[Guest]:
    """A fresh chroot, simulator and network for one agent; all removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{kind.key}.log"
    with (
        Simulator(scenario(keys), platforms=("gce",)) as sim,
        netns_mod.MetadataNetwork(workdir / "net") as net,
        chroot_mod.unpacked(tar, workdir, hostname="bench-vm") as root,
    ):
        net.forward_to("127.0.0.1", sim.port)
        root.write("/etc/default/instance_configs.cfg", INSTANCE_CONFIGS)
        hosts = root.path("/etc/hosts")
        base = hosts.read_text() if hosts.exists() else "127.0.0.1 localhost\n"
        root.write("/etc/hosts", base + "169.254.169.254 metadata.google.internal\n")
        kind.prepare(root)
        g = Guest(kind, keys, sim, net, root, log)
        try:
            yield g
        finally:
            if g.proc is not None:
                chroot_mod.stop(g.proc)


# -- /proc readings ---------------------------------------------------------------------


def descendant(root_pid: int, marker: str) -> int | None:
    """Host PID of the process below ``root_pid`` whose argv[0] or argv[1] contains ``marker``."""
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
        except OSError:
            continue
        if any(marker in a.decode(errors="replace") for a in argv):
            return pid
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its reaped children (the kernel's own accounting)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime..cstime are fields 14..17.
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def smaps_rollup(pid: int) -> dict[str, float]:
    """Rss, Pss and Anonymous of ``pid`` in MiB (/proc/PID/smaps_rollup)."""
    wanted = {"Rss": "rss", "Pss": "pss", "Anonymous": "anon"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            out[wanted[name]] = int(rest.split()[0]) / 1024
    return out


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
