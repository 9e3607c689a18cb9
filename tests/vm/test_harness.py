"""The harness's safety promises, checked on the QEMU command line (no VM needed)."""

from __future__ import annotations

from pathlib import Path

from guestsim.vm import qemu


def spec() -> qemu.QemuSpec:
    return qemu.QemuSpec(
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        files=qemu.VmFiles(Path("/tmp/ga-vm-x")),
        ssh_port=2222,
        metadata_port=8080,
    )


def netdev_options() -> list[str]:
    argv = spec().argv()
    return argv[argv.index("-netdev") + 1].split(",")


def test_guest_network_reaches_nothing_but_its_forwards():
    options = netdev_options()
    assert options[0] == "user"
    assert "restrict=on" in options
    assert [o for o in options if "fwd=" in o] == [
        "hostfwd=tcp:127.0.0.1:2222-:22",
        "guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:8080",
    ]
    # One NIC only, on that network.
    assert spec().argv().count("-netdev") == 1


def test_tcg_only_and_power_off_ends_qemu():
    argv = spec().argv()
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-enable-kvm" not in argv
    assert "-no-reboot" in argv


def test_each_vm_gets_its_own_free_port():
    ports = {qemu.free_port() for _ in range(5)}
    assert all(1024 < p < 65536 for p in ports)
