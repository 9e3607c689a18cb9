"""The OpenStack provider against real media and the real simulator: config drives (the
simulator's ISO9660 image, a vfat image made by dosfstools) under a fake root, found through
fake sysfs and /dev entries and read without mounting; the metadata service on loopback,
polled; then faults and hostile documents.

Nothing here touches the machine: every root is a tmp tree, images are plain files, the
only network peer is the simulator (or a closed or silent socket) on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.adapters.platforms import registry
from guestagent.adapters.platforms.openstack import (
    DEFAULT_URL,
    FILE_MAX,
    PROVIDER,
    OpenStackMetadata,
    service_urls,
)
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import Config, OpenStack
from guestagent.domain.metadata import NetworkInterface
from guestagent.domain.platforms.openstack import FILES, dmi_says_openstack, openstack
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestsim import load_scenario
from guestsim.media import build_media
from guestsim.media.configdrive import config_drive_files
from guestsim.media.iso import build_iso

from .conftest import DEMO, SCENARIOS

STATIC = SCENARIOS / "static-network.yaml"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
needs_vfat_tools = pytest.mark.skipif(
    shutil.which("mkfs.vfat") is None or shutil.which("mcopy") is None,
    reason="needs mkfs.vfat (Debian package dosfstools) and mcopy (Debian package mtools)",
)
DEMO_UUID_SHAPE = 36


# ------------------------------------------------------------------ helpers


def options(root: Path, url: str | None = None, poll_interval: float = 60.0) -> ProviderOptions:
    config = Config(OpenStack=OpenStack(poll_interval=poll_interval))
    return ProviderOptions(url=url, root=str(root), config=config, backoff_max=0.2)


# Never the real metadata address, even when a test's drive is not found: a closed port.
NOWHERE = "http://127.0.0.1:9/"


def source(root: Path, url: str = NOWHERE, poll_interval: float = 60.0) -> OpenStackMetadata:
    opened = PROVIDER.open(options(root, url, poll_interval))
    assert isinstance(opened, OpenStackMetadata)
    return opened


def block_device(root: Path, name: str, image: Path, partition_of: str | None = None) -> None:
    """ROOT/sys/block/NAME (or a partition under its disk) and ROOT/dev/NAME -> the image."""
    sys_dir = root / "sys/block" / (f"{partition_of}/{name}" if partition_of else name)
    sys_dir.mkdir(parents=True)
    if partition_of:
        (sys_dir / "partition").write_text("1\n")
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev" / name).symlink_to(image)


def vfat_image(path: Path, files: dict[str, bytes], label: str = "config-2") -> Path:
    """A FAT image made by dosfstools and filled by mtools (as Nova's vfat config drive): no mount."""
    subprocess.run(["mkfs.vfat", "-n", label, "-C", str(path), "4096"], check=True, capture_output=True)
    staging = path.parent / (path.name + ".files")
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                made.add(folder)
                subprocess.run(
                    ["mmd", "-i", str(path), f"::{folder}"], check=True, capture_output=True, env=MTOOLS_ENV
                )
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
        subprocess.run(
            ["mcopy", "-i", str(path), str(staging / name), f"::{name}"],
            check=True,
            capture_output=True,
            env=MTOOLS_ENV,
        )
    return path


def demo_drive_files() -> dict[str, bytes]:
    scn = load_scenario(DEMO)
    return config_drive_files(scn)  # type: ignore[arg-type]


def assert_demo(snapshot: Snapshot) -> None:
    md = snapshot.metadata
    assert md.platform == "openstack"
    assert len(md.instance_id) == DEMO_UUID_SHAPE
    assert md.hostname == "demo-vm.c.demo-project.internal"
    assert len(md.ssh_keys) == 3
    assert all(key.user is None for key in md.ssh_keys)
    assert any(key.line.startswith('from="10.0.0.0/8",no-port-forwarding ssh-rsa ') for key in md.ssh_keys)
    assert md.rejections == ()
    assert md.user_data is not None and md.user_data.startswith(b"#cloud-config")
    # The demo's NIC gets its address from DHCP (Nova: ipv4_dhcp): nothing static to configure.
    assert md.network_interfaces == (NetworkInterface(mac="42:01:0a:80:00:02", mtu=1460),)
    assert md.dns_servers == ("169.254.169.254",)
    extras = openstack(md)
    assert (extras.name, extras.availability_zone, extras.project_id) == (
        "demo-vm",
        "us-central1-a",
        "demo-project",
    )
    assert extras.meta["enable-oslogin"] == "false"


def watch_briefly(src: OpenStackMetadata, etag: str | None, seconds: float = 0.3) -> list[Snapshot]:
    """What watch() yields within `seconds`, then close(): the watch must end promptly."""
    got: list[Snapshot] = []
    thread = threading.Thread(target=lambda: got.extend(src.watch(etag)), daemon=True)
    thread.start()
    time.sleep(seconds)
    src.close()
    thread.join(10)
    assert not thread.is_alive(), "watch() did not return after close()"
    return got


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that accepts and never answers (a black-holed metadata address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the registry


def test_openstack_is_registered_with_dmi_local_media_and_a_probe() -> None:
    spec = registry.provider("openstack")
    assert spec is PROVIDER
    assert spec.dmi is dmi_says_openstack
    assert spec.local is not None and spec.probe is not None
    assert spec.default_url == DEFAULT_URL == "http://169.254.169.254/"
    names = [p.name for p in registry.PROVIDERS]
    assert names.index("openstack") < names.index("ec2")  # Nova serves EC2-style metadata too


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://169.254.169.254/", ("http://169.254.169.254/", "http://169.254.169.254/openstack/latest/")),
        ("http://169.254.169.254", ("http://169.254.169.254/", "http://169.254.169.254/openstack/latest/")),
        (
            "http://127.0.0.1:8080/openstack",
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/openstack/latest/"),
        ),
        (
            "http://127.0.0.1:8080/openstack/latest/",
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/openstack/latest/"),
        ),
        (
            "http://127.0.0.1:8080/openstack/2018-08-27",
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/openstack/2018-08-27/"),
        ),
        (
            "http://[fe80::a9fe:a9fe%25eth0]/",
            ("http://[fe80::a9fe:a9fe%25eth0]/", "http://[fe80::a9fe:a9fe%25eth0]/openstack/latest/"),
        ),
    ],
)
def test_service_urls(url: str, expected: tuple[str, str]) -> None:
    assert service_urls(url) == expected


