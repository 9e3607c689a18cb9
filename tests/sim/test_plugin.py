"""The pytest plugin's fixtures (loaded through the pytest11 entry point)."""

from __future__ import annotations

import requests

from guestsim import Simulator
from guestsim.pytest_plugin import MakeSimulator

from .conftest import FLAVOR


def test_guestsim_fixture(guestsim: Simulator) -> None:
    assert guestsim.get("instance/name") == "demo-vm"
    r = requests.get(guestsim.url() + "instance/name", headers=FLAVOR, timeout=5)
    assert r.text == "demo-vm"


def test_make_simulator_factory(make_simulator: MakeSimulator) -> None:
    ec2 = make_simulator("minimal.yaml", platforms=("ec2",))
    gce = make_simulator({"instance": {"name": "inline"}})
    assert requests.get(ec2.url("ec2") + "meta-data/public-keys/0/openssh-key",
                        timeout=5).text.startswith("ssh-ed25519")
    assert gce.get("instance/name") == "inline"
    assert ec2.port != gce.port
