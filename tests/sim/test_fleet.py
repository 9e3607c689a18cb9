"""Many VMs behind one simulator, told apart by source address or by port."""

from __future__ import annotations

import http.client

import requests

from guestsim import Simulator

from .conftest import FLAVOR, SCENARIOS

FLEET = SCENARIOS / "fleet.yaml"


def name_from(port: int, source: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", "/computeMetadata/v1/instance/name", headers=FLAVOR)
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def test_by_source_address() -> None:
    with Simulator(FLEET) as sim:
        assert name_from(sim.port, "127.0.0.11") == "web-1"
        assert name_from(sim.port, "127.0.0.12") == "web-2"
        assert name_from(sim.port, "127.0.0.1") == "web-1"  # unmatched: the first VM


def test_by_port_and_isolated_state() -> None:
    with Simulator(FLEET) as sim:
        url = sim.url(instance="db-1")
        assert url != sim.url()
        assert requests.get(url + "instance/name", headers=FLAVOR, timeout=5).text == "db-1"
        sim.set("instance/attributes/role", "primary", instance="db-1")
        got = requests.get(url + "instance/attributes/role", headers=FLAVOR, timeout=5)
        assert got.text == "primary"
        other = requests.get(sim.url() + "instance/attributes/role", headers=FLAVOR, timeout=5)
        assert other.status_code == 404
        log = sim.requests()
        assert {e["instance"] for e in log} == {"db-1", "web-1"}


def test_defaults_merge() -> None:
    with Simulator(FLEET) as sim:
        for name in ("web-1", "web-2", "db-1"):
            keys = sim.get("instance/attributes/ssh-keys", instance=name)
            assert isinstance(keys, str) and keys.startswith("ops:ssh-ed25519")
        assert sim.get("instance/network-interfaces/0/forwarded-ips",
                       instance="web-2") == ["10.132.0.100"]


def test_generated_fleet_by_port() -> None:
    scenario = {"instances": [{"instance": {"name": f"vm-{i}", "id": str(100 + i)},
                               "match": {"port": 0}} for i in range(20)]}
    with Simulator(scenario) as sim:
        for i in (0, 7, 19):
            url = sim.url(instance=f"vm-{i}")
            got = requests.get(url + "instance/id", headers=FLAVOR, timeout=5)
            assert got.text == str(100 + i)