# ------------------------------------------------------------------ config drive


def test_config_drive_iso_found_by_scanning_sysfs(root: Path, images: Path) -> None:
    drive = build_media("config-drive", DEMO, images / "config-2.iso")
    cidata = build_media("nocloud-iso", DEMO, images / "seed.iso")
    blank = images / "blank.img"
    blank.write_bytes(bytes(64 * 1024))
    block_device(root, "sr0", cidata)  # labelled cidata: not ours
    block_device(root, "sr1", drive)
    block_device(root, "vda", blank)
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == "config drive iso9660 volume 'config-2' at /dev/sr1 found"
    src = source(root)  # the service (a closed port) is never asked: the drive comes first
    snapshot = src.get()
    assert_demo(snapshot)
    assert openstack(snapshot.metadata).source == "config drive (iso9660 volume 'config-2' at /dev/sr1)"
    # A config drive does not change: nothing more is yielded, and close() ends the watch.
    assert watch_briefly(src, snapshot.etag) == []


def test_watch_yields_a_config_drive_once_when_the_caller_has_not_seen_it(root: Path, images: Path) -> None:
    block_device(root, "sr0", build_media("config-drive", DEMO, images / "config-2.iso"))
    [snapshot] = watch_briefly(source(root), None)
    assert_demo(snapshot)


def test_config_drive_through_a_udev_by_label_link(root: Path, images: Path) -> None:
    drive = build_media("config-drive", DEMO, images / "config-2.iso")
    (root / "dev/disk/by-label").mkdir(parents=True)
    (root / "dev/sr0").symlink_to(drive)
    (root / "dev/disk/by-label/config-2").symlink_to("../../sr0")
    assert_demo(source(root).get())


