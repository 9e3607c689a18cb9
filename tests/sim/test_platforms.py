"""OpenStack, Azure, DigitalOcean and NoCloud endpoints, and several platforms on one port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import yaml

from guestsim import Simulator

from .conftest import DEMO, FLAVOR

ALL = ("gce", "ec2", "openstack", "azure", "digitalocean", "nocloud")
AZ = {"Metadata": "true"}
WIRE = {"x-ms-version": "2012-11-30", "x-ms-agent-name": "guestagent"}


@pytest.fixture(scope="module")
def everything() -> Iterator[Simulator]:
    with Simulator(DEMO, platforms=ALL) as sim:
        yield sim


def test_all_platforms_share_one_port(everything: Simulator) -> None:
    port = everything.port
    for name in ALL:
        assert f":{port}/" in everything.url(name)
    gce = requests.get(everything.url("gce") + "instance/name", headers=FLAVOR, timeout=5)
    assert gce.text == "demo-vm"
    assert requests.get(everything.url("ec2") + "meta-data/ami-id", timeout=5).status_code == 200


def test_openstack_service(everything: Simulator) -> None:
    root = f"http://127.0.0.1:{everything.port}/openstack"
    versions = requests.get(root, timeout=5).text.splitlines()
    assert versions[-1] == "latest"
    assert "2012-08-10" in versions
    files = requests.get(root + "/latest/", timeout=5).text.splitlines()
    assert {"meta_data.json", "network_data.json", "user_data", "vendor_data.json",
            "vendor_data2.json"} <= set(files)
    md = requests.get(root + "/latest/meta_data.json", timeout=5).json()
    assert md["name"] == "demo-vm"
    assert md["hostname"] == "demo-vm.c.demo-project.internal"
    assert set(md["public_keys"]) == {"alice", "bob", "carol"}
    assert md["keys"][0]["type"] == "ssh"
    nd = requests.get(root + "/2013-04-04/network_data.json", timeout=5).json()
    assert nd["links"][0]["ethernet_mac_address"] == "42:01:0a:80:00:02"
    # A DHCP NIC (the scenario's default) is served as Nova serves it: ipv4_dhcp, no address.
    net = nd["networks"][0]
    assert (net["type"], net["link"]) == ("ipv4_dhcp", nd["links"][0]["id"]) and "ip_address" not in net
    assert nd["services"] == [{"type": "dns", "address": "169.254.169.254"}]
    ud = requests.get(root + "/latest/user_data", timeout=5)
    assert ud.text.startswith("#cloud-config")
    assert requests.get(root + "/latest/nope", timeout=5).status_code == 404
    assert requests.get(root + "/1999-01-01/meta_data.json", timeout=5).status_code == 404


def test_openstack_edit_one_field(everything: Simulator) -> None:
    everything.set("meta_data.json/meta/role", "db", platform="openstack")
    md = requests.get(everything.url("openstack") + "meta_data.json", timeout=5).json()
    assert md["meta"]["role"] == "db"


def test_azure_imds(everything: Simulator) -> None:
    url = f"http://127.0.0.1:{everything.port}/metadata/instance"
    missing = requests.get(url + "?api-version=2021-08-01", timeout=5)
    assert missing.status_code == 400
    assert "error" in missing.json()
    assert requests.get(url, headers=AZ, timeout=5).status_code == 400  # no api-version
    doc = requests.get(url + "?api-version=2021-08-01", headers=AZ, timeout=5).json()
    compute = doc["compute"]
    assert compute["osProfile"]["adminUsername"] == "alice"
    assert compute["publicKeys"][0]["keyData"].startswith("ssh-ed25519 AAAA")
    assert compute["publicKeys"][0]["path"] == "/home/alice/.ssh/authorized_keys"
    iface = doc["network"]["interface"][0]
    assert iface["macAddress"] == "42010A800002"
    assert iface["ipv4"]["ipAddress"][0]["privateIpAddress"] == "10.128.0.2"
    name = requests.get(url + "/compute/name?api-version=2021-08-01&format=text", headers=AZ,
                        timeout=5)
    assert name.text == "demo-vm"
    versions = requests.get(f"http://127.0.0.1:{everything.port}/metadata/versions", headers=AZ,
                            timeout=5).json()
    assert "2021-08-01" in versions["apiVersions"]


def test_wireserver_goal_state_and_health(everything: Simulator) -> None:
    base = f"http://127.0.0.1:{everything.port}"
    versions = requests.get(base + "/?comp=versions", timeout=5)
    assert "<Version>2012-11-30</Version>" in versions.text
    assert requests.get(base + "/machine/?comp=goalstate", timeout=5).status_code == 400
    gs = requests.get(base + "/machine/?comp=goalstate", headers=WIRE, timeout=5).text
    import xml.etree.ElementTree as ET

    root = ET.fromstring(gs.split("\n", 1)[1])
    container = root.findtext("Container/ContainerId")
    instance = root.findtext("Container/RoleInstanceList/RoleInstance/InstanceId")
    incarnation = root.findtext("Incarnation")
    assert container and instance and incarnation == "1"
    cfg = root.findtext("Container/RoleInstanceList/RoleInstance/Configuration/"
                        "HostingEnvironmentConfig")
    assert cfg is not None and cfg.startswith(base)

    def report(state: str, sub: str = "") -> requests.Response:
        details = (f"<Details><SubStatus>{sub}</SubStatus><Description>why</Description>"
                   "</Details>") if sub else ""
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Health '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
            f"<GoalStateIncarnation>{incarnation}</GoalStateIncarnation><Container>"
            f"<ContainerId>{container}</ContainerId><RoleInstanceList><Role>"
            f"<InstanceId>{instance}</InstanceId><Health><State>{state}</State>{details}"
            "</Health></Role></RoleInstanceList></Container></Health>")
        return requests.post(base + "/machine?comp=health", data=body,
                             headers={**WIRE, "Content-Type": "text/xml;charset=utf-8"},
                             timeout=5)

    assert report("NotReady", "Provisioning").status_code == 200
    assert report("Ready").status_code == 200
    state = everything.state("azure")
    assert [r["state"] for r in state["health_reports"]][-2:] == ["NotReady", "Ready"]
    assert state["health_reports"][-2]["substatus"] == "Provisioning"
    assert state["last_state"] == "Ready"
    assert state["health_reports"][-1]["matches_goal_state"] is True
    everything.set("wireserver/incarnation", 2, platform="azure")
    gs2 = requests.get(base + "/machine/?comp=goalstate", headers=WIRE, timeout=5).text
    assert "<Incarnation>2</Incarnation>" in gs2
    bad = requests.post(base + "/machine?comp=health", data="<not xml", headers=WIRE, timeout=5)
    assert bad.status_code == 400


def test_digitalocean(everything: Simulator) -> None:
    base = f"http://127.0.0.1:{everything.port}/metadata/v1"
    doc = requests.get(base + ".json", timeout=5).json()
    assert doc["hostname"] == "demo-vm"
    assert doc["interfaces"]["public"][0]["ipv4"]["ip_address"] == "203.0.113.10"
    # One NIC with a public and a private address is one public entry whose private
    # address is its anchor: a droplet never lists one MAC twice.
    assert doc["interfaces"]["public"][0]["anchor_ipv4"]["ip_address"] == "10.128.0.2"
    assert doc["interfaces"]["private"] == []
    assert len(doc["public_keys"]) == 3
    assert doc["dns"]["nameservers"] == ["169.254.169.254"]
    listing = requests.get(base + "/", timeout=5).text.splitlines()
    assert {"id", "hostname", "user-data", "public-keys", "interfaces/"} <= set(listing)
    assert requests.get(base + "/hostname", timeout=5).text == "demo-vm"
    addr = requests.get(base + "/interfaces/public/0/ipv4/address", timeout=5).text
    assert addr == "203.0.113.10"
    keys = requests.get(base + "/public-keys", timeout=5).text.splitlines()
    assert len(keys) == 3
    everything.set("hostname", "renamed", platform="digitalocean")
    assert requests.get(base + "/hostname", timeout=5).text == "renamed"
    assert requests.get(base + ".json", timeout=5).json()["hostname"] == "renamed"
    assert requests.get(base + "/nope", timeout=5).status_code == 404


def test_nocloud_http(everything: Simulator) -> None:
    base = everything.url("nocloud")
    md = yaml.safe_load(requests.get(base + "meta-data", timeout=5).text)
    assert md["instance-id"] == "iid-4520031799277581759"
    assert md["local-hostname"] == "demo-vm"
    ud = requests.get(base + "user-data", timeout=5).text
    assert ud.startswith("#cloud-config")  # the scenario's own user-data
    net = yaml.safe_load(requests.get(base + "network-config", timeout=5).text)
    assert net["version"] == 2
    assert net["ethernets"]["eth0"]["match"]["macaddress"] == "42:01:0a:80:00:02"


def test_nocloud_generated_user_data() -> None:
    scn = {"users": [{"name": "dev", "keys": ["ssh-ed25519 AAAAKEY dev"]}]}
    with Simulator(scn, platforms=("nocloud",)) as sim:
        doc = yaml.safe_load(requests.get(sim.url() + "user-data", timeout=5).text)
        user = doc["users"][1]
        assert user["name"] == "dev"
        assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAKEY dev"]


def test_unknown_platform_fails_fast() -> None:
    with pytest.raises(ValueError, match="unknown platform"):
        Simulator({}, platforms=("vmware",))


def test_fault_scoped_to_platform(everything: Simulator) -> None:
    fid = everything.add_fault("*", kind="status", status=500, platform="ec2")
    try:
        assert requests.get(everything.url("ec2") + "meta-data/", timeout=5).status_code == 500
        gce = requests.get(everything.url("gce") + "instance/name", headers=FLAVOR, timeout=5)
        assert gce.status_code == 200
    finally:
        everything.remove_fault(fid)
