"""The harness's safety promises, checked on the QEMU command line (no VM needed)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

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


def test_no_metadata_port_means_no_guestfwd_at_all():
    bare = qemu.QemuSpec(
        kernel=Path("/img/vmlinuz"),
        initrd=Path("/img/initrd.img"),
        files=qemu.VmFiles(Path("/tmp/ga-vm-x")),
        ssh_port=2222,
        metadata_port=None,
    )
    argv = bare.argv()
    options = argv[argv.index("-netdev") + 1].split(",")
    assert "restrict=on" in options
    assert [o for o in options if "fwd=" in o] == ["hostfwd=tcp:127.0.0.1:2222-:22"]
    assert "-smbios" not in argv
    assert "-device" in argv and "scsi-cd,drive=cd0,bus=scsi0.0" not in argv


def test_smbios_identity_reaches_the_command_line_with_commas_escaped():
    identity = qemu.Smbios(manufacturer="Amazon EC2", product="t3.micro", version="a,b")
    argv = attrs.evolve(spec(), smbios=identity).argv()
    tables = [argv[i + 1] for i, word in enumerate(argv) if word == "-smbios"]
    assert tables == ["type=1,manufacturer=Amazon EC2,product=t3.micro,version=a,,b"]
    # The clouds' identities, as the agent's DMI detection reads them.
    ec2 = qemu.SMBIOS["ec2"].argv()
    assert next(t for t in ec2 if t.startswith("type=1,")).startswith("type=1,manufacturer=Amazon EC2,")
    gce = qemu.SMBIOS["gce"].argv()
    assert next(t for t in gce if t.startswith("type=1,")).startswith(
        "type=1,manufacturer=Google,product=Google Compute Engine,"
    )
    with pytest.raises(ValueError, match="one line"):
        qemu.Smbios(product="two\nlines").argv()


def test_cdrom_is_a_read_only_scsi_cd():
    argv = attrs.evolve(spec(), cdrom=Path("/tmp/ga-vm-x/cdrom.iso")).argv()
    drive = argv[argv.index("-drive", argv.index("-drive") + 1) + 1].split(",")
    assert drive[0] == "file=/tmp/ga-vm-x/cdrom.iso"
    assert {"media=cdrom", "readonly=on", "if=none", "format=raw"} <= set(drive)
    assert "scsi-cd,drive=cd0,bus=scsi0.0" in argv


def test_kernel_args_are_appended_one_word_each():
    argv = attrs.evolve(spec(), kernel_args=("ds=nocloud;s=file:///seed/", "quiet")).argv()
    line = argv[argv.index("-append") + 1]
    assert line.startswith(qemu.KERNEL_APPEND + " guestsim.vm=ga-vm-x ")
    assert line.endswith(" ds=nocloud;s=file:///seed/ quiet")
    with pytest.raises(ValueError, match="one word"):
        attrs.evolve(spec(), kernel_args=("two words",))
