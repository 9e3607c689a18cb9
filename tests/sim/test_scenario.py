"""The neutral scenario format and its rendering into GCE attributes."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from guestsim import Fleet, Scenario, ScenarioError, load_scenario
from guestsim.platforms.gce import render_tree

from .conftest import SCENARIOS


def test_empty_scenario_is_a_vm() -> None:
    scn = load_scenario({})
    assert isinstance(scn, Scenario)
    assert scn.fqdn == "sim-vm.c.sim-project.internal"
    assert scn.interfaces[0].ip == "10.128.0.2"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_scenarios_load(path: object) -> None:
    assert isinstance(load_scenario(path), Scenario | Fleet)  # type: ignore[arg-type]


def test_unknown_field_rejected() -> None:
    with pytest.raises(ScenarioError, match="unknown fields"):
        load_scenario({"instnace": {}})


def test_bad_user_rejected() -> None:
    with pytest.raises(ScenarioError, match=r"users\[0\]"):
        load_scenario({"users": [{"keys": []}]})


def test_attribute_values_become_strings() -> None:
    scn = load_scenario({"attributes": {"enable-oslogin": True, "n": 3, "j": {"a": 1}}})
    assert isinstance(scn, Scenario)
    assert scn.attributes == {"enable-oslogin": "true", "n": "3", "j": '{"a": 1}'}


def test_expire_in_is_relative_and_formatted() -> None:
    scn = load_scenario({"users": [{"name": "u", "keys": [{"key": "ssh-ed25519 AAAA c",
                                                           "expire_in": -60}]}]})
    assert isinstance(scn, Scenario)
    key = scn.users[0].keys[0]
    assert key.expire_on is not None
    when = dt.datetime.strptime(key.expire_on, "%Y-%m-%dT%H:%M:%S%z")
    assert when < dt.datetime.now(dt.UTC)
    line = key.gce_line("u")
    meta = json.loads(line.split(" google-ssh ", 1)[1])
    assert meta == {"userName": "u@example.com", "expireOn": key.expire_on}


def test_yaml_datetime_expiry_is_formatted() -> None:
    scn = load_scenario({"users": [{"name": "u", "keys": [
        {"key": "ssh-ed25519 AAAA c", "expire_on": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}]}]})
    assert isinstance(scn, Scenario)
    assert scn.users[0].keys[0].expire_on == "2030-01-01T00:00:00+0000"


def test_gce_render_merges_raw_ssh_keys_and_overrides() -> None:
    scn = load_scenario({
        "attributes": {"ssh-keys": "raw:ssh-rsa AAAA raw"},
        "users": [{"name": "a", "keys": ["ssh-ed25519 BBBB a"]}],
        "overrides": {"gce": {"instance": {"description": "custom", "cpu-platform": None}}},
    })
    assert isinstance(scn, Scenario)
    tree = render_tree(scn)
    assert tree["instance"]["attributes"]["ssh-keys"] == "raw:ssh-rsa AAAA raw\na:ssh-ed25519 BBBB a"
    assert tree["instance"]["description"] == "custom"
    assert "cpu-platform" not in tree["instance"]


def test_ip_with_prefix() -> None:
    scn = load_scenario({"network": {"interfaces": [{"ip": "192.168.1.5/16"}]}})
    assert isinstance(scn, Scenario)
    assert scn.interfaces[0].netmask == "255.255.0.0"
