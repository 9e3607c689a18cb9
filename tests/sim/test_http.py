"""HTTP-level behaviour of the simulator's server: what odd but legal clients see."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from guestsim import Simulator

from .conftest import FLAVOR


def raw(port: int, payload: bytes, host: str = "127.0.0.1", want: int = 1) -> bytes:
    """Send raw bytes, read until `want` responses (by counting status lines) or EOF."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") < want or not data.endswith((b"\n", b"demo-vm")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.count(b"HTTP/1.1 ") >= want and b"\r\n\r\n" in data.rsplit(b"HTTP/1.1 ", 1)[1]:
                head, _, body = data.rsplit(b"HTTP/1.1 ", 1)[1].partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return data


def test_pipelined_requests_answered_in_order(demo_sim: Simulator) -> None:
    req = (b"GET /computeMetadata/v1/instance/hostname HTTP/1.1\r\nHost: x\r\n"
           b"Metadata-Flavor: Google\r\n\r\n"
           b"GET /computeMetadata/v1/instance/name HTTP/1.1\r\nHost: x\r\n"
           b"Metadata-Flavor: Google\r\n\r\n")
    data = raw(demo_sim.port, req, want=2)
    assert data.index(b"demo-vm.c.demo-project.internal") < data.rindex(b"\r\n\r\ndemo-vm")


def test_http10_closes(demo_sim: Simulator) -> None:
    data = raw(demo_sim.port, b"GET /computeMetadata/v1/instance/name HTTP/1.0\r\n"
                              b"Metadata-Flavor: Google\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in data


def test_malformed_request_is_400(demo_sim: Simulator) -> None:
    assert raw(demo_sim.port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_chunked_put(demo_sim: Simulator) -> None:
    def body() -> Iterator[bytes]:
        yield b"AAAA"
        yield b"BBBB"

    r = requests.put(demo_sim.url() + "instance/guest-attributes/ns/chunked", data=body(),
                     headers=FLAVOR, timeout=5)
    assert r.status_code == 200
    assert demo_sim.guest_attributes()["ns/chunked"] == "AAAABBBB"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_curl_expect_continue(demo_sim: Simulator) -> None:
    value = "x" * 5000  # curl asks for 100-continue above 1 KiB
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data-binary",
         value, "-H", "Metadata-Flavor: Google",
         demo_sim.url() + "instance/guest-attributes/ns/big"],
        capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout == "200"
    assert demo_sim.guest_attributes()["ns/big"] == value


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sim = Simulator({}, host="::1").start()
    except OSError:
        pytest.skip("::1 not available")
    try:
        assert sim.url().startswith("http://[::1]:")
        r = requests.get(sim.url() + "instance/name", headers=FLAVOR, timeout=5)
        assert r.text == "sim-vm"
    finally:
        sim.stop()


def test_stop_ends_held_polls() -> None:
    sim = Simulator({}).start()
    url = sim.url() + "instance/attributes/"
    etag = requests.get(url, headers=FLAVOR, timeout=5).headers["ETag"]
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            requests.get(f"{url}?wait_for_change=true&last_etag={etag}", headers=FLAVOR,
                         timeout=120)
        except requests.RequestException as err:
            errors.append(err)

    t = threading.Thread(target=poll)
    t.start()
    assert sim.wait_for(lambda s: s.held_polls() == 1, timeout=30)
    started = time.monotonic()
    sim.stop()
    t.join(60)
    assert not t.is_alive()
    # the held poll is closed by stop(), far sooner than the client's 120 s timeout (the
    # bound is generous: a loaded 2-core machine cannot fail it)
    assert time.monotonic() - started < 30
    assert errors  # the connection was closed under the client


def test_port_in_use_is_an_error() -> None:
    with Simulator({}) as sim, pytest.raises(OSError, match="in use"):
        Simulator({}, port=sim.port).start()


@pytest.mark.slow
def test_bench_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "guestsim.bench", "--seconds", "1", "--polls", "300", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["small_gets_per_s"] > 100
    assert result["long_poll"]["held"] == 300
    assert result["long_poll"]["answered_before_change"] == 0


def test_suspend_refuses_then_resume_keeps_state(demo_sim: Simulator) -> None:
    demo_sim.set("instance/attributes/kept", "yes")
    demo_sim.suspend()
    with pytest.raises(requests.ConnectionError):
        requests.get(demo_sim.url() + "instance/name", headers=FLAVOR, timeout=2)
    demo_sim.resume()
    r = requests.get(demo_sim.url() + "instance/attributes/kept", headers=FLAVOR, timeout=5)
    assert r.text == "yes"
