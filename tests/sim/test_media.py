"""Provisioning media, read back with the system's own tools and pycdlib."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from guestsim import load_scenario
from guestsim.media import build_media
from guestsim.media.cpio import newc_archive
from guestsim.media.iso import read_iso

from .conftest import DEMO

needs_isoinfo = pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo missing")
needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing")


def isoinfo(*args: str) -> str:
    return subprocess.run(["isoinfo", *args], capture_output=True, text=True, check=True).stdout


@needs_isoinfo
def test_config_drive(tmp_path: Path) -> None:
    out = build_media("config-drive", DEMO, tmp_path / "cd.iso")
    assert "Volume id: config-2" in isoinfo("-d", "-i", str(out))
    names = isoinfo("-R", "-f", "-i", str(out)).split()
    assert "/openstack/latest/meta_data.json" in names
    assert "/openstack/latest/network_data.json" in names
    assert "/openstack/latest/user_data" in names
    assert "/ec2/latest/meta-data.json" in names
    label, files = read_iso(out)
    assert label == "config-2"
    md = json.loads(files["openstack/latest/meta_data.json"])
    assert md["hostname"] == "demo-vm.c.demo-project.internal"
    assert set(md["public_keys"]) == {"alice", "bob", "carol"}
    # Two vendor_data files with the same 8.3 stem must both survive.
    assert json.loads(files["openstack/latest/vendor_data2.json"]) == {}
    assert json.loads(files["openstack/latest/vendor_data.json"]) == {}


@needs_isoinfo
def test_azure_ovf(tmp_path: Path) -> None:
    out = build_media("azure-ovf", DEMO, tmp_path / "ovf.iso")
    text = isoinfo("-R", "-i", str(out), "-x", "/ovf-env.xml")
    root = ET.fromstring(text)
    wa = "{http://schemas.microsoft.com/windowsazure}"
    cfg = root.find(f".//{wa}LinuxProvisioningConfigurationSet")
    assert cfg is not None
    assert cfg.findtext(f"{wa}HostName") == "demo-vm"
    assert cfg.findtext(f"{wa}UserName") == "alice"
    assert cfg.findtext(f"{wa}DisableSshPasswordAuthentication") == "true"
    key = cfg.find(f"{wa}SSH/{wa}PublicKeys/{wa}PublicKey")
    assert key is not None
    assert key.findtext(f"{wa}Path") == "/home/alice/.ssh/authorized_keys"
    assert (key.findtext(f"{wa}Value") or "").startswith("ssh-ed25519 AAAA")
    custom = base64.b64decode(cfg.findtext(f"{wa}CustomData") or "").decode()
    assert custom.startswith("#cloud-config")
    assert root.findtext(f".//{wa}ProvisionGuestAgent") == "true"


@needs_isoinfo
def test_nocloud_iso_and_dir(tmp_path: Path) -> None:
    out = build_media("nocloud-iso", DEMO, tmp_path / "seed.iso")
    assert "Volume id: cidata" in isoinfo("-d", "-i", str(out))
    _, files = read_iso(out)
    assert set(files) >= {"meta-data", "user-data", "network-config"}
    md = yaml.safe_load(files["meta-data"])
    assert md["instance-id"] == "iid-4520031799277581759"
    seed = build_media("nocloud-dir", DEMO, tmp_path / "seed")
    assert (seed / "meta-data").read_text() == files["meta-data"].decode()


@needs_cpio
def test_cpio_device(tmp_path: Path) -> None:
    out = build_media("cpio", DEMO, tmp_path / "md.img")
    data = out.read_bytes()
    assert data.startswith(b"070701")
    assert len(data) % 512 == 0
    listing = subprocess.run(["cpio", "-t"], input=data, capture_output=True, check=True)
    assert sorted(listing.stdout.decode().split()) == ["authorized_keys", "firstboot.sh",
                                                      "nodename"]
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(["cpio", "-i", "--quiet"], input=data, cwd=extract, check=True)
    assert (extract / "nodename").read_text() == "demo-vm\n"
    assert (extract / "firstboot.sh").read_text().startswith("#!")
    assert (extract / "firstboot.sh").stat().st_mode & 0o111
    keys = (extract / "authorized_keys").read_text().splitlines()
    assert len(keys) == 3
    assert keys[1].startswith('from="10.0.0.0/8",no-port-forwarding ssh-rsa')


@needs_cpio
def test_cpio_config_toml_for_static_network(tmp_path: Path) -> None:
    scn = {"network": {"interfaces": [{"ip": "10.0.0.5/24", "dhcp": False}]}}
    out = build_media("cpio", scn, tmp_path / "md.img")
    listing = subprocess.run(["cpio", "-t"], input=out.read_bytes(), capture_output=True,
                             check=True).stdout.decode().split()
    assert "config.toml" in listing


def test_newc_alignment_roundtrip() -> None:
    archive = newc_archive({"a": (b"x", 0o644), "bb": (b"yyyyy", 0o600)}, mtime=0)
    assert archive.count(b"070701") == 3  # two files + trailer
    assert len(archive) % 4 == 0


def test_fleet_rejected_for_media(tmp_path: Path) -> None:
    fleet = load_scenario(DEMO.parent / "fleet.yaml")
    with pytest.raises(ValueError, match="fleet"):
        build_media("cpio", fleet, tmp_path / "x.img")