@needs_vfat_tools
def test_config_drive_on_vfat(root: Path, images: Path) -> None:
    image = vfat_image(images / "config-2.img", demo_drive_files())
    block_device(root, "vdb", image)
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == "config drive vfat volume 'config-2' at /dev/vdb found"
    snapshot = source(root).get()
    assert_demo(snapshot)
    # The same files give the same tag, whatever carried them.
    iso_root = root.parent / "iso-root"
    block_device(iso_root, "sr0", build_media("config-drive", DEMO, images / "config-2.iso"))
    assert source(iso_root).get().etag == snapshot.etag


def test_a_drive_with_only_an_old_version_is_refused(root: Path, images: Path) -> None:
    files = {k: v for k, v in demo_drive_files().items() if not k.startswith("openstack/latest/")}
    block_device(root, "sr0", build_iso(files, images / "old.iso", "config-2"))
    with pytest.raises(MetadataUnavailable, match=r"has no openstack/latest/meta_data\.json"):
        source(root).get()


def test_oversized_files_on_a_drive(root: Path, images: Path) -> None:
    files = demo_drive_files()
    files["openstack/latest/user_data"] = b"#" * (FILE_MAX + 1)
    block_device(root, "sr0", build_iso(files, images / "big-user-data.iso", "config-2"))
    md = source(root).get().metadata
    assert md.user_data is None
    assert [(r.where, r.concerns) for r in md.held("scripts")] == [("user_data", "scripts")]
    assert len(md.ssh_keys) == 3

    files["openstack/latest/meta_data.json"] = b'{"uuid": "x", "pad": "' + b"#" * (10 * 1024 * 1024) + b'"}'
    block_device(root, "sr1", build_iso(files, images / "big-meta.iso", "config-2"))
    os.remove(root / "dev/sr0")  # only the second drive
    with pytest.raises(MetadataUnavailable, match=r"meta_data\.json is larger than 1048576 bytes"):
        source(root).get()


# ------------------------------------------------------------------ metadata service


def test_metadata_service(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) is None
    snapshot = source(root, url=sim.url("openstack")).get()
    assert_demo(snapshot)
    assert openstack(snapshot.metadata).source == f"metadata service at {sim.url('openstack')}"
    asked = [r["path"] for r in sim.requests()]
    assert asked == [f"/openstack/latest/{name}" for name in FILES]


@pytest.mark.parametrize("form", ["http://127.0.0.1:{port}/", "http://127.0.0.1:{port}/openstack"])
def test_metadata_url_forms(make_simulator: Any, root: Path, form: str) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    assert_demo(source(root, url=form.format(port=sim.port)).get())


