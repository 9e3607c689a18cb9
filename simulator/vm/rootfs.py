"""Debian root filesystems made with mmdebstrap: the guest's base system and the QEMU container's.

Both are tarballs cached by a hash of everything that shapes them (suite,
package list, the customisation script), so they are built once per machine
(about 70 s and 35 s) and reused until one of those inputs changes.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import attrs

from guestsim.vm import cache

SUITE = "bookworm"

# What a small cloud-like Debian 12 guest needs: a kernel and initramfs to boot
# straight from /boot, systemd, sshd, sudo, the agent's Python dependencies from
# Debian (every Depends of packaging/debian/control: `dpkg -i` in the image layer
# installs no dependencies, so a missing one fails the build) and ifupdown +
# dhclient for DHCP on the NIC. python3-yaml and python3-pycdlib are NoCloud's:
# meta-data is YAML, and a cidata ISO is read without mounting it. The disks
# subsystem's tools are the .deb's Recommends (fdisk: sfdisk; ntfs-3g: ntfsls,
# which proves a resource disk's NTFS volume empty; cloud-guest-utils:
# growpart) plus e2fsprogs (mkfs.ext4, resize2fs, dumpe2fs), which a cloud
# image always has but mmdebstrap's apt variant does not.
GUEST_PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "openssh-server",
    "sudo",
    "python3",
    "python3-requests",
    "python3-attr",
    "python3-pyroute2",
    "python3-yaml",
    "python3-pycdlib",
    "iproute2",
    "ifupdown",
    "isc-dhcp-client",
    "procps",
    "e2fsprogs",
    "fdisk",
    "ntfs-3g",
    "cloud-guest-utils",
)

# QEMU and socat are all the container needs: socat is the per-connection relay
# behind `guestfwd=...-cmd:socat - TCP:127.0.0.1:SIMPORT`.
QEMU_PACKAGES = ("qemu-system-x86", "socat")

# Runs on the host after the packages are installed, with $1 the new root.
# Every step is there for the harness, not for the agent: the agent itself is
# installed later, in the image layer, so changing it never rebuilds this.
GUEST_CUSTOMIZE = r"""
set -eu
root="$1"
echo guest > "$root/etc/hostname"
cat > "$root/etc/hosts" <<'HOSTS'
127.0.0.1 localhost
127.0.1.1 guest
169.254.169.254 metadata.google.internal
::1 localhost ip6-localhost ip6-loopback
HOSTS
echo 'LABEL=rootfs / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"

# The kernel command line says net.ifnames=0, so the one virtio NIC is eth0.
cat > "$root/etc/network/interfaces" <<'IFACES'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
IFACES

# Root logs in on the serial console without a password: the harness drives it with pexpect.
chroot "$root" passwd -d root
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'GETTY'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear %I 115200 linux
GETTY

# Host keys belong to the instance, not the image: the agent makes them on
# first boot (like GCE images). If it made none, sshd still starts, with keys
# made here, and the host-key test notices that they are not the published ones.
# Only then: sshd needs one key, and the agent makes its RSA key after READY.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat > "$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'SSHD'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || exec /usr/bin/ssh-keygen -A'
ExecStartPre=/usr/sbin/sshd -t
SSHD

# Nothing periodic that would compete for the emulated CPU during a test.
# No VGA either (-nodefaults): no gettys on virtual terminals.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    fstrim.timer e2scrub_reap.service getty-static.service getty@.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# A guest under test never waits for a network that will not come.
ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
"""


@attrs.frozen
class RootfsSpec:
    """Everything that decides a rootfs tarball's content, and so its cache key."""

    name: str
    packages: tuple[str, ...]
    customize: str = ""
    suite: str = SUITE

    @property
    def key(self) -> str:
        return cache.digest("rootfs-v1", self.name, self.suite, *self.packages, self.customize)

    def tarball(self, cache_dir: Path) -> Path:
        return cache_dir / f"{self.name}-{self.key}.tar"


GUEST_BASE = RootfsSpec("guest-base", GUEST_PACKAGES, GUEST_CUSTOMIZE)
QEMU_CONTAINER = RootfsSpec("qemu-container", QEMU_PACKAGES)


def mmdebstrap_command(spec: RootfsSpec, target: Path, hook: Path | None = None) -> list[str]:
    cmd = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=tar",
        f"--include={','.join(spec.packages)}",
    ]
    if hook is not None:
        cmd += ["--customize-hook", str(hook)]
    return [*cmd, spec.suite, str(target)]


def ensure_rootfs(spec: RootfsSpec, cache_dir: Path, *, quiet: bool = False) -> Path:
    """Return the cached tarball for `spec`, building it first if it is missing."""
    final = spec.tarball(cache_dir)
    with cache.locked(cache_dir, spec.name):
        if final.exists():
            return final
        partial = final.with_suffix(".tar.partial")
        partial.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="guestagent-rootfs-") as tmp:
            hook = None
            if spec.customize:
                # As a file: mmdebstrap runs an executable hook file with the root
                # as $1, and does not echo a long inline script into the log.
                hook = Path(tmp) / "customize.sh"
                hook.write_text("#!/bin/sh\n" + spec.customize)
                hook.chmod(0o755)
            try:
                subprocess.run(
                    mmdebstrap_command(spec, partial, hook),
                    check=True,
                    stdout=subprocess.DEVNULL if quiet else None,
                )
                partial.rename(final)
            finally:
                partial.unlink(missing_ok=True)
        # A changed spec makes the older tarballs of this name dead weight (~400 MB).
        for stale in cache_dir.glob(f"{spec.name}-*.tar"):
            if stale != final:
                stale.unlink(missing_ok=True)
    return final
