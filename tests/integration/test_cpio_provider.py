"""The CPIO metadata device's transport on a temporary root: whole disks under sys/block, their
nodes under dev (image files standing in for devices), archives GNU cpio and guestsim's media
builder wrote, detection, and `guestagent run --once` in a sandbox root."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from guestagent.adapters.platforms import cpio as transport
from guestagent.adapters.platforms.detect import detect
from guestagent.adapters.platforms.registry import NAMES
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.platforms.cpio import cpio
from guestagent.ports.metadata import MetadataUnavailable
from guestsim.media import build_media
from tests.integration.conftest import AGENT, read
from tests.keys import ED25519, ED25519_BOB
from tests.unit.test_cpio_archive import newc, newc_archive

UUID = "8f1d3b4e-2a6c-4d8e-9b1a-0c2d3e4f5a6b"
needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) missing")


def add_disk(root: Path, name: str, data: bytes, *, size: str | None = None,
             partitions: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """sys/block/NAME (+ partitions) and dev/NAME holding `data`, as udev and sysfs show a disk."""
    sys_dir = root / "sys/block" / name
    sys_dir.mkdir(parents=True)
    if size is not None:
        (sys_dir / "size").write_text(size + "\n")
    node = root / "dev" / name
    node.parent.mkdir(parents=True, exist_ok=True)
    node.write_bytes(data)
    for part, body in (partitions or {}).items():
        (sys_dir / part).mkdir()
        (sys_dir / part / "partition").write_text("1\n")
        (root / "dev" / part).write_bytes(body)
    return node


def device_bytes(**files: bytes) -> bytes:
    data = newc_archive(*(newc(name, body) for name, body in files.items()))
    return data + b"\0" * (64 * 1024)


def set_uuid(root: Path, value: str) -> None:
    path = root / "sys/class/dmi/id/product_uuid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "guest"
    # The guest's own disk (an MBR, not cpio), a floppy and an empty loop device that are skipped.
    add_disk(base, "sda", b"\xeb\x63\x90" + b"\0" * 507 + b"\x55\xaa", partitions={"sda1": b"070701junk"})
    add_disk(base, "fd0", b"070701")
    add_disk(base, "loop0", b"", size="0")
    return base


def test_reads_the_device_and_names_it(root: Path) -> None:
    add_disk(root, "vdb", device_bytes(nodename=b"web-1\n", authorized_keys=f"{ED25519}\n".encode(),
                                       **{"config.toml": b"[network]\nskip = true\n"}))  # fmt: skip
    set_uuid(root, UUID.upper())
    snapshot = transport.CpioMetadata(root=str(root)).get()
    md = snapshot.metadata
    assert (md.platform, md.instance_id, md.hostname) == ("cpio", UUID, "web-1")
    assert [(k.user, k.line) for k in md.ssh_keys] == [("root", ED25519)]
    extras = cpio(md)
    assert (extras.device, extras.network_skip, extras.identity) == ("/dev/vdb", True, "smbios")
    # Same device, same tag; the tag follows the archive, not the zeros after it.
    assert transport.CpioMetadata(root=str(root)).get().etag == snapshot.etag


def test_a_partition_holding_cpio_is_not_the_device(root: Path) -> None:
    with pytest.raises(MetadataUnavailable, match="no whole disk starts with a cpio archive"):
        transport.CpioMetadata(root=str(root)).get()
    assert transport._local(ProviderOptions(root=str(root))) is None


@needs_cpio
@pytest.mark.parametrize("fmt", ["bin", "odc", "newc", "crc"])
def test_archives_written_by_gnu_cpio(root: Path, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "nodename").write_text("gnu-host\n")
    (src / "firstboot.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "firstboot.sh").chmod(0o755)
    # `find . | cpio -o`: the "." directory entry and "./" names, as users make them.
    names = subprocess.run(["find", "."], cwd=src, capture_output=True, check=True).stdout
    out = subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=src, input=names, capture_output=True,
                         check=True).stdout  # fmt: skip
    add_disk(root, "vdb", out)
    md = transport.CpioMetadata(root=str(root)).get().metadata
    assert md.hostname == "gnu-host"
    assert md.scripts["firstboot"][0].value == "#!/bin/sh\necho hi\n"
    assert md.instance_id.startswith("cpio-")  # no product_uuid under this root


def test_guestsim_media_builder_device(root: Path, tmp_path: Path) -> None:
    scenario = {
        "instance": {"name": "cpio-vm"},
        "users": [{"name": "alice", "keys": [{"key": ED25519}]}, {"name": "bob", "keys": [{"key": ED25519_BOB}]}],
        "scripts": {"startup": "#!/bin/sh\necho first boot\n"},
        "network": {"interfaces": [{"ip": "10.0.0.5/24", "dhcp": False}]},
    }
    image = build_media("cpio", scenario, tmp_path / "md.img")
    add_disk(root, "vdb", image.read_bytes(), size=str(image.stat().st_size // 512))
    md = transport.CpioMetadata(root=str(root)).get().metadata
    assert md.hostname == "cpio-vm"
    assert [(k.user, k.line) for k in md.ssh_keys] == [("root", ED25519), ("root", ED25519_BOB)]
    assert md.scripts["firstboot"][0].value == "#!/bin/sh\necho first boot\n"
    assert cpio(md).network_skip is True
    assert md.rejections == ()


def test_a_malformed_device_is_logged_once_and_the_next_one_used(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_disk(root, "vdb", newc_archive(newc("nodename", b"/etc/shadow", mode=0o120777)) + b"\0" * 512)
    source = transport.CpioMetadata(root=str(root))
    caplog.set_level(logging.INFO)
    with pytest.raises(MetadataUnavailable, match=r"no usable CPIO metadata device \(/dev/vdb refused\)"):
        source.get()
    with pytest.raises(MetadataUnavailable):
        source.get()
    assert caplog.text.count("CPIO device /dev/vdb ignored: its archive is refused") == 1
    assert "symbolic link" in caplog.text
    add_disk(root, "vdc", device_bytes(nodename=b"good\n"))
    assert source.get().metadata.hostname == "good"
    assert caplog.text.count("CPIO device /dev/vdb ignored") == 1


def test_reads_only_as_much_as_it_needs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = b"#!/bin/sh\n" + b"# pad\n" * 30_000  # ~180 KiB: more than the first 64 KiB read
    add_disk(root, "vdb", device_bytes(**{"firstboot.sh": big}) + b"\0" * (32 * 1024 * 1024))
    asked: list[int] = []
    real = transport._Device.read

    def recording(self: transport._Device, size: int) -> bytes:
        asked.append(size)
        return real(self, size)

    monkeypatch.setattr(transport._Device, "read", recording)
    md = transport.CpioMetadata(root=str(root)).get().metadata
    assert md.scripts["firstboot"][0].value.encode() == big
    # sda: its magic only; vdb: its magic, the first 64 KiB, then the bound.
    assert asked == [6, 6, transport.FIRST_READ, transport.READ_MAX]
    assert transport.READ_MAX < 10 * 1024 * 1024  # the bound, never the 32 MiB device


def test_an_oversized_file_refuses_the_device(root: Path) -> None:
    add_disk(root, "vdb", device_bytes(**{"firstboot.sh": b"#!/bin/sh\n" + b"x" * (1024 * 1024)}))
    with pytest.raises(MetadataUnavailable, match="refused"):
        transport.CpioMetadata(root=str(root)).get()


def test_watch_yields_once_then_waits_for_close(root: Path) -> None:
    source = transport.CpioMetadata(root=str(root), backoff_max=0.2)
    got: list[str] = []
    done = threading.Event()

    def follow() -> None:
        for snapshot in source.watch(None):
            got.append(snapshot.metadata.hostname)
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    # No device yet (udev late at boot): the watch retries until one appears.
    add_disk(root, "vdb", device_bytes(nodename=b"late\n"))
    deadline = threading.Event()
    for _ in range(600):
        if got:
            break
        deadline.wait(0.1)
    assert got == ["late"]
    assert not done.wait(0.5)  # media do not change: it waits
    source.close()
    assert done.wait(30)
    assert got == ["late"]


def test_watch_with_the_same_etag_yields_nothing(root: Path) -> None:
    add_disk(root, "vdb", device_bytes(nodename=b"h\n"))
    source = transport.CpioMetadata(root=str(root))
    etag = source.get().etag
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.extend(source.watch(etag)), daemon=True)
    thread.start()
    thread.join(0.5)
    source.close()
    thread.join(30)
    assert not thread.is_alive() and result == []


def test_detection_finds_the_device_by_its_local_hint(root: Path) -> None:
    add_disk(root, "vdb", device_bytes(nodename=b"h\n"))
    assert "cpio" in NAMES
    found = detect(ProviderOptions(root=str(root), url="http://127.0.0.1:9/"), timeout=30)
    assert found.spec.name == "cpio"
    assert found.reason == "newc cpio archive at LBA 0 of /dev/vdb"


# ------------------------------------------------------------------ the whole agent, in a sandbox root


@pytest.mark.root
def test_run_once_in_a_sandbox(sandbox: Path) -> None:
    add_disk(sandbox, "vdb", device_bytes(nodename=b"cpio-host\n", authorized_keys=f"{ED25519}\n".encode()))
    config = sandbox / "etc/default/instance_configs.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    # Root is a system account: without this (or the change to accounts the CPIO platform
    # asks for), its keys are refused like any platform's.
    config.write_text("[Accounts]\nallowed_system_users = root\n")
    done = subprocess.run([*AGENT, "run", "--once", "--root", str(sandbox), "--platform", "auto"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "platform cpio: newc cpio archive at LBA 0 of /dev/vdb" in done.stderr
    assert "authorized_keys gives 1 key(s) to root" in done.stderr
    assert read(sandbox / "etc/hostname") == "cpio-host\n"
    keys = read(sandbox / "root/.ssh/authorized_keys") or ""
    assert f"# Added by guestagent\n{ED25519}\n" in keys
    assert read(sandbox / "var/lib/guestagent/cpio_users") == "root\n"
