"""The real GCE probe, over real HTTP, against servers on 127.0.0.1 only.

Every probe is given an explicit 127.0.0.1 URL, and a guard fails any test
whose process tries to connect anywhere but loopback: no request can reach a
metadata address from here.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.adapters.platforms import gce
from guestagent.adapters.platforms.detect import DetectionFailed, detect
from guestagent.adapters.platforms.spec import ProviderOptions
from guestagent.ports.metadata import MetadataUnavailable


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to connect to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def options(url: str, root: Path) -> ProviderOptions:
    return ProviderOptions(url=url, root=str(root))  # an empty root: no DMI, no local media


class _Plain(http.server.BaseHTTPRequestHandler):
    """200 OK with a body, and no Metadata-Flavor header: a captive portal, or another cloud."""

    def do_GET(self) -> None:
        body = b"<html>welcome</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/computeMetadata/v1/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # never listened on: connecting is refused at once
    return f"http://127.0.0.1:{port}/computeMetadata/v1/"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/computeMetadata/v1/"
    sock.close()


def test_probe_recognises_the_simulated_metadata_server(make_simulator: Any) -> None:
    sim = make_simulator(None, platforms=("gce",))
    url = sim.url("gce")
    assert url.startswith("http://127.0.0.1:")
    assert gce.probe(ProviderOptions(url=url), 2.0) == f"metadata server at {url} answered with Metadata-Flavor: Google"


def test_detect_picks_gce_by_its_probe(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator(None, platforms=("gce",))
    found = detect(options(sim.url("gce"), tmp_path), (gce.PROVIDER,), timeout=5)
    assert found.spec is gce.PROVIDER
    assert "answered with Metadata-Flavor: Google" in found.reason


def test_probe_refuses_a_server_without_the_flavor_header(plain_server: str) -> None:
    with pytest.raises(MetadataUnavailable, match="without Metadata-Flavor: Google"):
        gce.probe(ProviderOptions(url=plain_server), 2.0)


def test_probe_of_a_closed_port_fails_fast(closed_port: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DetectionFailed, match=r"probes: gce: connection refused"):
        detect(options(closed_port, tmp_path), (gce.PROVIDER,), timeout=5)
    assert time.monotonic() - started < 2


def test_probe_of_a_black_hole_fails_within_the_timeout(black_hole: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(MetadataUnavailable, match=r"did not answer within 0\.5s"):
        gce.probe(ProviderOptions(url=black_hole), 0.5)
    assert time.monotonic() - started < 3

    started = time.monotonic()
    with pytest.raises(DetectionFailed, match=r"probes: gce: timed out"):
        detect(options(black_hole, tmp_path), (gce.PROVIDER,), timeout=0.5)
    assert time.monotonic() - started < 3
