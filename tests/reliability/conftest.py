"""Reliability suites: what they share.

The integration fixtures (a sandbox root, the agent as a real process, the daemon) are
imported from tests/integration/conftest.py, not copied. What is added here:

- PLATFORMS, the one table the suites are parametrized over: a platform is one row
  (name, simulator platform, URL builder, scenario tweak, config). Adding one is a row.
  Every platform whose metadata the simulator serves over HTTP with faults is in it: GCE,
  EC2, NoCloud (a seed URL), OpenStack (the metadata service), DigitalOcean (v1.json) and
  Azure (IMDS and the WireServer, no DVD); why the others are not is said below it.
- helpers to read what the agent wrote (managed keys per account, the record, passwd and
  group parsed strictly), to provision a sandbox once and clone it for many cases, and
  to count a process's log lines per state change;
- the hypothesis profiles of the fuzz suite (`reliability-ci`, `reliability-long`,
  chosen with HYPOTHESIS_PROFILE; nox -s fuzz runs the long one).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings

from guestsim import Simulator
from tests.integration.conftest import (  # noqa: F401 - fixtures are used by name
    AGENT,
    _needs_root,
    run_agent,
    sandbox,
    start_daemon,
)

# ---------------------------------------------------------------- hypothesis profiles

# CI: a fixed, small budget per property. The long run (nox -s fuzz) is the same
# properties with far more examples; neither has a deadline (a loaded CI box).
settings.register_profile(
    "reliability-ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples every CI run; nox -s fuzz explores
)
settings.register_profile(
    "reliability-long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "reliability-ci")
if FUZZ_PROFILE not in ("reliability-ci", "reliability-long"):
    FUZZ_PROFILE = "reliability-ci"


def fuzz_settings() -> settings:
    """The profile for this run, applied per test (never loaded globally: other suites
    keep their own budgets)."""
    return settings(settings.get_profile(FUZZ_PROFILE))


# ---------------------------------------------------------------- the platform table

DEFAULT_USER = "debian"
GCE_MARKER = "# Added by Google"
AGENT_MARKER = "# Added by guestagent"
LOOPBACK = "127.0.0.1"


def _same(scn: dict[str, Any]) -> dict[str, Any]:
    return scn


def _nothing(sim: Simulator) -> None:
    return None


def _imdsv2_required(sim: Simulator) -> None:
    sim.set("imds/http-tokens", "required", platform="ec2")


AZURE_ADMIN = "azureuser"


def _one_admin(scn: dict[str, Any]) -> dict[str, Any]:
    """Azure gives keys to one user, the admin (the scenario's first): every user's keys
    become the admin's, so a change of any user's keys is a change Azure can carry."""
    keys = [key for user in scn.get("users", []) for key in user.get("keys", [])]
    return {**scn, "users": [{"name": AZURE_ADMIN, "keys": keys}]}


@attrs.frozen
class PlatformCase:
    """One platform as the reliability suites drive it.

    `url(port)` is the --metadata-url for a simulator listening on 127.0.0.1:port (a
    function of the port, so an agent can be pointed at a simulator that is not up yet);
    `tweak` adjusts the neutral scenario; `prepare` runs on the started simulator;
    `config` is instance_configs.cfg (short polls so the daemon notices within a second).
    `named_users`: keys go to the users metadata names (GCE); otherwise every key goes to
    one account, `owner` (the image's default user; Azure's admin user). `flavor`: the
    platform checks a Metadata-Flavor header.
    """

    name: str
    sim_platform: str
    url: Callable[[int], str]
    tweak: Callable[[dict[str, Any]], dict[str, Any]] = _same
    prepare: Callable[[Simulator], None] = _nothing
    config: str = ""
    named_users: bool = False
    owner: str = DEFAULT_USER
    marker: str = AGENT_MARKER
    sudo_group: str = "guestagent-sudoers"
    flavor: bool = False
    # A fault path that spoils only part of one snapshot's requests; None when a snapshot
    # is one request (GCE's recursive GET).
    partial_pattern: str | None = None
    # The largest snapshot the transport accepts (bytes); None: no cap of its own.
    max_snapshot: int | None = None

    @property
    def record(self) -> str:
        """The managed-users record, relative to the root."""
        if self.name == "gce":
            return "var/lib/google/google_users"
        return f"var/lib/guestagent/{self.name}_users"

    def accounts(self, users: dict[str, list[str]]) -> dict[str, list[str]]:
        """The managed keys each account should end up with for these metadata users."""
        if self.named_users:
            return {u: list(dict.fromkeys(keys)) for u, keys in users.items() if keys}
        every = [k for keys in users.values() for k in keys]
        return {self.owner: list(dict.fromkeys(every))} if every else {}

    def start(self, scn: dict[str, Any], port: int = 0) -> Simulator:
        sim = Simulator(self.tweak(scn), platforms=(self.sim_platform,), host=LOOPBACK, port=port).start()
        self.prepare(sim)
        return sim

    def apply(self, sim: Simulator, scn: dict[str, Any]) -> None:
        """Replace the running simulator's scenario (settings `prepare` made are made again)."""
        sim.apply(self.tweak(scn))
        self.prepare(sim)


# Host keys and boto are instance setup's business, not these suites': switched off so
# every case costs one agent start, not an RSA key generation.
QUIET = "[InstanceSetup]\nset_host_keys = false\nset_boto_config = false\n"
DEFAULT_USER_CONFIG = f"[Accounts]\ndefault_user = {DEFAULT_USER}\ndefault_user_groups = adm\n"

PLATFORMS: tuple[PlatformCase, ...] = (
    PlatformCase(
        name="gce",
        sim_platform="gce",
        url=lambda port: f"http://{LOOPBACK}:{port}/computeMetadata/v1/",
        config=QUIET,
        named_users=True,
        marker=GCE_MARKER,
        sudo_group="google-sudoers",
        flavor=True,
    ),
    PlatformCase(
        name="ec2",
        sim_platform="ec2",
        url=lambda port: f"http://{LOOPBACK}:{port}/",
        prepare=_imdsv2_required,
        partial_pattern="*/public-keys/*",
        max_snapshot=1024 * 1024,
        config=QUIET + DEFAULT_USER_CONFIG + "[EC2]\npoll_interval = 0.5\n",
    ),
    PlatformCase(
        name="nocloud",
        sim_platform="nocloud",
        url=lambda port: f"http://{LOOPBACK}:{port}/nocloud/",
        partial_pattern="*/user-data",
        max_snapshot=1024 * 1024,
        config=QUIET + DEFAULT_USER_CONFIG + "[NoCloud]\npoll_interval = 0.5\n",
    ),
    PlatformCase(
        name="openstack",
        sim_platform="openstack",
        # The metadata service's version directory (no config drive under a sandbox root).
        url=lambda port: f"http://{LOOPBACK}:{port}/openstack/latest/",
        partial_pattern="*/user_data",
        max_snapshot=1024 * 1024,
        config=QUIET + DEFAULT_USER_CONFIG + "[OpenStack]\npoll_interval = 0.5\n",
    ),
    PlatformCase(
        name="digitalocean",
        sim_platform="digitalocean",
        # One document, one request: nothing to spoil partly. No temporary link-local
        # address is added under a sandbox root (no netlink there).
        url=lambda port: f"http://{LOOPBACK}:{port}/metadata/v1.json",
        max_snapshot=16 * 1024 * 1024,
        config=QUIET + DEFAULT_USER_CONFIG + "[DigitalOcean]\npoll_interval = 0.5\n",
    ),
    PlatformCase(
        name="azure",
        sim_platform="azure",
        # IMDS alone (no provisioning DVD under a sandbox root, as on a VM without one); the
        # WireServer the health report goes to is the same host and port, so every fault
        # spoils it too. Keys go to the admin user only.
        url=lambda port: f"http://{LOOPBACK}:{port}/metadata/instance",
        tweak=_one_admin,
        owner=AZURE_ADMIN,
        max_snapshot=16 * 1024 * 1024,
        config=QUIET + "[Azure]\npoll_interval = 0.5\n",
    ),
)
# Not in the table: SmartOS (its channel is a unix socket whose path the simulator picks
# when it starts, so "down at start" cannot be played; its faults are per key of a serial
# protocol, not per HTTP request; its keys go to root, an account that exists already and
# never joins the sudo group, which the checks here do not fit: tests/sim/test_smartos_*.py
# drive those faults); VMware (a guestinfo tool, not a server) and the CPIO device (a disk
# read once): neither has a transport the simulator can fault.
BY_NAME = {case.name: case for case in PLATFORMS}
IDS = [case.name for case in PLATFORMS]


def url_of(case: PlatformCase, sim: Simulator) -> str:
    url = case.url(sim.port)
    # DigitalOcean's simulator base is the text tree beside v1.json: same prefix.
    prefix = url.rstrip("/").removesuffix(".json")
    assert sim.url(case.sim_platform).startswith(prefix), (url, sim.url(case.sim_platform))
    return url


# ---------------------------------------------------------------- keys


def ed25519(tag: str, comment: str | None = None) -> str:
    """A well-formed ed25519 public key line, distinct per tag (OpenSSH accepts any 32 bytes)."""
    name = b"ssh-ed25519"
    point = hashlib.sha256(tag.encode()).digest()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", len(point)) + point
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment if comment is not None else tag}"


