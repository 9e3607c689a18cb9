"""Boot to SSH in a TCG guest: no agent (the floor), ours, Google's Go agent.

Built on the VM harness (guestsim.vm): the same cached Debian bookworm guest
image, the same QEMU command line (TCG, 2 vCPUs, slirp with restrict=on and a
guestfwd of 169.254.169.254:80 to a simulator on the host's loopback), GCE's
SMBIOS identity, one simulator per boot.  Three variants, interleaved per run:

- floor: the image with our .deb but ``systemd.mask=guestagent.service`` on
  the kernel command line: no agent runs, and the harness's root key is baked
  into the image; the figure is QEMU start -> root logs in over SSH.
- ours: the image with our .deb (``guestagent.service``, Type=notify, ordered
  before ssh.service); QEMU start -> the *metadata* user logs in with the key
  the agent installed.
- go: the same base image with Debian's google-guest-agent instead of ours
  (built here from the base tarball and the package from Debian's archive,
  cached beside the harness's images); QEMU start -> the metadata user logs in.

cloud-init is not measured: its GCE datasource finds the platform, but it
creates users from cloud-config user-data, not from GCE's ``ssh-keys``, so no
metadata user would ever log in (see docs/benchmarks.md).

After each boot ``systemd-analyze``, ``systemd-analyze critical-chain ssh.service``
and the agent's journal (monotonic timestamps: its own phase timings) are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from guestsim import Simulator
from tools import bench_guest as bg

GO_PACKAGE = "google-guest-agent"
BOOT_TIMEOUT = 420.0
METADATA_USER = "benchuser"


def boot_bench(runs: int, workdir: Path) -> dict[str, Any]:
    try:
        from guestsim.vm import cache, image, qemu
    except ImportError as err:  # the vm extra
        return {"error": f"the VM harness is not importable: {err}"}
    workdir = workdir / "boot"
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = cache.default_cache_dir()
    bg.log("boot: building the .deb and the guest images (cached after the first time)")
    deb = image.build_deb_from_checkout(workdir / "deb")
    ours_image = image.build_image(cache_dir, deb)
    variants: dict[str, Any] = {"floor": ours_image, "ours": ours_image}
    result: dict[str, Any] = {"runs": runs, "variants": {}, "notes": []}
    try:
        variants["go"] = go_image(cache_dir, workdir)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        result["notes"].append(f"google-guest-agent image not built: {err}")
    key = workdir / "benchuser"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    runner = qemu.DirectRunner()
    for run in range(runs):
        order = list(variants) if run % 2 == 0 else list(reversed(variants))
        for name in order:
            try:
                sample = one_boot(name, variants[name], runner, key, pub, workdir)
            except (RuntimeError, TimeoutError, OSError) as err:
                sample = {"error": str(err)[-800:]}
            samples[name].append(sample)
            bg.log(f"boot run {run + 1}/{runs} {name}: {sample.get('ssh_s', sample.get('error', '?'))}")
    from tools.bench import summary

    for name, rows in samples.items():
        good = [r for r in rows if "ssh_s" in r]
        result["variants"][name] = {
            "ssh_s": summary([r["ssh_s"] for r in good]),
            "samples": rows,
        }
    return result


def boot_scenario(pub: str) -> dict[str, Any]:
    scn = bg.scenario([pub])
    scn["users"] = [{"name": METADATA_USER, "keys": [pub]}]
    return scn


def one_boot(name: str, img: Any, runner: Any, key: Path, pub: str, workdir: Path) -> dict[str, Any]:
    from guestsim.vm import machine, qemu

    kernel_args = ["systemd.mask=guestagent.service"] if name == "floor" else []
    with (
        Simulator(boot_scenario(pub), platforms=("gce",)) as sim,
        machine.Vm(
            img, sim.port, runner, workdir=workdir, smbios=qemu.SMBIOS["gce"], kernel_args=kernel_args
        ) as vm,
    ):
        vm.start()
        user, login_key = ("root", img.harness_key) if name == "floor" else (METADATA_USER, key)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if not vm.running():
                raise RuntimeError(f"QEMU stopped: {vm.serial_tail(1500)}")
            if vm.can_login(user, login_key):
                took = time.monotonic() - vm.started_at
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no SSH login as {user} in {BOOT_TIMEOUT:.0f} s")
            time.sleep(0.5)
        sample: dict[str, Any] = {"ssh_s": round(took, 2), "login": user}
        sample.update(inspect_guest(vm, name))
        first = sim.requests()
        if first:
            sample["metadata_requests"] = len(first)
    return sample


def inspect_guest(vm: Any, name: str) -> dict[str, Any]:
    """Where the boot's time went: systemd's view, and the agent's own log with monotonic times."""
    unit = {"ours": "guestagent", "go": "google-guest-agent"}.get(name)
    commands = {
        "systemd_analyze": "systemd-analyze || true",
        "critical_chain": "systemd-analyze critical-chain ssh.service --no-pager || true",
    }
    if unit:
        commands["agent_chain"] = f"systemd-analyze critical-chain {unit}.service --no-pager || true"
        # The agent's own lines (its phases), without the account tools' chatter.
        commands["agent_journal"] = (
            f"journalctl -b -u {unit} -o short-monotonic --no-pager "
            "| grep -v -E 'useradd|groupadd|gpasswd|usermod|dhclient' | head -40"
        )
    out: dict[str, Any] = {}
    for label, command in commands.items():
        try:
            out[label] = vm.ssh(command, timeout=120, check=False).stdout[:5000]
        except Exception as err:  # diagnostics only
            out[label] = f"({err})"
    return out


