"""The HTTP parser never crashes and never answers garbage with a 2xx (hypothesis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from guestsim import Simulator, free_port
from guestsim.httpcore import HttpProtocol, Request, Response

from .conftest import FLAVOR


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)


def run(payload: bytes, chunks: int) -> tuple[bytes, list[Request]]:
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        return Response.text(200, "ok")

    proto = HttpProtocol(handler)
    transport = FakeTransport()
    proto.connection_made(transport)
    step = max(1, len(payload) // chunks)
    for i in range(0, len(payload), step):
        proto.data_received(payload[i : i + step])
    return bytes(transport.out), seen


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=7))
def test_garbage_never_crashes(payload: bytes, chunks: int) -> None:
    out, seen = run(payload + b"\r\n\r\n", chunks)
    if not seen:
        assert out == b"" or out.startswith((b"HTTP/1.1 4", b"HTTP/1.1 100"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["/a", "/b/c", "/x?y=1", "//d//"]), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=9))
def test_pipelined_requests_split_anywhere(paths: list[str], chunks: int) -> None:
    payload = b"".join(f"GET {p} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for p in paths)
    out, seen = run(payload, chunks)
    assert [r.target for r in seen] == paths
    assert out.count(b"HTTP/1.1 200 OK") == len(paths)


def test_free_port_then_late_start() -> None:
    port = free_port()
    t = time.monotonic()
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=60)
        raise AssertionError("nothing should listen yet")
    except requests.ConnectionError:
        pass
    # refused at once, not a connect that hangs until the timeout (a generous bound, far
    # below that timeout: a loaded 2-core machine cannot fail it)
    assert time.monotonic() - t < 15
    with Simulator({}, port=port) as sim:
        got = requests.get(sim.url() + "instance/name", headers=FLAVOR, timeout=5)
        assert got.text == "sim-vm"