def key_body(line: str) -> str:
    """The base64 field of a key line (what must never reach a log)."""
    parts = line.split()
    for i, part in enumerate(parts[:-1]):
        if part.startswith(("ssh-", "ecdsa-", "sk-")):
            return parts[i + 1]
    return parts[1]


# ---------------------------------------------------------------- reading the sandbox


def write_config(root: Path, case: PlatformCase, extra: str = "") -> None:
    path = root / "etc/default/instance_configs.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(case.config + extra)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def parse_passwd(text: str) -> dict[str, list[str]]:
    """Strictly: every line complete (7 fields, numeric ids), the file ends in a newline."""
    assert text and text.endswith("\n"), "passwd is empty or torn (no final newline)"
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        assert len(fields) == 7 and fields[2].isdigit() and fields[3].isdigit(), f"torn passwd line {line!r}"
        assert fields[0] not in out, f"passwd names {fields[0]} twice"
        out[fields[0]] = fields
    return out


def parse_group(text: str) -> dict[str, set[str]]:
    assert text and text.endswith("\n"), "group is empty or torn (no final newline)"
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        assert len(fields) == 4 and fields[2].isdigit(), f"torn group line {line!r}"
        assert fields[0] not in out, f"group names {fields[0]} twice"
        out[fields[0]] = {m for m in fields[3].split(",") if m}
    return out


