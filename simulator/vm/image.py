"""The guest image: a cached Debian base rootfs plus the agent's .deb, as a raw ext4 disk.

Two cache layers, so that changing the agent costs ~5 s and not a ~70 s
mmdebstrap: the base rootfs tarball (keyed by the package list and the
harness customisation, see rootfs.py) and the image directory (keyed by the
base tarball and the .deb's sha256). The kernel and initrd sit beside the
disk: QEMU boots them directly, no bootloader.

    python -m guestsim.vm.image build [--deb PATH] [--cache-dir DIR] [--network dhcp|static]

A variant can also carry files an image builder for one cloud would ship
(`build_image(..., files={"etc/waagent.conf": TEXT})`: an Azure image's
WALinuxAgent configuration); they are part of its cache key.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import attrs

from guestsim.vm import cache, rootfs

# Room for users' homes and logs on top of the ~450 MB system; the raw file is sparse.
DISK_SIZE = "2G"
# Agent layers kept in the cache, the newest first (up to three variants per .deb:
# dhcp, static, and a cloud's own files such as Azure's waagent.conf).
KEEP_IMAGES = 6
# Changing how the layer is made must change its key, so this string is hashed too.
LAYER_VERSION = "agent-layer-v1"
# What the image builder ships beside the agent's own config file, as a cloud
# image's builder would: the image's default user, which receives the keys a
# platform gives without a user name (EC2's public-keys, NoCloud's meta-data).
# The agent creates it, with passwordless sudo, when it first needs it; GCE's
# keys name their users and never use it. The .deb does not ship this file
# (the .distro layer is the image builder's), so dpkg never replaces it.
DISTRO_CONFIG_PATH = "etc/default/instance_configs.cfg.distro"
DEFAULT_USER = "debian"
DISTRO_CONFIG = f"""\
# Written by the guestagent test image builder (simulator/vm/image.py).
[Accounts]
default_user = {DEFAULT_USER}
"""
# The base image brings eth0 up by DHCP (ifupdown + dhclient). The "static"
# variant has no eth0 stanza at all: the NIC stays down and nothing runs
# dhclient, so the only addresses the guest gets are those the agent
# configures from metadata (a DigitalOcean droplet, a SmartOS guest with
# `dhcp: false` NICs). Only the loopback is configured by ifupdown.
NETWORKS = ("dhcp", "static")
STATIC_INTERFACES = """\
# Written by the guestagent test image builder (simulator/vm/image.py): no eth0
# stanza, the agent configures the NIC from the platform's metadata.
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
"""
# The agent's units, checked with `systemd-analyze verify` inside the new root:
# a broken unit fails the build rather than a boot minutes later.
UNITS = (
    "guestagent.service",
    "guestagent-startup-scripts.service",
    "guestagent-shutdown-scripts.service",
)


@attrs.frozen
class ImagePaths:
    """A built image: boot `kernel`+`initrd` with `disk` as /dev/vda; `harness_key` logs in as root."""

    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    harness_key: Path
    key: str

    @classmethod
    def at(cls, directory: Path, key: str) -> ImagePaths:
        return cls(
            directory=directory,
            disk=directory / "disk.img",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            harness_key=directory / "harness_key",
            key=key,
        )

    def complete(self) -> bool:
        return all(p.exists() for p in (self.disk, self.kernel, self.initrd, self.harness_key))


def image_key(
    base_tarball: Path, deb_path: Path, network: str = "dhcp", files: Mapping[str, str] | None = None
) -> str:
    parts = [LAYER_VERSION, base_tarball.name, cache.file_digest(deb_path), DISK_SIZE, DISTRO_CONFIG]
    if network != "dhcp":  # the DHCP image keeps the key it always had
        parts += [network, STATIC_INTERFACES]
    if files:  # so does an image without extra files
        parts.append("files")
        for name in sorted(files):
            parts += [name, files[name]]
    return cache.digest(*parts)


def _check_file_names(files: Mapping[str, str]) -> None:
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or not path.parts or ".." in path.parts or str(path) != name:
            raise ValueError(f"an image file is a relative, normalised path inside the root: {name!r}")
        if name == DISTRO_CONFIG_PATH:
            raise ValueError(f"/{DISTRO_CONFIG_PATH} is written by the image builder itself")


def build_image(
    cache_dir: Path, deb_path: Path, *, network: str = "dhcp", files: Mapping[str, str] | None = None
) -> ImagePaths:
    """Return the cached image for this .deb, building the missing layers first.

    `network="static"`: the variant without DHCP on eth0 (see NETWORKS).
    `files`: {path relative to /: text} written into the image (mode 0644) after the
    .deb is installed, as a cloud's image builder adds its own configuration
    (Azure's /etc/waagent.conf); a variant of its own in the cache.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    files = dict(files or {})
    _check_file_names(files)
    cache_dir = cache_dir.resolve()
    base = rootfs.ensure_rootfs(rootfs.GUEST_BASE, cache_dir)
    key = image_key(base, deb_path, network, files)
    final = cache_dir / f"image-{key}"
    with cache.locked(cache_dir, "image"):
        paths = ImagePaths.at(final, key)
        if paths.complete():
            return paths
        with cache.publishing(final) as scratch:
            _build_layer(scratch, base, deb_path, network, files)
            (scratch / "manifest.json").write_text(
                json.dumps(
                    {
                        "base": base.name,
                        "network": network,
                        "files": sorted(files),
                        "deb": deb_path.name,
                        "deb_sha256": cache.file_digest(deb_path),
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    indent=2,
                )
            )
        _prune(cache_dir, keep=final)
    return ImagePaths.at(final, key)


def _prune(cache_dir: Path, keep: Path, newest: int = KEEP_IMAGES) -> None:
    """Drop old agent layers (~500 MB each): every agent change makes a new one."""
    images = sorted(
        (p for p in cache_dir.glob("image-*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in images[newest - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _build_layer(
    scratch: Path, base: Path, deb_path: Path, network: str = "dhcp", files: Mapping[str, str] | None = None
) -> None:
    def prepare(root: Path) -> None:
        _install_deb(root, deb_path)
        _write_distro_config(root)
        if network == "static":
            _write_static_interfaces(root)
        _write_files(root, files or {})
        _verify_units(root)

    build_layer(scratch, base, prepare)


def build_layer(scratch: Path, base: Path, prepare: Callable[[Path], None]) -> None:
    """An image in `scratch`: the rootfs tarball `base` changed by `prepare(root)`, a root key
    for the harness, kernel and initrd beside an ext4 disk (also the benchmark's images)."""
    root = scratch / "rootfs"
    root.mkdir()
    try:
        # Owners and modes must survive: mkfs.ext4 -d copies them into the image.
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(base)],
            check=True,
        )
        prepare(root)
        _authorize_harness(root, scratch / "harness_key")
        _copy_boot_files(root, scratch)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(scratch / "disk.img"), DISK_SIZE],
            check=True,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def chroot(root: Path, *argv: str) -> None:
    # A private mount namespace: nothing the maintainer scripts might mount
    # outlives the command or shows up on this machine.
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    subprocess.run(["unshare", "--mount", "--fork", "chroot", str(root), *argv], check=True, env=env)


def _install_deb(root: Path, deb_path: Path) -> None:
    """Install the .deb the way a user would: dpkg runs its maintainer scripts,
    which enable the units (no systemd runs in the chroot, so nothing starts)."""
    inside = Path("/tmp") / deb_path.name
    shutil.copy2(deb_path, root / inside.relative_to("/"))
    try:
        chroot(root, "dpkg", "-i", str(inside))
    finally:
        (root / inside.relative_to("/")).unlink(missing_ok=True)


def _write_distro_config(root: Path) -> None:
    path = root / DISTRO_CONFIG_PATH
    if path.exists():
        raise RuntimeError(f"the .deb shipped /{DISTRO_CONFIG_PATH}: that file is the image builder's")
    path.write_text(DISTRO_CONFIG)
    os.chmod(path, 0o644)


def _write_static_interfaces(root: Path) -> None:
    path = root / "etc/network/interfaces"
    path.write_text(STATIC_INTERFACES)
    os.chmod(path, 0o644)


def _write_files(root: Path, files: Mapping[str, str]) -> None:
    for name, text in sorted(files.items()):
        path = root / name
        # Never through a symlink the rootfs holds: the file must land inside the root.
        if path.parent.resolve() != (root.resolve() / PurePosixPath(name).parent):
            raise RuntimeError(f"/{name}: a parent folder is a symlink in the image")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)


