"""Build, cache and enter a Debian root file system in which real peer agents run.

The fidelity tests run agents nobody here wrote (Debian's ``google-guest-agent`` and
``cloud-init``) against the simulator.  They must not change this machine, so each one
runs chrooted into a throw-away copy of a Debian rootfs, in new mount, PID and UTS
namespaces with a fresh ``/proc``, a private ``/dev`` and a fake ``/sys``, inside the
private network namespace of :mod:`guestsim.netns`.

The rootfs is made once by ``mmdebstrap`` and kept as a tarball outside the repository
(``$XDG_CACHE_HOME/guestagent/chroots/<key>.tar``); the key covers the suite, the mirrors
and the candidate version of every requested package, so a new Debian point release
builds a new one and an unchanged archive reuses the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netns import die_with_parent

DEFAULT_PACKAGES: tuple[str, ...] = (
    "google-guest-agent",
    "cloud-init",
    "python3",
    "iproute2",
    "passwd",
    "sudo",
    "openssh-client",
)

#: Bumped when the way a rootfs is built changes, so old caches are not reused.
BUILD_RECIPE_VERSION = "1"

FALLBACK_MIRROR = "http://deb.debian.org/debian"
FALLBACK_SECURITY = "http://deb.debian.org/debian-security"


class ChrootError(RuntimeError):
    """Building or entering the chroot failed."""


def missing_tools() -> list[str]:
    """Programs needed to build and enter a chroot that are not installed."""
    tools = ("mmdebstrap", "unshare", "chroot", "tar", "apt-cache", "mount")
    return [tool for tool in tools if shutil.which(tool) is None]


# -- which mirror -----------------------------------------------------------------------


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza = {}
            continue
        if ":" in line and not line[0].isspace():
            key, value = line.split(":", 1)
            stanza[key.strip().lower()] = value.strip()
    return


def host_debian_uris(suite: str, apt_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian archive and security URIs this machine's apt uses for ``suite``.

    CI machines reach Debian only through the mirror their apt is configured with, so
    mmdebstrap must use the same one rather than a hard-coded host.
    """
    main: str | None = None
    security: str | None = None

    def consider(uri: str, suites: Sequence[str], components: Sequence[str]) -> None:
        nonlocal main, security
        if "main" not in components:
            return
        if f"{suite}-security" in suites or suite + "/updates" in suites:
            security = security or uri
        elif suite in suites:
            main = main or uri

    files = sorted((apt_dir / "sources.list.d").glob("*.sources")) if apt_dir.exists() else []
    for path in files:
        for stanza in _deb822_stanzas(path.read_text(errors="replace")):
            if "deb" not in stanza.get("types", "").split():
                continue
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            for uri in stanza.get("uris", "").split():
                consider(uri, stanza.get("suites", "").split(), stanza.get("components", "").split())
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb":
                consider(words[1], [words[2]], words[3:])
    return main or FALLBACK_MIRROR, security or FALLBACK_SECURITY


# -- the spec and its cache key ---------------------------------------------------------


@dataclass(frozen=True)
class RootfsSpec:
    """What goes into a rootfs."""

    suite: str = "bookworm"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    components: tuple[str, ...] = ("main",)
    mirror: str = field(default="")
    security_mirror: str = field(default="")

    def resolved(self) -> RootfsSpec:
        """This spec with the mirrors filled in from the machine's apt configuration."""
        if self.mirror and self.security_mirror:
            return self
        main, security = host_debian_uris(self.suite)
        return RootfsSpec(
            suite=self.suite,
            packages=self.packages,
            components=self.components,
            mirror=self.mirror or main,
            security_mirror=self.security_mirror or security,
        )

    def sources(self) -> list[str]:
        comps = " ".join(self.components)
        return [
            f"deb {self.mirror} {self.suite} {comps}",
            f"deb {self.mirror} {self.suite}-updates {comps}",
            f"deb {self.security_mirror} {self.suite}-security {comps}",
        ]