def parse_record(text: str | None) -> list[str]:
    """The managed-users record: one valid name per line, complete."""
    if text is None:
        return []
    assert text == "" or text.endswith("\n"), f"record torn: {text[-40:]!r}"
    names = text.splitlines()
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}", name), f"record holds {name!r}"
    return names


def managed_keys(text: str | None, marker: str) -> list[str]:
    """The key lines under the agent's marker; asserts the file is whole."""
    if text is None:
        return []
    assert text == "" or text.endswith("\n"), f"authorized_keys torn: ends {text[-40:]!r}"
    lines = text.split("\n")[:-1] if text else []
    keys = []
    for i, line in enumerate(lines):
        if line == marker:
            assert i + 1 < len(lines), "marker without its key"
            keys.append(lines[i + 1])
    return keys


def home_of(root: Path, user: str) -> Path | None:
    entry = parse_passwd((root / "etc/passwd").read_text()).get(user)
    return None if entry is None else root / entry[5].lstrip("/")


def keys_of(root: Path, case: PlatformCase, account: str) -> list[str]:
    home = home_of(root, account)
    if home is None:
        return []
    return managed_keys(read(home / ".ssh/authorized_keys"), case.marker)


def accounts_state(root: Path, case: PlatformCase, accounts: set[str]) -> dict[str, Any]:
    """Everything accounts owns, for before/after comparisons."""
    passwd = parse_passwd((root / "etc/passwd").read_text())
    groups = parse_group((root / "etc/group").read_text())
    return {
        "users": {u: passwd[u][2] for u in sorted(accounts) if u in passwd},
        "keys": {u: keys_of(root, case, u) for u in sorted(accounts)},
        "record": parse_record(read(root / case.record)),
        "sudo": sorted(groups.get(case.sudo_group, set())),
    }


def check_converged(root: Path, case: PlatformCase, users: dict[str, list[str]]) -> None:
    want = case.accounts(users)
    for account, keys in want.items():
        assert sorted(keys_of(root, case, account)) == sorted(keys), account
    record = set(parse_record(read(root / case.record)))
    assert set(want) <= record, (sorted(want), sorted(record))


def clone(template: Path, dest: Path) -> Path:
    """A copy of a provisioned sandbox root, owners and modes kept."""
    subprocess.run(["cp", "-a", str(template), str(dest)], check=True)
    return dest


def tree_listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root -> (mode, uid, size): what a run may have added or changed."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            out[os.path.relpath(path, root)] = (info.st_mode, info.st_uid, info.st_size)
    return out


# ---------------------------------------------------------------- provisioned templates

