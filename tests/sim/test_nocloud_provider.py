"""The NoCloud provider against real seeds: a seed directory, cidata ISO and vfat volumes
under a fake root (found through fake sysfs and /dev entries, read without mounting), and
the simulator's `ds=nocloud;s=URL` seed over HTTP; then hostile seeds.

Nothing here touches the machine: every root is a tmp tree, images are plain files, the
only network peer is the simulator on 127.0.0.1.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.adapters import media
from guestagent.adapters.platforms import registry
from guestagent.adapters.platforms.nocloud import FILE_MAX, FILES, PROVIDER, NoCloudMetadata
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import Config, NoCloud
from guestagent.domain.platforms.nocloud import nocloud
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestsim import load_scenario
from guestsim.media import build_media
from guestsim.media.iso import build_iso
from guestsim.platforms.nocloud import seed_files

from .conftest import DEMO

SEED_DIR = NoCloud().seed_dir
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
needs_vfat_tools = pytest.mark.skipif(
    shutil.which("mkfs.vfat") is None or shutil.which("mcopy") is None,
    reason="needs mkfs.vfat (Debian package dosfstools) and mcopy (Debian package mtools)",
)


# ------------------------------------------------------------------ helpers


def demo_files() -> dict[str, bytes]:
    scn = load_scenario(DEMO)
    return {name: text.encode() for name, text in seed_files(scn).items()}  # type: ignore[arg-type]


def options(root: Path, url: str | None = None, poll_interval: float = 60.0) -> ProviderOptions:
    config = Config(NoCloud=NoCloud(poll_interval=poll_interval))
    return ProviderOptions(url=url, root=str(root), config=config, backoff_max=0.2)


def source(root: Path, url: str | None = None, poll_interval: float = 60.0) -> NoCloudMetadata:
    opened = PROVIDER.open(options(root, url, poll_interval))
    assert isinstance(opened, NoCloudMetadata)
    return opened


def block_device(root: Path, name: str, image: Path, partition_of: str | None = None) -> None:
    """ROOT/sys/block/NAME (or a partition under its disk) and ROOT/dev/NAME -> the image."""
    sys_dir = root / "sys/block" / (f"{partition_of}/{name}" if partition_of else name)
    sys_dir.mkdir(parents=True)
    if partition_of:
        (sys_dir / "partition").write_text("1\n")
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev" / name).symlink_to(image)


def seed_dir(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / SEED_DIR.lstrip("/")
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def vfat_image(path: Path, files: dict[str, bytes], fat: int = 12, label: str = "CIDATA") -> Path:
    """A FAT image made by dosfstools and filled by mtools: no mount."""
    size_kib = {12: 2048, 16: 20480, 32: 40960}[fat]
    subprocess.run(
        ["mkfs.vfat", "-F", str(fat), "-n", label, "-C", str(path), str(size_kib)],
        check=True,
        capture_output=True,
    )
    staging = path.parent / (path.name + ".files")
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if not (staging / folder).exists():
                (staging / folder).mkdir(parents=True)
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


def assert_demo(snapshot: Snapshot) -> None:
    md = snapshot.metadata
    assert md.platform == "nocloud"
    assert md.instance_id == "iid-4520031799277581759"
    assert md.hostname == "demo-vm"
    assert len(md.ssh_keys) == 3
    assert all(key.user is None for key in md.ssh_keys)
    assert md.rejections == ()
    assert md.user_data is not None and md.user_data.startswith(b"#cloud-config")
    assert md.vendor_data is None
    network: Any = nocloud(md).network_config
    assert network["version"] == 2
    assert network["ethernets"]["eth0"]["match"]["macaddress"] == "42:01:0a:80:00:02"


def watch_briefly(src: NoCloudMetadata, etag: str | None, expect: int = 0) -> list[Snapshot]:
    """What watch() yields (waiting for `expect` snapshots, then a little more), then close():
    the watch must end promptly."""
    got: list[Snapshot] = []
    thread = threading.Thread(target=lambda: got.extend(src.watch(etag)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(got) < expect and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    src.close()
    thread.join(5)
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


# ------------------------------------------------------------------ the registry


def test_nocloud_is_registered_without_dmi_or_probe() -> None:
    spec = registry.provider("nocloud")
    assert spec is PROVIDER
    assert (spec.dmi, spec.probe, spec.default_url) == (None, None, None)


# ------------------------------------------------------------------ seed directory


def test_seed_directory(root: Path) -> None:
    build_media("nocloud-dir", DEMO, root / SEED_DIR.lstrip("/"))
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == f"seed directory {SEED_DIR} holds meta-data"
    src = source(root)
    snapshot = src.get()
    assert_demo(snapshot)
    assert nocloud(snapshot.metadata).source == f"seed directory {SEED_DIR}"
    # A local seed does not change: nothing more is yielded, and close() ends the watch.
    assert watch_briefly(src, snapshot.etag) == []


def test_watch_yields_a_local_seed_once_when_the_caller_has_not_seen_it(root: Path) -> None:
    seed_dir(root, demo_files())
    src = source(root)
    [snapshot] = watch_briefly(src, None, expect=1)
    assert_demo(snapshot)


def test_nothing_found(root: Path) -> None:
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) is None
    with pytest.raises(MetadataUnavailable, match="no NoCloud seed"):
        source(root).get()


# ------------------------------------------------------------------ cidata ISO


def test_cidata_iso_found_by_scanning_sysfs(root: Path, images: Path) -> None:
    iso = build_media("nocloud-iso", DEMO, images / "seed.iso")
    other = build_media("config-drive", DEMO, images / "config-2.iso")
    blank = images / "blank.img"
    blank.write_bytes(bytes(64 * 1024))
    block_device(root, "sr0", other)  # labelled config-2: not ours
    block_device(root, "sr1", iso)
    block_device(root, "vda", blank)
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == "iso9660 volume 'cidata' at /dev/sr1 found"
    snapshot = source(root).get()
    assert_demo(snapshot)
    # The same files give the same tag, whatever carried them.
    seed_root = root.parent / "dir-root"
    seed_dir(seed_root, demo_files())
    assert source(seed_root).get().etag == snapshot.etag


def test_cidata_iso_found_through_udev_by_label_link(root: Path, images: Path) -> None:
    iso = build_media("nocloud-iso", DEMO, images / "seed.iso")
    (root / "dev/disk/by-label").mkdir(parents=True)
    (root / "dev/sr0").symlink_to(iso)
    # udev's links are relative; an absolute one is read under the root, not the host's /dev.
    (root / "dev/disk/by-label/CIDATA").symlink_to("/dev/sr0")
    volume = media.find_volume(str(root), ["cidata"])
    assert volume is not None
    assert (volume.device, volume.fs, volume.label) == (str(root / "dev/sr0"), "iso9660", "cidata")
    assert_demo(source(root).get())


def test_an_empty_drive_is_skipped(root: Path, images: Path) -> None:
    (root / "sys/block/sr0").mkdir(parents=True)
    (root / "sys/block/sr0/size").write_text("0\n")
    (root / "dev").mkdir()
    (root / "dev/sr0").symlink_to(build_media("nocloud-iso", DEMO, images / "seed.iso"))
    assert media.find_volume(str(root), ["cidata"]) is None


def test_media_reader_reads_nested_iso_paths(images: Path) -> None:
    iso = build_media("config-drive", DEMO, images / "config-2.iso")
    with media.open_volume(media.Volume(str(iso), "iso9660", "config-2")) as reader:
        data = reader.read("openstack/latest/meta_data.json", FILE_MAX)
        assert data is not None and b"demo-vm" in data
        assert reader.read("openstack/latest", FILE_MAX) is None  # a directory
        assert reader.read("openstack/nope/meta_data.json", FILE_MAX) is None
        with pytest.raises(media.FileTooLarge):
            reader.read("openstack/latest/meta_data.json", 10)


# ------------------------------------------------------------------ cidata vfat


@needs_vfat_tools
@pytest.mark.parametrize("fat", [12, 16, 32])
def test_cidata_vfat_partition(root: Path, images: Path, fat: int) -> None:
    image = vfat_image(images / f"fat{fat}.img", demo_files(), fat=fat)
    block_device(root, "vdb1", image, partition_of="vdb")
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == "vfat volume 'CIDATA' at /dev/vdb1 found"
    snapshot = source(root).get()
    assert_demo(snapshot)
    assert nocloud(snapshot.metadata).source == "vfat volume 'CIDATA' at /dev/vdb1"


@needs_vfat_tools
def test_vfat_reader_follows_fragmented_chains_and_subdirectories(images: Path) -> None:
    image = images / "frag.img"
    small, large = os.urandom(5000), os.urandom(300_000)
    vfat_image(image, {"a.bin": small, "b.bin": small, "openstack/latest/meta_data.json": b"{}"})
    subprocess.run(["mdel", "-i", str(image), "::a.bin"], check=True, env=MTOOLS_ENV)
    (images / "large").write_bytes(large)
    subprocess.run(
        ["mcopy", "-i", str(image), str(images / "large"), "::user-data"], check=True, env=MTOOLS_ENV
    )  # fills a.bin's hole first, then continues after b.bin
    with media.open_volume(media.Volume(str(image), "vfat", "CIDATA")) as reader:
        assert reader.read("user-data", FILE_MAX) == large
        assert reader.read("USER-DATA", FILE_MAX) == large  # FAT names are case-insensitive
        assert reader.read("b.bin", FILE_MAX) == small
        assert reader.read("openstack/latest/meta_data.json", FILE_MAX) == b"{}"
        assert reader.read("a.bin", FILE_MAX) is None
        with pytest.raises(media.FileTooLarge, match="user-data is larger than 1000 bytes"):
            reader.read("user-data", 1000)


@needs_vfat_tools
def test_a_lower_case_vfat_label_is_found(root: Path, images: Path) -> None:
    image = vfat_image(images / "lower.img", demo_files(), label="cidata")
    block_device(root, "vdc", image)
    assert_demo(source(root).get())


@needs_vfat_tools
def test_a_looping_fat_chain_is_refused(images: Path) -> None:
    image = vfat_image(images / "loop.img", {"meta-data": b"instance-id: i\n" * 2000}, fat=16)
    with media.open_volume(media.Volume(str(image), "vfat", "CIDATA")) as reader:
        fat: Any = reader
        entry = fat._lookup("meta-data")
        second = fat._next(entry.cluster)
        offset = fat.bpb.reserved * fat.bpb.sector + second * 2
    with open(image, "r+b") as f:  # the second cluster points back at the first
        f.seek(offset)
        f.write(entry.cluster.to_bytes(2, "little"))
    with (
        media.open_volume(media.Volume(str(image), "vfat", "CIDATA")) as reader,
        pytest.raises(media.MediaError, match="loops"),
    ):
        reader.read("meta-data", FILE_MAX)


# ------------------------------------------------------------------ order of sources


def test_seed_directory_comes_before_a_volume(root: Path, images: Path) -> None:
    seed_dir(root, {"meta-data": b"instance-id: from-dir\n"})
    block_device(root, "sr0", build_media("nocloud-iso", DEMO, images / "seed.iso"))
    assert source(root).get().metadata.instance_id == "from-dir"


def test_a_volume_comes_before_the_command_line(root: Path, images: Path) -> None:
    block_device(root, "sr0", build_media("nocloud-iso", DEMO, images / "seed.iso"))
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("ro ds=nocloud;s=http://127.0.0.1:9/\n")
    assert source(root).get().metadata.instance_id == "iid-4520031799277581759"


def test_command_line_overrides_instance_id_and_hostname(root: Path) -> None:
    seed_dir(root, demo_files())
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("ro ds=nocloud;i=iid-cmdline;h=from-cmdline\n")
    md = source(root).get().metadata
    assert (md.instance_id, md.hostname) == ("iid-cmdline", "from-cmdline")


def test_seedfrom_may_name_a_local_directory(root: Path) -> None:
    folder = root / "srv/seed"
    folder.mkdir(parents=True)
    for name, data in demo_files().items():
        (folder / name).write_bytes(data)
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("ds=nocloud;s=file:///srv/seed/\n")
    assert_demo(source(root).get())


# ------------------------------------------------------------------ seed URL (simulator)


@pytest.mark.parametrize("spelling", ["ds=nocloud;s={url}", "ds=nocloud-net;seedfrom={url}"])
def test_seed_url_from_the_command_line(make_simulator: Any, root: Path, spelling: str) -> None:
    sim = make_simulator(DEMO, platforms=("nocloud",))
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text(f"BOOT_IMAGE=/vmlinuz ro {spelling.format(url=sim.url('nocloud'))}\n")
    assert PROVIDER.local is not None
    assert PROVIDER.local(options(root)) == f"{spelling.split(';')[0]} on the kernel command line"
    snapshot = source(root).get()
    assert_demo(snapshot)
    asked = {r["path"] for r in sim.requests()}
    assert asked == {f"/nocloud/{name}" for name in FILES}  # vendor-data: 404, read as absent


def test_metadata_url_overrides_the_command_lines_url(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("nocloud",))
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("ds=nocloud;s=http://127.0.0.1:9/elsewhere/\n")
    url = sim.url("nocloud").rstrip("/")  # the missing "/" is added, as cloud-init does
    assert_demo(source(root, url=url).get())


def test_seed_url_is_polled_and_changes_are_yielded(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("nocloud",))
    src = source(root, url=sim.url("nocloud"), poll_interval=0.1)
    first = src.get()
    got: queue.Queue[Snapshot] = queue.Queue()

    def follow() -> None:
        for snapshot in src.watch(first.etag):
            got.put(snapshot)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        assert got.empty()  # unchanged: nothing yielded
        sim.set(
            "meta-data", "instance-id: iid-4520031799277581759\nlocal-hostname: renamed\n", platform="nocloud"
        )
        changed = got.get(timeout=5)
        assert changed.metadata.hostname == "renamed"
        assert changed.etag != first.etag
    finally:
        src.close()
        thread.join(5)
    assert not thread.is_alive()


def test_seed_url_failures_are_retried(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("nocloud",))
    sim.add_fault("/nocloud/meta-data", kind="status", status=503, count=1)
    src = source(root, url=sim.url("nocloud"))
    with pytest.raises(MetadataUnavailable, match="HTTP 503"):
        src.get()
    assert_demo(src.get())


# ------------------------------------------------------------------ hostile seeds


HOSTILE_META = {
    "deep flow nesting": ("[" * 100_000, "nested too deeply"),
    "deep block nesting": ("- " * 20_000 + "x\n", "nested too deeply"),
    "missing instance-id": ("local-hostname: h\n", "no instance-id"),
    "not YAML": ("instance-id: [unclosed\n", r"not valid YAML \(line"),
    "billion laughs": (
        "instance-id: i\n"
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(
            f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join(['*' + chr(97 + n)] * 9)}]\n" for n in range(8)
        ),
        "aliases",
    ),
    "a million-digit integer": ("instance-id: " + "9" * 500_000 + "\n", "YAML cannot build"),
    "ten megabytes": ("instance-id: i\n" + "#" * (10 * 1024 * 1024) + "\n", "larger than 1048576 bytes"),
    "python object tag": ("instance-id: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_META))
def test_hostile_meta_data_is_refused_with_a_reason(root: Path, case: str) -> None:
    text, reason = HOSTILE_META[case]
    seed_dir(root, {"meta-data": text.encode(), "user-data": b""})
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable, match=reason) as refused:
        source(root).get()
    assert f"seed directory {SEED_DIR}" in str(refused.value)
    assert time.monotonic() - started < 30


def test_hostile_network_config_holds_only_the_network(root: Path) -> None:
    files = demo_files()
    files["network-config"] = HOSTILE_META["billion laughs"][0].encode()
    seed_dir(root, files)
    md = source(root).get().metadata
    assert len(md.ssh_keys) == 3
    assert {(r.where, r.concerns) for r in md.held("nics") + md.held("routes")} == {
        ("network-config", "nics"),
        ("network-config", "routes"),
    }


def test_oversized_user_data_holds_scripts_but_keys_are_read(root: Path) -> None:
    files = demo_files()
    files["user-data"] = b"#" * (FILE_MAX + 1)
    seed_dir(root, files)
    md = source(root).get().metadata
    assert md.user_data is None
    assert [r.reason for r in md.held("scripts")] == [
        f"user-data is larger than {FILE_MAX} bytes ({FILE_MAX + 1} bytes); kept as it was"
    ]
    assert len(md.ssh_keys) == 3


def test_a_fifo_as_meta_data_is_refused_without_hanging(root: Path) -> None:
    folder = seed_dir(root, {})
    os.mkfifo(folder / "meta-data")
    with pytest.raises(MetadataUnavailable, match="not a regular file"):
        source(root).get()


def test_ten_megabytes_of_meta_data_over_http(make_simulator: Any, root: Path) -> None:
    sim = make_simulator(DEMO, platforms=("nocloud",))
    sim.set("meta-data", "instance-id: i\n" + "#" * (10 * 1024 * 1024), platform="nocloud")
    with pytest.raises(MetadataUnavailable, match="meta-data is larger than 1048576 bytes"):
        source(root, url=sim.url("nocloud")).get()


def test_ten_megabytes_of_meta_data_on_an_iso(root: Path, images: Path) -> None:
    files = demo_files()
    files["meta-data"] = b"instance-id: i\n" + b"#" * (10 * 1024 * 1024)
    block_device(root, "sr0", build_iso(files, images / "big.iso", "cidata"))
    with pytest.raises(MetadataUnavailable, match="meta-data is larger than 1048576 bytes"):
        source(root).get()


# ------------------------------------------------------------------ damaged images


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("pristine")
    out = {"iso": build_media("nocloud-iso", DEMO, folder / "seed.iso").read_bytes()}
    if shutil.which("mkfs.vfat") and shutil.which("mcopy"):
        out["vfat"] = vfat_image(folder / "seed.img", demo_files()).read_bytes()
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("damaged") / "image"


def _damaged(data: bytes, edits: list[tuple[int, bytes]], limit: int) -> bytes:
    out = bytearray(data)
    for offset, patch in edits:
        at = offset % min(limit, len(out))
        out[at : at + len(patch)] = patch
    return bytes(out[: len(data)])


@pytest.mark.parametrize("fs", ["iso9660", "vfat"])
@settings(max_examples=150, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), min_size=1, max_size=8
    )
)
def test_damaged_images_are_refused_never_crash(
    pristine: dict[str, bytes], scratch: Path, fs: str, edits: list[tuple[int, bytes]]
) -> None:
    key = "iso" if fs == "iso9660" else "vfat"
    if key not in pristine:
        pytest.skip("needs mkfs.vfat (Debian package dosfstools) and mcopy (Debian package mtools)")
    # The structures live in the first 64 KiB (ISO: descriptors, path tables, directories;
    # FAT: boot sector, FATs, root directory): damage lands there.
    scratch.write_bytes(_damaged(pristine[key], edits, 64 * 1024))
    try:
        media.probe(str(scratch))
        with media.open_volume(media.Volume(str(scratch), fs, "cidata")) as reader:
            for name in FILES:
                reader.read(name, FILE_MAX)
    except media.MediaError:
        pass
