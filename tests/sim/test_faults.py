"""Injected faults, as a client experiences them."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
import requests

from guestsim import FaultError, Simulator

from .conftest import FLAVOR


def get(sim: Simulator, path: str, timeout: float = 5) -> requests.Response:
    return requests.get(sim.url() + path, headers=FLAVOR, timeout=timeout)


def test_two_503_then_ok(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/*", kind="status", status=503, count=2)
    codes = [get(demo_sim, "instance/name").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert demo_sim.faults() == []  # used up


def test_status_keeps_flavor_header_and_pattern_scopes(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/attributes/*", kind="status", status=429)
    hit = get(demo_sim, "instance/attributes/ssh-keys")
    assert hit.status_code == 429
    assert hit.headers["Metadata-Flavor"] == "Google"
    assert get(demo_sim, "instance/name").status_code == 200
    assert get(demo_sim, "project/project-id").status_code == 200


def test_full_path_pattern(demo_sim: Simulator) -> None:
    demo_sim.add_fault("/computeMetadata/v1/project/*", kind="status", status=500)
    assert get(demo_sim, "project/project-id").status_code == 500


def test_latency(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/name", kind="latency", delay=0.5, count=1)
    t = time.monotonic()
    r = get(demo_sim, "instance/name")
    assert r.text == "demo-vm"
    assert time.monotonic() - t >= 0.45


def test_reset(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/name", kind="reset", count=1)
    with pytest.raises(requests.ConnectionError):
        get(demo_sim, "instance/name")
    assert get(demo_sim, "instance/name").status_code == 200
    entry = [e for e in demo_sim.requests() if e["outcome"] == "reset"]
    assert len(entry) == 1


def test_truncated_body(demo_sim: Simulator) -> None:
    demo_sim.add_fault("*", kind="truncate", fraction=0.5, count=1)
    conn = http.client.HTTPConnection("127.0.0.1", demo_sim.port, timeout=5)
    conn.request("GET", "/computeMetadata/v1/?recursive=true", headers=FLAVOR)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()


def test_captive_portal_html(demo_sim: Simulator) -> None:
    demo_sim.add_fault("*", kind="html")
    r = get(demo_sim, "instance/?recursive=true")
    assert r.status_code == 200
    assert "Metadata-Flavor" not in r.headers
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>")


def test_missing_and_wrong_flavor(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/name", kind="flavor", flavor=None, count=1)
    demo_sim.add_fault("instance/name", kind="flavor", flavor="Gooogle", count=1)
    first, second = get(demo_sim, "instance/name"), get(demo_sim, "instance/name")
    assert "Metadata-Flavor" not in first.headers
    assert first.text == "demo-vm"
    assert second.headers["Metadata-Flavor"] == "Gooogle"


def test_blackhole(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/name", kind="blackhole", count=1)
    with pytest.raises(requests.Timeout):
        get(demo_sim, "instance/name", timeout=0.5)
    assert get(demo_sim, "instance/name").status_code == 200
    assert demo_sim.wait_for(
        lambda s: [e["outcome"] for e in s.requests()] == ["blackhole", "sent"], timeout=5)


def test_blackhole_accepts_connection(demo_sim: Simulator) -> None:
    demo_sim.add_fault("*", kind="blackhole")
    with socket.create_connection(("127.0.0.1", demo_sim.port), timeout=2) as s:
        s.sendall(b"GET /computeMetadata/v1/ HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\n")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)


def test_flap(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/*", kind="flap", period=0.3, status=503)
    seen: set[int] = set()
    deadline = time.monotonic() + 30  # ends as soon as both are seen; generous under load
    while time.monotonic() < deadline and len(seen) < 2:
        seen.add(get(demo_sim, "instance/name").status_code)
        time.sleep(0.05)
    assert seen == {200, 503}


def test_sequence(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/name", kind="sequence", steps=[503, "reset", "ok", 404])
    assert get(demo_sim, "instance/name").status_code == 503
    with pytest.raises(requests.ConnectionError):
        get(demo_sim, "instance/name")
    assert get(demo_sim, "instance/name").status_code == 200
    assert get(demo_sim, "instance/name").status_code == 404
    assert get(demo_sim, "instance/name").status_code == 200  # script finished


def test_remove_and_clear(demo_sim: Simulator) -> None:
    fid = demo_sim.add_fault("*", kind="status", status=500)
    assert demo_sim.remove_fault(fid)
    demo_sim.add_fault("*", kind="status", status=500)
    demo_sim.clear_faults()
    assert get(demo_sim, "instance/name").status_code == 200


def test_method_filter(demo_sim: Simulator) -> None:
    demo_sim.add_fault("instance/guest-attributes/*", kind="status", status=503, method="PUT")
    put = requests.put(demo_sim.url() + "instance/guest-attributes/a/b", data="v", headers=FLAVOR,
                       timeout=5)
    assert put.status_code == 503
    assert get(demo_sim, "instance/name").status_code == 200


def test_bad_fault_rejected(demo_sim: Simulator) -> None:
    with pytest.raises(FaultError):
        demo_sim.add_fault("*", kind="explode")


def test_fault_on_long_poll_latency(demo_sim: Simulator) -> None:
    etag = get(demo_sim, "instance/attributes/").headers["ETag"]
    demo_sim.add_fault("instance/attributes", kind="latency", delay=0.3, count=1)
    t = time.monotonic()
    r = get(demo_sim, f"instance/attributes/?wait_for_change=true&last_etag={etag}&timeout_sec=0.2")
    assert r.headers["ETag"] == etag
    assert time.monotonic() - t >= 0.45