def candidate_versions(packages: Sequence[str]) -> dict[str, str]:
    """The version apt would install for each package (from the host's apt lists).

    Raises :class:`ChrootError` when apt knows nothing about a package, which on a fresh
    machine usually means ``apt-get update`` has not run yet.
    """
    proc = subprocess.run(
        ["apt-cache", "policy", *packages],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    versions: dict[str, str] = {}
    current: str | None = None
    for line in proc.stdout.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    unknown = [p for p in packages if versions.get(p, "(none)") == "(none)"]
    if unknown:
        raise ChrootError(f"apt has no candidate for {', '.join(unknown)} (run apt-get update first?)")
    return versions


def cache_dir() -> Path:
    base = os.environ.get("GUESTAGENT_CHROOT_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "guestagent" / "chroots"


def cache_key(spec: RootfsSpec, versions: Mapping[str, str]) -> str:
    parts = [
        f"recipe={BUILD_RECIPE_VERSION}",
        f"suite={spec.suite}",
        f"components={','.join(spec.components)}",
        *spec.sources(),
        *(f"{name}={versions[name]}" for name in sorted(versions)),
    ]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"{spec.suite}-{digest}"


def ensure_rootfs_tar(
    spec: RootfsSpec | None = None,
    *,
    log: Path | None = None,
    timeout: float = 900,
) -> Path:
    """Path of a cached rootfs tarball for ``spec``, building it first if needed.

    Safe to call from several processes at once (pytest-xdist workers): a lock file
    makes the second caller wait for the first build instead of starting another.
    """
    spec = (spec or RootfsSpec()).resolved()
    versions = candidate_versions(spec.packages)
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec, versions)
    tar = directory / f"{key}.tar"
    with open(directory / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists():
            return tar
        tmp = directory / f".{key}.{os.getpid()}.tmp.tar"
        argv = [
            "mmdebstrap",
            "--variant=apt",
            "--format=tar",
            f"--components={','.join(spec.components)}",
            f"--include={','.join(spec.packages)}",
            spec.suite,
            str(tmp),
            *spec.sources(),
        ]
        started = time.monotonic()
        out = open(log, "w+") if log else tempfile.TemporaryFile("w+")  # noqa: SIM115
        with out:
            try:
                proc = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                tmp.unlink(missing_ok=True)
                raise ChrootError(f"mmdebstrap took longer than {timeout:.0f}s") from err
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                out.seek(0)
                raise ChrootError(f"mmdebstrap failed ({proc.returncode}): {out.read()[-3000:]}")
        (directory / f"{key}.txt").write_text(
            "\n".join(
                [
                    *spec.sources(),
                    *(f"{k} {v}" for k, v in sorted(versions.items())),
                    f"built in {time.monotonic() - started:.0f}s",
                    "",
                ]
            )
        )
        os.replace(tmp, tar)
        return tar


# -- entering it ------------------------------------------------------------------------

# Runs as PID 1 of a fresh PID namespace, in a fresh mount namespace, before chroot.
# Each mount below exists only in that mount namespace and vanishes with it.
_ENTER_SCRIPT = r"""
set -eu
root=$1; dmi=$2; host=$3; shift 3
mount --make-rprivate /
# A fresh /proc shows only this PID namespace.  Its global knobs (sysctls, IRQ affinity,
# sysrq) would reach the real machine, so they are made read-only.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
for p in sys sysrq-trigger irq bus fs; do
  if [ -e "$root/proc/$p" ]; then
    mount --bind "$root/proc/$p" "$root/proc/$p"
    mount -o remount,bind,ro "$root/proc/$p"
  fi
done
# A private /dev with only harmless nodes: no disks, no RTC for hwclock to set.
mount -t tmpfs -o mode=755,size=4m,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty; do
  touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
# /sys is a tmpfs holding the fake DMI identity the test asked for (this machine has
# none, and the peers decide which cloud they are on from it) plus a read-only sysfs of
# this network namespace, linked in where peers look for NICs.
mount -t tmpfs -o mode=755,size=1m tmpfs "$root/sys"
mkdir -p "$root/sys/.sysfs" "$root/sys/class/dmi/id"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys/.sysfs"
for d in devices bus module firmware kernel fs; do ln -s ".sysfs/$d" "$root/sys/$d"; done
ln -s ../.sysfs/class/net "$root/sys/class/net"
if [ -n "$dmi" ]; then cp -r "$dmi/." "$root/sys/class/dmi/id/"; fi
mount -o remount,ro "$root/sys"
mount -t tmpfs -o mode=755,size=64m tmpfs "$root/run"
mkdir -p "$root/run/lock"
hostname "$host"
exec chroot "$root" "$@"
"""

_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class Chroot:
    """An unpacked rootfs that commands can be run in."""

    def __init__(self, root: Path, *, hostname: str = "guestsim-peer") -> None:
        self.root = root
        self.hostname = hostname
        self._dmi_dirs: list[Path] = []

    @classmethod
    def unpack(cls, tar: Path, dest: Path, **kwargs: str) -> Chroot:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["tar", "-C", str(dest), "--numeric-owner", "-xpf", str(tar)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        chroot = cls(dest, **kwargs)
        chroot._make_quiet()
        return chroot

    def _make_quiet(self) -> None:
        # A peer's package scripts or service manager must never start anything on the
        # real machine: no systemd inside, and invoke-rc.d is told "no" outright.
        self.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
        # No DNS server can be reached from the private namespace anyway; an empty
        # resolv.conf makes lookups fail at once instead of after resolver timeouts.
        resolv = self.path("/etc/resolv.conf")
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text("")

    def path(self, inside: str) -> Path:
        """Host path of ``inside`` (an absolute path in the chroot)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, *, mode: int = 0o644) -> Path:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    def read(self, inside: str) -> str:
        return self.path(inside).read_text()

    def _dmi_dir(self, dmi: Mapping[str, str] | None) -> str:
        if not dmi:
            return ""
        directory = Path(tempfile.mkdtemp(prefix="gsf-dmi-"))
        self._dmi_dirs.append(directory)
        for name, value in dmi.items():
            (directory / name).write_text(value + "\n")
        return str(directory)

    def command(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        dmi: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The host command line that runs ``argv`` inside the chroot."""
        environment = {**_ENV, **(env or {})}
        inner = [
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            # If the test process dies or stops us, PID 1 of the namespace gets SIGKILL,
            # and the kernel then kills everything else in it.
            "--kill-child",
            "sh",
            "-c",
            _ENTER_SCRIPT,
            "gsf-enter",
            str(self.root),
            self._dmi_dir(dmi),
            self.hostname,
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in environment.items()),
            *argv,
        ]
        if netns is None:
            raise ChrootError("peers run only inside a private network namespace")
        return ["ip", "netns", "exec", netns, *inner]

    def run(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        dmi: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside the chroot; output is captured as text."""
        proc = subprocess.run(
            self.command(argv, netns=netns, dmi=dmi, env=env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        if check and proc.returncode != 0:
            raise ChrootError(
                f"{' '.join(argv)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
            )
        return proc

    def spawn(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        dmi: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        log: Path,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running peer (a daemon); stop it with :func:`stop`."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.command(argv, netns=netns, dmi=dmi, env=env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # If pytest itself is killed, unshare goes too, and --kill-child then
                # takes the whole PID namespace (the peer and its children) with it.
                preexec_fn=die_with_parent,
            )

    def cleanup(self) -> None:
        """Remove the temporary DMI directories (the rootfs itself belongs to the caller)."""
        for directory in self._dmi_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._dmi_dirs.clear()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """Stop a peer started by :meth:`Chroot.spawn` and everything in its PID namespace.

    ``proc`` is the ``unshare`` we started.  It ignores SIGTERM while it waits for its
    child, so it gets SIGKILL; ``--kill-child`` then makes the kernel SIGKILL its child,
    PID 1 of the namespace, and the end of PID 1 takes every other process of the
    namespace with it.  We wait until that PID 1 is really gone, so the rootfs is no
    longer in use when the caller removes it.
    """
    init_pid = _child_pid(proc.pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout)
    if init_pid is not None:
        deadline = time.monotonic() + timeout
        while _alive(init_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return proc.returncode


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has released its files and mounts already)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _child_pid(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


@contextlib.contextmanager
def unpacked(tar: Path, parent: Path, **kwargs: str) -> Iterator[Chroot]:
    """A fresh copy of the rootfs under ``parent``, removed afterwards."""
    dest = Path(tempfile.mkdtemp(prefix="gsf-root-", dir=parent))
    chroot = Chroot.unpack(tar, dest, **kwargs)
    try:
        yield chroot
    finally:
        chroot.cleanup()
        # Every mount was made in a namespace that is gone once its processes are, so
        # nothing should be mounted below dest.  Check anyway: removing a tree through a
        # leaked bind mount of /dev would delete the machine's device nodes.
        leaked = mounts_below(dest)
        if leaked:
            raise ChrootError(f"mounts left below {dest}, not removing it: {leaked}")
        shutil.rmtree(dest, ignore_errors=True)


def mounts_below(path: Path) -> list[str]:
    """Mount points in this process's mount namespace at or below ``path``."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found
