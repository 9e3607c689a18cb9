"""EC2 IMDS v1/v2 as a client sees it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from guestsim import Simulator

from .conftest import DEMO, SCENARIOS

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


@pytest.fixture
def ec2() -> Iterator[Simulator]:
    with Simulator(DEMO, platforms=("ec2",)) as sim:
        yield sim


def token(sim: Simulator, ttl: str = "60") -> requests.Response:
    return requests.put(sim.url("ec2") + "api/token", headers={TTL: ttl}, timeout=5)


def test_v1_listing_and_values(ec2: Simulator) -> None:
    base = ec2.url("ec2")
    assert base.endswith("/latest/")
    listing = requests.get(base + "meta-data/", timeout=5).text.splitlines()
    assert "instance-id" in listing
    assert "placement/" in listing
    assert "public-keys/" in listing
    no_slash = requests.get(base + "meta-data", timeout=5)
    assert no_slash.status_code == 200
    assert no_slash.text.splitlines() == listing
    assert requests.get(base + "meta-data/instance-id", timeout=5).text.startswith("i-")
    assert requests.get(base + "meta-data/local-ipv4", timeout=5).text == "10.128.0.2"
    assert requests.get(base + "meta-data/placement/region", timeout=5).text == "us-central1"
    macs = requests.get(base + "meta-data/network/interfaces/macs/", timeout=5).text
    assert macs == "42:01:0a:80:00:02/"
    nic = requests.get(base + "meta-data/network/interfaces/macs/42:01:0a:80:00:02/local-ipv4s",
                       timeout=5)
    assert nic.text == "10.128.0.2"
    root = requests.get(f"http://127.0.0.1:{ec2.port}/", timeout=5).text.splitlines()
    assert root[0] == "1.0"
    assert root[-1] == "latest"
    assert requests.get(f"http://127.0.0.1:{ec2.port}/2009-04-04/meta-data/ami-id",
                        timeout=5).status_code == 200


def test_public_keys_forms(ec2: Simulator) -> None:
    base = ec2.url("ec2") + "meta-data/public-keys/"
    assert requests.get(base, timeout=5).text.splitlines() == ["0=alice", "1=bob", "2=carol"]
    assert requests.get(base + "0/", timeout=5).text == "openssh-key"
    key = requests.get(base + "1/openssh-key", timeout=5).text
    assert key.startswith('from="10.0.0.0/8",no-port-forwarding ssh-rsa AAAA')
    assert requests.get(base + "9/openssh-key", timeout=5).status_code == 404


def test_no_keys_and_no_user_data_are_404() -> None:
    with Simulator({}, platforms=("ec2",)) as sim:
        assert requests.get(sim.url("ec2") + "meta-data/public-keys/", timeout=5).status_code == 404
        assert requests.get(sim.url("ec2") + "user-data", timeout=5).status_code == 404


def test_user_data_and_identity_document(ec2: Simulator) -> None:
    ud = requests.get(ec2.url("ec2") + "user-data", timeout=5)
    assert ud.text.startswith("#cloud-config")
    doc = requests.get(ec2.url("ec2") + "dynamic/instance-identity/document", timeout=5).json()
    assert doc["instanceId"].startswith("i-")
    assert doc["privateIp"] == "10.128.0.2"
    assert doc["region"] == "us-central1"


def test_token_ttl_validation(ec2: Simulator) -> None:
    assert requests.put(ec2.url("ec2") + "api/token", timeout=5).status_code == 400
    assert token(ec2, "0").status_code == 400
    assert token(ec2, "21601").status_code == 400
    assert token(ec2, "abc").status_code == 400
    ok = token(ec2, "21600")
    assert ok.status_code == 200
    assert ok.headers[TTL] == "21600"
    fwd = requests.put(ec2.url("ec2") + "api/token",
                       headers={TTL: "60", "X-Forwarded-For": "1.2.3.4"}, timeout=5)
    assert fwd.status_code == 403


def test_v2_token_use_and_expiry(ec2: Simulator) -> None:
    tok = token(ec2, "60").text
    url = ec2.url("ec2") + "meta-data/instance-id"
    got = requests.get(url, headers={TOKEN: tok}, timeout=5)
    assert got.status_code == 200
    assert 0 < int(got.headers[TTL]) <= 60
    assert requests.get(url, headers={TOKEN: "bogus"}, timeout=5).status_code == 401
    ec2.advance_clock(61)
    assert requests.get(url, headers={TOKEN: tok}, timeout=5).status_code == 401


def test_v2_required_mode() -> None:
    with Simulator(SCENARIOS / "ec2-v2-required.yaml", platforms=("ec2",)) as sim:
        url = sim.url("ec2") + "meta-data/instance-id"
        assert requests.get(url, timeout=5).status_code == 401
        tok = token(sim).text
        got = requests.get(url, headers={TOKEN: tok}, timeout=5)
        assert got.text == "i-0abc1234def567890"
        sim.set("imds/http-tokens", "optional", platform="ec2")
        assert requests.get(url, timeout=5).status_code == 200


def test_endpoint_disabled(ec2: Simulator) -> None:
    ec2.set("imds/http-endpoint", "disabled", platform="ec2")
    assert token(ec2).status_code == 403
    assert requests.get(ec2.url("ec2") + "meta-data/", timeout=5).status_code == 403


def test_hop_limit_black_holes_token_reply(ec2: Simulator) -> None:
    ec2.set("imds/hop-limit-exceeded", True, platform="ec2")
    with pytest.raises(requests.Timeout):
        requests.put(ec2.url("ec2") + "api/token", headers={TTL: "60"}, timeout=0.5)
    # v1 GETs still work: only the PUT reply is lost.
    assert requests.get(ec2.url("ec2") + "meta-data/ami-id", timeout=5).status_code == 200


def test_settings_not_served(ec2: Simulator) -> None:
    assert requests.get(ec2.url("ec2") + "imds/http-tokens", timeout=5).status_code == 404
