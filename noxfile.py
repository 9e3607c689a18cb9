"""nox sessions; `./dev` is the short way in, these are the named jobs.

Every session installs the project with its extras into nox's own venv;
system packages come from `./dev setup` (apt), which CI runs first.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
PY = "3.11"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[sim,vm,dev]")


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    _install(session)
    session.run("ruff", "check", "src", "simulator", "tests", "tools", "noxfile.py")
    os.makedirs("build/typecheck", exist_ok=True)
    for name, folder in (("guestagent", "src"), ("guestsim", "simulator")):
        link = f"build/typecheck/{name}"
        if not os.path.islink(link):
            os.symlink(os.path.abspath(folder), link)
    session.run("mypy", "-p", "guestagent", "-p", "guestsim", env={"MYPYPATH": "build/typecheck"})


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """Unit, integration and simulator tests (the fast part of ./dev test)."""
    _install(session)
    session.run("pytest", "-n", "2", "tests/unit", "tests/integration", "tests/sim", *session.posargs)


@nox.session(python=PY)
def fuzz(session: nox.Session) -> None:
    """Every parser's hypothesis properties (tests/reliability/test_fuzz_parsers.py) with a long
    budget: the `reliability-long` profile, 20,000 examples each (FUZZ_EXAMPLES=N for another)."""
    _install(session)
    session.run("pytest", "-n", "2", "tests/reliability/test_fuzz_parsers.py", *session.posargs,
                env={"HYPOTHESIS_PROFILE": "reliability-long"})


@nox.session(python=PY)
def demo(session: nox.Session) -> None:
    _install(session)
    session.run("python", "tools/demo.py", *session.posargs)


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """Ours beside Google's Go agent (Debian's google-guest-agent), same machine, same
    scenario, interleaved runs: cold provisioning (N=50, 500), reaction to one key change,
    footprint of the settled daemon on Debian's python3, exec to first metadata request,
    boot to SSH in TCG guests. Needs root; 31-45 min with the load (`-- --quick`: ~12 min).
    Prints a table, writes build/bench/bench-STAMP.json and .png (docs/benchmarks.md)."""
    _system_packages(session, VM_PACKAGES + DEB_PACKAGES)
    _install(session)
    session.install("matplotlib")
    session.run("python", "-m", "tools.bench", *session.posargs)


@nox.session(python=PY, name="bench-sim")
def bench_sim(session: nox.Session) -> None:
    """Simulator throughput and long polls: small/recursive GETs/s (wrk if installed, else a
    Python load generator, always a separate process) and 10,000 held long polls released
    by one change. `-- --targets` fails the session if a target is missed;
    `-- --compare-aiohttp` also measures a minimal aiohttp server."""
    session.install("-e", ".[sim]")
    session.run("python", "-m", "guestsim.bench", *session.posargs)


@nox.session(python=PY)
def fidelity(session: nox.Session) -> None:
    """Real peers (Debian's google-guest-agent, cloud-init) chrooted against the simulator.

    Needs root, iproute2, socat, util-linux and mmdebstrap (`./dev setup`); the first run
    builds a Debian rootfs (~1 min) into ~/.cache/guestagent/chroots, later runs reuse it.
    Serial on purpose: every module makes its own network namespaces and chroot, and the
    2-core machines gain nothing from running two Go agents at once.
    """
    _install(session)
    session.run("pytest", "-m", "fidelity", "tests/fidelity", *session.posargs)


# Debian packages the VM sessions need, by what they provide.
VM_PACKAGES = (
    "qemu-system-x86",
    "qemu-utils",
    "mmdebstrap",
    "e2fsprogs",
    "ntfs-3g",
    "fdisk",
    "socat",
    "openssh-client",
    "podman",
    "runc",
)
DEB_PACKAGES = ("dpkg-dev", "debhelper", "dh-python", "fakeroot", "python3-all")


#: dpkg's status of an installed package; any other status ("unknown ok not-installed",
#: "deinstall ok config-files", "install ok half-configured", ...) means not installed.
DPKG_INSTALLED = "install ok installed"


def _dpkg_installed(pkg: str) -> bool:
    """Whether dpkg has ``pkg`` installed, as ./dev decides it: its status is exactly
    "install ok installed". A package dpkg has never heard of prints nothing (exit 1);
    one with several architectures prints one status per line, and any installed one counts.
    """
    import subprocess

    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\n", pkg], capture_output=True, text=True, check=False
    )
    return DPKG_INSTALLED in out.stdout.splitlines()


def _system_packages(session: nox.Session, packages: tuple[str, ...]) -> None:
    """Install missing Debian packages with apt-get when root, else say exactly what is missing."""
    import shutil

    if shutil.which("dpkg-query") is None:
        session.error(f"not a Debian system; install the equivalents of: {' '.join(packages)}")
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        session.error(f"missing Debian packages: {' '.join(missing)} (apt-get install them as root)")
    session.log(f"installing missing Debian packages: {' '.join(missing)}")
    session.run("apt-get", "update", "-q", external=True)
    session.run("apt-get", "install", "-y", *missing, external=True)


def _build_deb(session: nox.Session) -> str:
    out = "build/deb"
    session.run("python", "packaging/build_deb.py", "--out", out, silent=False)
    debs = sorted(p for p in os.listdir(out) if p.endswith("_all.deb"))
    return os.path.abspath(os.path.join(out, debs[-1]))


@nox.session(python=PY)
def deb(session: nox.Session) -> None:
    """Build the guestagent .deb (dpkg-buildpackage) into build/deb/."""
    _system_packages(session, DEB_PACKAGES)
    session.log(f"built {_build_deb(session)}")


@nox.session(python=PY)
def vm(session: nox.Session) -> None:
    """Boot the .deb in QEMU guests (TCG) against the simulator: real SSH logins, live key
    changes, reboots, scripts, routes. Needs root. First run builds and caches the Debian
    guest image and the QEMU container image (~2 min) under ~/.cache/guestagent/images;
    later runs rebuild only the agent layer (~5 s) when the agent changed.
    GUESTAGENT_VM_RUNNER=direct runs QEMU without Podman."""
    _system_packages(session, VM_PACKAGES + DEB_PACKAGES)
    _install(session)
    deb_path = _build_deb(session)
    session.run(
        "pytest",
        "-m",
        "vm",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "tests/vm",
        *session.posargs,
        env={"GUESTAGENT_VM_DEB": deb_path},
    )