def test_a_static_network_over_the_service(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(STATIC, platforms=("openstack",))
    md = source(root, url=sim.url("openstack")).get().metadata
    first, second = md.network_interfaces
    assert first == NetworkInterface(
        mac="52:54:00:12:34:56",
        ip="192.0.2.10",
        prefix_length=24,
        ipv6=("2001:db8::10",),
        gateway="192.0.2.1",
        gateway6="2001:db8::1",
        mtu=1500,
        dns_servers=("192.0.2.53", "2001:db8::53"),
        static=True,
        addresses=("192.0.2.10/24", "2001:db8::10/64"),
    )
    assert (second.static, second.addresses, second.gateway) == (True, ("10.10.0.10/16",), None)
    assert md.dns_servers == ("192.0.2.53", "2001:db8::53")
    assert [key.user for key in md.ssh_keys] == [None]
    assert md.rejections == ()


def test_absent_optional_files_are_read_as_absent(make_simulator: Any, root: Path) -> None:
    sim = make_simulator("minimal.yaml", platforms=("openstack",))
    sim.delete("vendor_data2.json", platform="openstack")
    sim.delete("network_data.json", platform="openstack")
    md = source(root, url=sim.url("openstack")).get().metadata
    assert (md.network_interfaces, md.vendor_data, md.rejections) == ((), None, ())
    assert openstack(md).vendor_data2 is None


def test_vendor_data_over_the_service(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    sim.set("vendor_data.json", {"cloud-init": "#cloud-config\nruncmd: [true]\n"}, platform="openstack")
    sim.set("vendor_data2.json", {"inventory": {"rack": "b12"}}, platform="openstack")
    md = source(root, url=sim.url("openstack")).get().metadata
    assert md.vendor_data == b"#cloud-config\nruncmd: [true]\n"
    assert openstack(md).vendor_data2["inventory"]["rack"] == "b12"  # type: ignore[index]
    assert md.user_data is not None and md.user_data.startswith(b"#cloud-config")


def test_the_service_is_polled_and_changes_are_yielded(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    src = source(root, url=sim.url("openstack"), poll_interval=0.1)
    first = src.get()
    got: queue.Queue[Snapshot] = queue.Queue()

    def follow() -> None:
        for snapshot in src.watch(first.etag):
            got.put(snapshot)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        time.sleep(0.4)
        assert got.empty()  # unchanged: nothing yielded
        sim.set("meta_data.json/meta/role", "db", platform="openstack")
        changed = got.get(timeout=10)
        assert openstack(changed.metadata).meta["role"] == "db"
        assert changed.etag != first.etag
    finally:
        src.close()
        thread.join(10)
    assert not thread.is_alive()


def test_service_failures_are_retried_by_watch(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    sim.add_fault("meta_data.json", kind="status", status=503, count=2, platform="openstack")
    src = source(root, url=sim.url("openstack"))
    with pytest.raises(MetadataUnavailable, match=r"meta_data\.json answered HTTP 503"):
        src.get()
    got: queue.Queue[Snapshot] = queue.Queue()
    thread = threading.Thread(target=lambda: [got.put(s) for s in src.watch(None)], daemon=True)
    thread.start()
    try:
        assert_demo(got.get(timeout=20))
    finally:
        src.close()
        thread.join(10)
    assert not thread.is_alive()


# ------------------------------------------------------------------ faults and hostile documents


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"kind": "status", "status": 500}, "answered HTTP 500"),
        ({"kind": "html"}, "answered an HTML page"),
        ({"kind": "truncate"}, "cut short"),
        ({"kind": "reset"}, "unreachable|cut short"),
        (
            {"kind": "body", "body": "<html>portal</html>", "content_type": "text/plain"},
            "answered an HTML page",
        ),
        ({"kind": "body", "body": "[" * 5000 + "]" * 5000}, "nested deeper than 64 levels"),
        ({"kind": "body", "body": '{"hostname": "h"}'}, "has no uuid"),
        ({"kind": "body", "body": "[]"}, "a JSON array, not an object"),
    ],
)
def test_an_unusable_meta_data_is_retried_like_a_server_that_is_down(
    make_simulator: Any, root: Path, fault: dict[str, Any], reason: str
) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    sim.add_fault("meta_data.json", platform="openstack", **fault)
    with pytest.raises(MetadataUnavailable, match=reason):
        source(root, url=sim.url("openstack")).get()


@pytest.mark.parametrize("user_data", ["#!/bin/sh\necho hello\n" * 20, None])
@pytest.mark.parametrize(
    ("kind", "params"), [("truncate", {"fraction": 0.3}), ("reset", {}), ("status", {"status": 503})]
)
def test_one_file_failing_makes_the_whole_snapshot_unavailable(
    make_simulator: Any, root: Path, user_data: str | None, kind: str, params: dict[str, Any]
) -> None:
    """All or nothing: user_data cut short (or its 404 cut short, when there is none) is no
    snapshot, not meta_data.json's keys without it."""
    sim = make_simulator(DEMO, platforms=("openstack",))
    if user_data is None:
        sim.delete("user_data", platform="openstack")
    else:
        sim.set("user_data", user_data, platform="openstack")
    sim.add_fault("*/user_data", kind, platform="openstack", **params)
    with pytest.raises(MetadataUnavailable, match=r"user_data|unreachable"):
        source(root, url=sim.url("openstack")).get()