_TEMPLATES: dict[tuple[str, str], Path] = {}
_TEMPLATE_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def provisioned(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[PlatformCase, dict[str, list[str]]], Path]:
    """provisioned(case, users) -> a sandbox root the agent already provisioned for these
    users (made once per worker and kept read-only: clone() it)."""

    def make(case: PlatformCase, users: dict[str, list[str]]) -> Path:
        _needs_root()
        from guestagent.entrypoints.sandbox import make_sandbox
        from tests.integration.conftest import scenario

        key = (case.name, repr(sorted(users.items())))
        with _TEMPLATE_LOCK:
            if key in _TEMPLATES:
                return _TEMPLATES[key]
            root = Path(make_sandbox(str(tmp_path_factory.mktemp(f"template-{case.name}") / "root")))
            write_config(root, case)
            sim = case.start(scenario(users))
            try:
                done = subprocess.run(
                    [
                        *AGENT,
                        "run",
                        "--once",
                        "--root",
                        str(root),
                        "--metadata-url",
                        url_of(case, sim),
                        "--platform",
                        case.name,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=180,
                    check=False,
                )
            finally:
                sim.stop()
            assert done.returncode == 0, done.stdout + done.stderr
            check_converged(root, case, users)
            _TEMPLATES[key] = root
            return root

    return make


# ---------------------------------------------------------------- logs

_STAMP = re.compile(r"^\S+ \S+ guestagent (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_NUMBERS = re.compile(r"\d+(\.\d+)?s\b")
RETRY_WORDS = ("retrying", "waiting for metadata")


def failure_lines(log: str) -> list[str]:
    """The lines that report a metadata failure or a recovery, timestamps and delays taken out."""
    out = []
    for line in log.splitlines():
        if any(w in line for w in RETRY_WORDS) or "answering again" in line:
            out.append(_NUMBERS.sub("Ns", _STAMP.sub("", line)))
    return out


def repeated_lines(log: str) -> list[str]:
    """Failure lines said again with no change of state in between (one per retry)."""
    lines = failure_lines(log)
    return [b for a, b in itertools.pairwise(lines) if a == b]


def rejection_counts(log: str) -> dict[str, int]:
    """How often each refusal/ignore line was logged (timestamps taken out)."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if " WARNING " in line or " ERROR " in line:
            text = _STAMP.sub("", line)
            counts[text] = counts.get(text, 0) + 1
    return counts


# ---------------------------------------------------------------- many short agent runs

ZYGOTE = r"""
import json, os, signal, sys
from guestagent.entrypoints import cli
from guestagent.entrypoints import bootstrap  # noqa: F401  (imported before any fork)
from guestagent.services.registry import all_subsystems
from guestagent.adapters.platforms.registry import NAMES, provider
for name in NAMES:  # the registry imports a platform only when chosen: every one, once, here
    provider(name)
all_subsystems()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    spec = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the agent waits on its own children
        os.setpgid(0, 0)
        os.environ.update(spec.get("env", {}))
        fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        out = os.open(spec["log"] + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0); os.dup2(out, 1); os.dup2(fd, 2)
        code = 70
        try:
            code = cli.main(spec["argv"])
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            with open(spec["log"] + ".rc", "w") as rc:
                rc.write(str(code))
            os._exit(code)
    sys.stdout.write(f"{pid}\n"); sys.stdout.flush()
"""


class Zygote:
    """A process that has imported the agent and forks one `guestagent ...` run per request.

    Each run is the real CLI (`cli.main(argv)`) in a process of its own, in its own process
    group (kill_group is SIGKILL to it and to the account tools it started, as systemd
    kills a unit's cgroup); only the interpreter start-up (~0.5 s of CPU) is saved. Safe
    to use from several threads.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return line.strip()

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        """Start `guestagent ARGV`: stderr to `log`, stdout to `log`.out, the exit code to `log`.rc."""
        for suffix in ("", ".out", ".rc"):
            Path(str(log) + suffix).unlink(missing_ok=True)
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env or {}}) + "\n")
            self.proc.stdin.flush()
            return int(self._line())

    @staticmethod
    def exit_code(log: Path) -> int | None:
        text = read(Path(str(log) + ".rc"))
        return int(text) if text else None

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait(self, pid: int, log: Path, timeout: float = 300) -> int:
        """The run's exit code (it must exit by itself within `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.alive(pid):
            if time.monotonic() > deadline:
                self.kill_group(pid)
                raise AssertionError(f"agent run {pid} did not end within {timeout}s")
            time.sleep(0.02)
        code = self.exit_code(log)
        assert code is not None, f"agent run {pid} died without an exit code"
        return code

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> ZygoteRun:
        """start(), with a handle that answers like subprocess.Popen (poll, wait, kill)."""
        return ZygoteRun(self, self.start(argv, log, env), log)

    def kill_group(self, pid: int) -> None:
        """SIGKILL the run and everything it started; returns once it is gone."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while self.alive(pid):
            time.sleep(0.005)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ZygoteRun:
    """One forked run, as a Popen-like handle: stderr in `log`, stdout in `log`.out."""

    def __init__(self, zygote: Zygote, pid: int, log: Path) -> None:
        self.zygote, self.pid, self.log = zygote, pid, log

    def poll(self) -> int | None:
        if self.zygote.alive(self.pid):
            return None
        code = self.zygote.exit_code(self.log)
        return -signal.SIGKILL if code is None else code

    def wait(self, timeout: float) -> int:
        return self.zygote.wait(self.pid, self.log, timeout)

    def kill(self) -> None:
        self.zygote.kill_group(self.pid)

    @property
    def stdout(self) -> str:
        return read(Path(f"{self.log}.out")) or ""

    @property
    def stderr(self) -> str:
        return read(self.log) or ""


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    _needs_root()
    forker = Zygote()
    try:
        yield forker
    finally:
        forker.close()