# -- the Go agent's image ---------------------------------------------------------------


def go_image(cache_dir: Path, workdir: Path) -> Any:
    """The harness's guest base with Debian's google-guest-agent (and not ours), cached."""
    from guestsim.vm import image, rootfs

    base = rootfs.ensure_rootfs(rootfs.GUEST_BASE, cache_dir)
    debdir = workdir / "go-deb"
    debdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["apt-get", "download", GO_PACKAGE], cwd=debdir, check=True, capture_output=True, text=True
    )
    deb = next(debdir.glob(f"{GO_PACKAGE}_*.deb"))
    digest = hashlib.sha256(base.name.encode() + deb.read_bytes() + b"bench-go-v1").hexdigest()[:16]
    final = cache_dir / f"bench-go-image-{digest}"
    paths = image.ImagePaths.at(final, digest)
    if paths.complete():
        return paths
    scratch = Path(tempfile.mkdtemp(prefix=".bench-go-", dir=cache_dir))
    root = scratch / "rootfs"
    root.mkdir()
    try:
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(base)],
            check=True,
        )
        shutil.copy2(deb, root / "tmp" / deb.name)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        subprocess.run(
            ["unshare", "--mount", "--fork", "chroot", str(root), "dpkg", "-i", f"/tmp/{deb.name}"],
            check=True,
            env=env,
            capture_output=True,
        )
        (root / "tmp" / deb.name).unlink()
        # The same settings as in the chroot benchmark (no hwclock, no tuning scripts).
        (root / "etc/default/instance_configs.cfg").write_text(bg.INSTANCE_CONFIGS)
        key = scratch / "harness_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-harness", "-f", str(key)], check=True
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        shutil.copy2(kernels[-1], scratch / "vmlinuz")
        shutil.copy2(initrds[-1], scratch / "initrd.img")
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(scratch / "disk.img"), "2G"],
            check=True,
        )
        shutil.rmtree(root)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(final)
        os.replace(scratch, final)
        # One Go image is enough: older ones were built on an older base (~560 MB each).
        for old in cache_dir.glob("bench-go-image-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return image.ImagePaths.at(final, digest)