def test_network_data_of_the_wrong_shape_holds_only_the_network(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(STATIC, platforms=("openstack",))
    sim.add_fault(
        "network_data.json",
        platform="openstack",
        kind="body",
        body=json.dumps({"links": {"id": "tap0"}, "networks": [], "services": []}),
    )
    md = source(root, url=sim.url("openstack")).get().metadata
    assert md.network_interfaces == ()
    assert {(r.where, r.concerns) for r in md.rejections if r.holds} == {
        ("network_data.json links", "network"),
        ("network_data.json links", "nics"),
        ("network_data.json links", "hostname"),
    }
    assert [key.user for key in md.ssh_keys] == [None]


def test_an_html_network_data_refuses_the_snapshot(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    sim.add_fault("network_data.json", platform="openstack", kind="html")
    with pytest.raises(MetadataUnavailable, match=r"network_data\.json answered an HTML page"):
        source(root, url=sim.url("openstack")).get()


def test_ten_megabytes_over_the_service(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    keys = source(root, url=sim.url("openstack")).get().metadata.ssh_keys
    sim.set("user_data", "#" * (10 * 1024 * 1024), platform="openstack")
    md = source(root, url=sim.url("openstack")).get().metadata
    assert md.user_data is None
    reason = f"user_data is larger than {FILE_MAX} bytes ({10 * 1024 * 1024} bytes); kept as it was"
    assert [r.reason for r in md.held("scripts")] == [reason]
    assert [r.reason for r in md.held("firstboot")] == [reason]
    assert md.ssh_keys == keys  # the keys of the same snapshot still apply
    sim.set("meta_data.json/pad", "#" * (10 * 1024 * 1024), platform="openstack")
    with pytest.raises(MetadataUnavailable, match=r"meta_data\.json is larger than 1048576 bytes"):
        source(root, url=sim.url("openstack")).get()


def test_a_silent_service_costs_the_timeout_not_more(root: Path, silent_port: int) -> None:
    src = OpenStackMetadata(root=str(root), url=f"http://127.0.0.1:{silent_port}/", timeout=(0.5, 0.5))
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable, match="did not answer within"):
        src.get()
    assert time.monotonic() - started < 30
    src.close()


# ------------------------------------------------------------------ the probe


def test_probe_finds_the_service(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    assert PROVIDER.probe is not None
    reason = PROVIDER.probe(options(root, url=sim.url("openstack")), 5.0)
    assert reason == f"OpenStack metadata service answered at 127.0.0.1:{sim.port}"
    assert [r["path"] for r in sim.requests()] == ["/openstack"]


def test_probe_says_no_to_other_platforms(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("ec2", "gce"))
    assert PROVIDER.probe is not None
    assert PROVIDER.probe(options(root, url=f"http://127.0.0.1:{sim.port}/"), 5.0) is None


@pytest.mark.parametrize(
    "fault",
    [{"kind": "html"}, {"kind": "status", "status": 500}, {"kind": "body", "body": "hello\nworld\n"}],
)
def test_probe_says_no_to_a_wrong_answer(make_simulator: Any, root: Path, fault: dict[str, Any]) -> None:
    sim = make_simulator(DEMO, platforms=("openstack",))
    sim.add_fault("/openstack", platform="openstack", **fault)
    assert PROVIDER.probe is not None
    assert PROVIDER.probe(options(root, url=sim.url("openstack")), 5.0) is None


def test_probe_is_bounded(root: Path, silent_port: int, closed_port: int) -> None:
    assert PROVIDER.probe is not None
    assert PROVIDER.probe(options(root, url=f"http://127.0.0.1:{closed_port}/"), 2.0) is None
    started = time.monotonic()
    assert PROVIDER.probe(options(root, url=f"http://127.0.0.1:{silent_port}/"), 1.0) is None
    assert time.monotonic() - started < 30
