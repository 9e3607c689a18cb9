"""The Azure provider against real media and the real simulator: the provisioning DVD (UDF as
Azure attaches it, and ISO9660) under a fake root, read without mounting; IMDS and the WireServer
on loopback; the health report the simulator received; faults (IMDS 410, WireServer 500s, a
captive portal) and damaged media.

Nothing here touches the machine: every root is a tmp tree, images are plain files, the only
network peer is the simulator (or a closed port) on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.adapters import media, udf
from guestagent.adapters.platforms import registry
from guestagent.adapters.platforms.azure import (
    PROVIDER,
    AzureMetadata,
    find_ovf,
    find_wireserver,
    imds_base,
    wireserver_base,
)
from guestagent.adapters.platforms.detect import detect
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.domain.config import Azure, Config
from guestagent.domain.platforms.azure import ASSET_TAG, HealthStatus, azure, failed
from guestagent.ports.fabric import FabricHealth
from guestagent.ports.metadata import MetadataUnavailable, Snapshot
from guestsim import Simulator
from guestsim.media import build_media

from .conftest import SCENARIOS

AZURE = SCENARIOS / "azure.yaml"
LOGGER = "guestagent.adapters.platforms.azure"
NOWHERE = "http://127.0.0.1:9/"


# ------------------------------------------------------------------ helpers


def block_device(root: Path, name: str, image: Path) -> None:
    """ROOT/sys/block/NAME and ROOT/dev/NAME -> the image (as a CD-ROM drive looks)."""
    (root / "sys/block" / name).mkdir(parents=True)
    (root / "dev").mkdir(exist_ok=True)
    (root / "dev" / name).symlink_to(image)


@pytest.fixture
def sim(make_simulator: Any) -> Simulator:
    sim: Simulator = make_simulator(AZURE, platforms=("azure",))
    return sim


@pytest.fixture
def udf_dvd(tmp_path: Path) -> Path:
    return build_media("azure-ovf-udf", AZURE, tmp_path / "images" / "ovf.udf")


def source(root: Path, url: str, **settings_: Any) -> AzureMetadata:
    settings_.setdefault("imds_retry_total", 20.0)
    settings_.setdefault("report_retry_total", 20.0)
    azure_settings = settings_.pop("azure", Azure())
    return AzureMetadata(root=str(root), url=url, settings=azure_settings, backoff_max=0.2, **settings_)


@pytest.fixture
def opened() -> Iterator[list[AzureMetadata]]:
    made: list[AzureMetadata] = []
    yield made
    for each in made:
        each.close()


# ------------------------------------------------------------------ the DVD


def test_udf_dvd_and_imds_make_the_snapshot(
    tmp_path: Path, sim: Simulator, udf_dvd: Path, opened: list
) -> None:
    root = tmp_path / "root"
    block_device(root, "sr0", udf_dvd)
    src = source(root, sim.url("azure"))
    opened.append(src)
    snapshot = src.get()
    metadata = snapshot.metadata
    extras = azure(metadata)
    assert metadata.platform == "azure"
    assert metadata.instance_id == sim.get("instance/compute/vmId", platform="azure")
    assert (extras.admin_user, extras.password, extras.disable_password_auth) == (
        "azureuser",
        "Sim-Passw0rd!",
        False,
    )
    assert extras.ovf_source == "/dev/sr0"
    assert metadata.hostname == "az-vm"
    assert [k.user for k in metadata.ssh_keys] == ["azureuser"]
    assert metadata.user_data == b"#!/bin/sh\necho custom data\n"
    assert metadata.network_interfaces[0].mac == "00:0d:3a:12:34:56"
    # Every IMDS request asked as IMDS wants to be asked.
    gets = sim.requests(path="/metadata/instance")
    assert gets and all(r["headers"].get("metadata") == "true" for r in gets)
    assert all(r["query"].get("api-version") == "2021-08-01" for r in gets)
    # Same content, same tag.
    assert src.get().etag == snapshot.etag


def test_the_udf_image_is_udf_only(udf_dvd: Path) -> None:
    assert media.probe(str(udf_dvd)) is None  # no ISO9660 descriptor left
    with open(udf_dvd, "rb") as fp:
        volume = udf.UdfVolume(fp)
        assert volume.label == "rd_rdfe_stable"
        assert (volume.read("ovf-env.xml", 1 << 20) or b"").startswith(b"<?xml")
        assert volume.read("missing.xml", 100) is None
        with pytest.raises(media.FileTooLarge):
            volume.read("ovf-env.xml", 10)


def test_iso9660_dvd_and_a_label_link(tmp_path: Path, sim: Simulator, opened: list) -> None:
    iso = build_media("azure-ovf", AZURE, tmp_path / "images" / "ovf.iso")
    root = tmp_path / "root"
    (root / "dev/disk/by-label").mkdir(parents=True)
    (root / "dev/vdc").symlink_to(iso)  # not an optical drive: found through udev's label link
    (root / "dev/disk/by-label/rd_rdfe_stable.161212-1122").symlink_to("../../vdc")
    src = source(root, sim.url("azure"))
    opened.append(src)
    extras = azure(src.get().metadata)
    assert (extras.ovf_source, extras.password) == ("/dev/vdc", "Sim-Passw0rd!")


def test_a_dvd_on_another_disk_is_found_by_the_full_scan(tmp_path: Path, udf_dvd: Path) -> None:
    root = tmp_path / "root"
    block_device(root, "vdb", udf_dvd)
    assert find_ovf(str(root), everywhere=False) is None
    found = find_ovf(str(root))
    assert found is not None and found[1] == "/dev/vdb"


def test_no_dvd_provisions_from_imds_alone(tmp_path: Path, sim: Simulator, opened: list) -> None:
    src = source(tmp_path / "empty-root", sim.url("azure"))
    opened.append(src)
    metadata = src.get().metadata
    extras = azure(metadata)
    assert (extras.ovf_source, extras.password, extras.admin_user) == (None, None, "azureuser")
    assert [k.user for k in metadata.ssh_keys] == ["azureuser"]
    assert metadata.user_data is None


def test_a_damaged_dvd_is_said_not_taken_for_no_dvd(
    tmp_path: Path, sim: Simulator, udf_dvd: Path, opened: list
) -> None:
    damaged = tmp_path / "damaged.udf"
    image = bytearray(udf_dvd.read_bytes())
    image[256 * 2048 + 4] ^= 0xFF  # the anchor's tag checksum
    damaged.write_bytes(bytes(image))
    root = tmp_path / "root"
    block_device(root, "sr0", damaged)
    src = source(root, sim.url("azure"))
    opened.append(src)
    extras = azure(src.get().metadata)
    assert extras.ovf_error is not None and "UDF" in extras.ovf_error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=300 * 2048), st.integers(0, 255)), max_size=8))
def test_a_mangled_udf_volume_reads_or_refuses(tmp_path_factory: Any, flips: list[tuple[int, int]]) -> None:
    folder = tmp_path_factory.mktemp("udf")
    image = bytearray(_udf_bytes())
    for offset, value in flips:
        if offset < len(image):
            image[offset] = value
    path = folder / "m.udf"
    path.write_bytes(bytes(image))
    with open(path, "rb") as fp:
        try:
            volume = udf.UdfVolume(fp)
            volume.read("ovf-env.xml", 1 << 20)
        except media.MediaError:
            pass


_CACHE: dict[str, bytes] = {}


def _udf_bytes() -> bytes:
    if "udf" not in _CACHE:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            _CACHE["udf"] = build_media("azure-ovf-udf", AZURE, Path(folder) / "x.udf").read_bytes()
    return _CACHE["udf"]


def test_truncated_udf_image_is_refused(tmp_path: Path, udf_dvd: Path) -> None:
    short = tmp_path / "short.udf"
    short.write_bytes(udf_dvd.read_bytes()[: 257 * 2048])
    with open(short, "rb") as fp, pytest.raises(media.MediaError):
        udf.UdfVolume(fp).read("ovf-env.xml", 1 << 20)


# ------------------------------------------------------------------ IMDS faults


def test_imds_410_is_retried_until_it_answers(tmp_path: Path, sim: Simulator, opened: list) -> None:
    sim.add_fault("/metadata/instance", kind="status", status=410, count=2)
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    assert src.get().metadata.platform == "azure"
    statuses = [r["status"] for r in sim.requests(path="/metadata/instance")]
    assert statuses == [410, 410, 200]


def test_imds_failures_are_said_once_and_once_that_they_are_over(
    tmp_path: Path, sim: Simulator, opened: list, caplog: pytest.LogCaptureFixture
) -> None:
    sim.add_fault("/metadata/instance", kind="status", status=503, count=4)
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        src.get()
        src.get()
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("IMDS")]
    assert said == ["IMDS answered HTTP 503; retrying for up to 20s", "IMDS is answering again"]
    assert [r["status"] for r in sim.requests(path="/metadata/instance")] == [503] * 4 + [200, 200]


def test_imds_errors_are_retried_for_a_bounded_time(tmp_path: Path, sim: Simulator, opened: list) -> None:
    sim.add_fault("/metadata/instance", kind="status", status=503)
    src = source(tmp_path, sim.url("azure"), imds_retry_total=1.5)
    opened.append(src)
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable, match="503"):
        src.get()
    assert time.monotonic() - started < 30  # bound 1.5 s; slack for a loaded machine
    assert len(sim.requests(path="/metadata/instance")) >= 2


def test_imds_400_and_captive_portals_are_not_retried(tmp_path: Path, sim: Simulator, opened: list) -> None:
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    fault = sim.add_fault("/metadata/instance", kind="status", status=400)
    with pytest.raises(MetadataUnavailable, match="400"):
        src.get()
    sim.remove_fault(fault)
    sim.add_fault("/metadata/instance", kind="html")
    with pytest.raises(MetadataUnavailable, match="HTML"):
        src.get()
    assert len(sim.requests(path="/metadata/instance")) == 2


def test_nothing_listening(tmp_path: Path, opened: list) -> None:
    src = source(tmp_path, NOWHERE, imds_retry_total=0.5)
    opened.append(src)
    with pytest.raises(MetadataUnavailable):
        src.get()


# ------------------------------------------------------------------ the health report


def test_ready_report_reaches_the_fabric(tmp_path: Path, sim: Simulator, opened: list) -> None:
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    assert isinstance(src, FabricHealth)
    src.report_health(HealthStatus("Ready"))
    [report] = sim.state("azure")["health_reports"]
    assert report["state"] == "Ready" and report["matches_goal_state"] is True
    wire = [r for r in sim.requests() if r["path"].startswith("/machine") or r["path"] == "/"]
    assert [(r["method"], r["path"], r["query"].get("comp")) for r in wire] == [
        ("GET", "/", "versions"),
        ("GET", "/machine/", "goalstate"),
        ("POST", "/machine", "health"),
    ]
    for request in wire[1:]:
        assert request["headers"]["x-ms-version"] == "2012-11-30"
        assert request["headers"]["x-ms-agent-name"] == "guestagent"


def test_not_ready_with_the_reason(tmp_path: Path, sim: Simulator, opened: list) -> None:
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    src.report_health(failed("create user azureuser failed: useradd: cannot lock /etc/passwd"))
    [report] = sim.state("azure")["health_reports"]
    assert (report["state"], report["substatus"]) == ("NotReady", "ProvisioningFailed")
    assert "cannot lock /etc/passwd" in report["description"]


def test_wireserver_500_then_ok(tmp_path: Path, sim: Simulator, opened: list) -> None:
    sim.add_fault("/machine", kind="status", status=500, count=2, method="POST")
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    src.report_health(HealthStatus("Ready"))
    posts = sim.requests(path="/machine", method="POST")
    assert [r["status"] for r in posts] == [500, 500, 200]
    assert [r["state"] for r in sim.state("azure")["health_reports"]] == ["Ready"]
    # The goal state was asked again before each try; the versions only once.
    assert len(sim.requests(path="/machine/", method="GET")) == 3
    assert len(sim.requests(path="/", method="GET")) == 1


def test_a_refused_health_report_is_said_once_not_per_retry(
    tmp_path: Path, sim: Simulator, opened: list, caplog: pytest.LogCaptureFixture
) -> None:
    sim.add_fault("/machine", kind="status", status=500, count=4, method="POST")
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        src.report_health(HealthStatus("Ready"))
    warned = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "health report Ready" in warned[0], warned
    assert [r["state"] for r in sim.state("azure")["health_reports"]] == ["Ready"]


def test_a_wireserver_that_never_takes_it_fails_within_the_bound(
    tmp_path: Path, sim: Simulator, opened: list
) -> None:
    sim.add_fault("/machine", kind="status", status=500, method="POST")
    src = source(tmp_path, sim.url("azure"), report_retry_total=1.0)
    opened.append(src)
    with pytest.raises(MetadataUnavailable, match="health report not accepted"):
        src.report_health(HealthStatus("Ready"))
    assert sim.state("azure")["health_reports"] == []


def test_a_new_incarnation_is_reported_against(tmp_path: Path, sim: Simulator, opened: list) -> None:
    sim.set("wireserver/incarnation", 7, platform="azure")
    src = source(tmp_path, sim.url("azure"))
    opened.append(src)
    src.report_health(HealthStatus("Ready"))
    [report] = sim.state("azure")["health_reports"]
    assert report["incarnation"] == "7" and report["matches_goal_state"]


def test_configured_wireserver_and_proxy_free_imds(tmp_path: Path, sim: Simulator, opened: list) -> None:
    port = sim.url("azure").split(":")[2].split("/")[0]
    src = source(tmp_path, NOWHERE, azure=Azure(wireserver=f"127.0.0.1:{port}"))
    opened.append(src)
    assert src.wireserver() == (f"http://127.0.0.1:{port}", "[Azure] wireserver")
    src.report_health(HealthStatus("Ready"))
    assert len(sim.state("azure")["health_reports"]) == 1


def test_the_wireserver_from_dhcp_leases(tmp_path: Path) -> None:
    assert find_wireserver(str(tmp_path))[0] == "168.63.129.16"
    leases = tmp_path / "var/lib/dhcp"
    leases.mkdir(parents=True)
    (leases / "dhclient.eth0.leases").write_text(
        'lease {\n  interface "eth0";\n  option unknown-245 64:41:60:82;\n  expire never;\n}\n'
    )
    address, why = find_wireserver(str(tmp_path))
    assert (address, why) == ("100.65.96.130", "DHCP option 245 in /var/lib/dhcp/dhclient.eth0.leases")
    (leases / "dhclient.eth0.leases").unlink()
    networkd = tmp_path / "run/systemd/netif/leases"
    networkd.mkdir(parents=True)
    (networkd / "2").write_text("ADDRESS=10.0.0.4\nOPTION_245=A83F8110\n")
    assert find_wireserver(str(tmp_path))[0] == "168.63.129.16"  # found there, the same address
    assert "netif/leases/2" in find_wireserver(str(tmp_path))[1]


def test_addresses_from_urls_and_settings() -> None:
    assert imds_base("http://169.254.169.254/metadata/instance") == "http://169.254.169.254"
    assert imds_base("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert wireserver_base("168.63.129.16") == "http://168.63.129.16"
    assert wireserver_base("10.0.0.1:8080") == "http://10.0.0.1:8080"
    for bad in ("", "host/path", "user@host"):
        with pytest.raises(ValueError, match="not HOST or HOST:PORT"):
            wireserver_base(bad)


# ------------------------------------------------------------------ following, detection


def test_watch_yields_when_imds_changes(tmp_path: Path, sim: Simulator, opened: list) -> None:
    src = source(tmp_path, sim.url("azure"), azure=Azure(poll_interval=0.2))
    opened.append(src)
    first = src.get()
    seen: list[Snapshot] = []
    done = threading.Event()

    def follow() -> None:
        for snapshot in src.watch(first.etag):
            seen.append(snapshot)
            done.set()
            return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    sim.set("instance/compute/osProfile/computerName", "renamed", platform="azure")
    assert done.wait(60)
    assert seen[0].metadata.hostname == "renamed"  # no DVD here: IMDS names it
    assert seen[0].etag != first.etag
    src.close()
    thread.join(10)


def test_probe_local_and_dmi(tmp_path: Path, sim: Simulator, udf_dvd: Path, make_simulator: Any) -> None:
    config = Config()
    assert PROVIDER.probe is not None and PROVIDER.local is not None and PROVIDER.dmi is not None
    assert PROVIDER.probe(ProviderOptions(url=sim.url("azure"), root=str(tmp_path), config=config), 5.0)
    ec2: Simulator = make_simulator(AZURE, platforms=("ec2",))
    assert PROVIDER.probe(ProviderOptions(url=ec2.url("ec2"), root=str(tmp_path), config=config), 5.0) is None
    root = tmp_path / "root"
    assert PROVIDER.local(ProviderOptions(root=str(root), config=config)) is None
    block_device(root, "sr0", udf_dvd)
    assert "/dev/sr0" in (PROVIDER.local(ProviderOptions(root=str(root), config=config)) or "")
    assert PROVIDER.dmi({"chassis_asset_tag": ASSET_TAG})
    assert registry.provider("azure") is PROVIDER


def test_auto_detection_by_dmi(tmp_path: Path) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "chassis_asset_tag").write_text(ASSET_TAG + "\n")
    (dmi / "sys_vendor").write_text("Microsoft Corporation\n")
    found = detect(ProviderOptions(url=NOWHERE, root=str(tmp_path), config=Config()), timeout=10)
    assert found.spec.name == "azure" and "chassis_asset_tag" in found.reason


def test_guest_attributes_are_accepted_and_dropped(tmp_path: Path, opened: list) -> None:
    src = source(tmp_path, NOWHERE)
    opened.append(src)
    src.put_guest_attribute("hostkeys/ssh-ed25519", "AAAA")  # no network, no error


def test_the_poll_interval_is_the_configs(tmp_path: Path, sim: Simulator, opened: list) -> None:
    config = Config(Azure=Azure(poll_interval=0.2))
    src = PROVIDER.open(ProviderOptions(url=sim.url("azure"), root=str(tmp_path), config=config))
    opened.append(src)
    assert isinstance(src, AzureMetadata) and src.settings.poll_interval == 0.2
    default = PROVIDER.open(ProviderOptions(url=sim.url("azure"), root=str(tmp_path)))
    opened.append(default)
    assert isinstance(default, AzureMetadata) and default.settings.poll_interval == 60.0