def _verify_units(root: Path) -> None:
    units = [f"/lib/systemd/system/{u}" for u in UNITS]
    chroot(root, "systemd-analyze", "verify", *units)


def _authorize_harness(root: Path, key: Path) -> None:
    """A root key for the harness only: it inspects the guest over SSH (clean
    output and exit codes) while tests log in as metadata users with their own keys."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "guestagent-vm-harness", "-f", str(key)],
        check=True,
    )
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    os.chmod(authorized, 0o600)


def _copy_boot_files(root: Path, dest: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initrd in {root / 'boot'}")
    shutil.copy2(kernels[-1], dest / "vmlinuz")
    shutil.copy2(initrds[-1], dest / "initrd.img")


def find_repo_deb_builder() -> Path | None:
    """packaging/build_deb.py when running from a checkout (it is not part of the wheel)."""
    candidate = Path(__file__).resolve().parents[2] / "packaging" / "build_deb.py"
    return candidate if candidate.exists() else None


def build_deb_from_checkout(out_dir: Path) -> Path:
    builder = find_repo_deb_builder()
    if builder is None:
        raise SystemExit("no --deb given and no packaging/build_deb.py next to this checkout")
    result = subprocess.run(
        [sys.executable, str(builder), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        # dpkg-buildpackage's log matters only when it failed.
        sys.stderr.write(result.stderr)
        raise SystemExit(f"building the .deb failed ({result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guestsim image", description="Build the VM guest image.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the guest image")
    build.add_argument("--deb", type=Path, help="the guestagent .deb (default: build it)")
    build.add_argument("--cache-dir", type=Path, default=cache.default_cache_dir())
    build.add_argument(
        "--network", choices=NETWORKS, default="dhcp", help="static: no DHCP on eth0 (see NETWORKS)"
    )
    args = parser.parse_args(argv)

    deb = args.deb or build_deb_from_checkout(args.cache_dir / "deb")
    started = time.monotonic()
    paths = build_image(args.cache_dir, deb, network=args.network)
    print(
        json.dumps(
            {
                "disk": str(paths.disk),
                "kernel": str(paths.kernel),
                "initrd": str(paths.initrd),
                "harness_key": str(paths.harness_key),
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
