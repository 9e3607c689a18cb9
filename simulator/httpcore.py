"""A small HTTP/1.1 server on raw asyncio protocols.

Why not aiohttp's server: the simulator must misbehave on purpose (reset a
connection, cut a body short, never answer, answer without the flavor header)
and must hold ten thousand long polls without a task each. Owning the wire
makes both cheap. Every response goes out in ONE transport write and the socket
has TCP_NODELAY, so kept-alive clients never hit the Nagle/delayed-ACK stall.

A handler returns either a finished `Response` or a Future that resolves to
one later (long poll, injected latency, black hole).
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Action(enum.Enum):
    """How a response leaves the server; everything but SEND is a fault."""

    SEND = "send"
    RESET = "reset"  # RST the connection, no reply
    TRUNCATE = "truncate"  # full Content-Length, part of the body, then close
    BLACKHOLE = "blackhole"  # keep the connection open, never answer


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    version: str
    client: tuple[str, int]
    local: tuple[str, int]
    started: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    # Filled in by the server for the request log.
    instance: str = ""
    platform: str = ""
    fault: int | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: Action = Action.SEND
    truncate_at: int = 0
    close: bool = False
    # Serialized form, reused while the Date second and keep-alive flag are
    # unchanged: a released long poll shares one Response across thousands
    # of connections.
    wire: tuple[str, bool, bytes] | None = None

    @classmethod
    def text(
        cls, status: int, text: str, headers: list[tuple[str, str]] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> Response:
        return cls(status, text.encode(), [("Content-Type", content_type), *(headers or [])])


HandlerResult = Response | asyncio.Future[Response]
Handler = Callable[[Request], HandlerResult]
# Called once per finished request: (request, response or None if the client
# went away first, seconds spent).
Completion = Callable[[Request, Response | None, float], None]


class _DateCache:
    """RFC 7231 Date header, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


_DATE = _DateCache()


def serialize(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    if head_only or resp.action is not Action.SEND:
        return _serialize(resp, keep_alive, head_only)
    date = _DATE.get()
    cached = resp.wire
    if cached is not None and cached[0] == date and cached[1] == keep_alive:
        return cached[2]
    data = _serialize(resp, keep_alive, False)
    resp.wire = (date, keep_alive, data)
    return data


def _serialize(resp: Response, keep_alive: bool, head_only: bool) -> bytes:
    reason = REASONS.get(resp.status, "Unknown")
    lines = [f"HTTP/1.1 {resp.status} {reason}", f"Date: {_DATE.get()}"]
    lines.extend(f"{k}: {v}" for k, v in resp.headers)
    lines.append(f"Content-Length: {len(resp.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if head_only:
        return head
    body = resp.body[: resp.truncate_at] if resp.action is Action.TRUNCATE else resp.body
    return head + body


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpProtocol(asyncio.Protocol):
    """One connection. Requests are answered strictly in order (pipelining is
    parsed but a request waits while the one before it is pending)."""

    def __init__(self, handler: Handler, on_complete: Completion | None = None,
                 registry: set[HttpProtocol] | None = None) -> None:
        self._handler = handler
        self._registry = registry
        self._on_complete = on_complete
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._pending: asyncio.Future[Response] | None = None
        self._pending_req: Request | None = None
        self._parked: Response | None = None  # the black-hole verdict being held
        self._client: tuple[str, int] = ("", 0)
        self._local: tuple[str, int] = ("", 0)
        self._closing = False

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._registry is not None:
            self._registry.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self._client = (str(peer[0]), int(peer[1]))
        self._local = (str(local[0]), int(local[1]))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._pending is None and not self._closing:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._registry is not None:
            self._registry.discard(self)
        fut, req = self._pending, self._pending_req
        self._pending = self._pending_req = None
        if fut is not None and not fut.done():
            fut.cancel()
        if req is not None and self._on_complete is not None:
            self._on_complete(req, self._parked, time.monotonic() - req.started)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- request loop ---------------------------------------------------------
    def _process(self) -> None:
        while not self._closing and self._pending is None:
            try:
                req = self._parse()
            except _BadRequest as err:
                self._write_simple(err.status, str(err))
                return
            if req is None:
                return
            try:
                result = self._handler(req)
            except Exception as err:  # a simulator bug must not kill the connection silently
                result = Response.text(500, f"simulator error: {err!r}\n")
            if isinstance(result, Response):
                self._finish(req, result)
            else:
                self._pending, self._pending_req = result, req
                result.add_done_callback(self._on_result)

    def _on_result(self, fut: asyncio.Future[Response]) -> None:
        req = self._pending_req
        if fut is not self._pending or req is None:
            return  # connection already gone
        self._pending = self._pending_req = None
        if fut.cancelled():
            return
        exc = fut.exception()
        resp = fut.result() if exc is None else Response.text(500, f"simulator error: {exc!r}\n")
        self._finish(req, resp)
        if not self._closing and self._buf:
            self._process()

    def _finish(self, req: Request, resp: Response) -> None:
        t = self._transport
        assert t is not None
        if resp.action is Action.BLACKHOLE:
            # Park the connection: a future nobody resolves; connection_lost
            # cancels it and logs the request.
            fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            self._pending, self._pending_req, self._parked = fut, req, resp
            return
        if self._on_complete is not None:
            self._on_complete(req, resp, time.monotonic() - req.started)
        if resp.action is Action.RESET:
            self._reset()
            return
        keep = self._keep_alive(req) and not resp.close and resp.action is Action.SEND
        t.write(serialize(resp, keep, head_only=req.method == "HEAD"))
        if not keep:
            self._closing = True
            t.close()

    @staticmethod
    def _keep_alive(req: Request) -> bool:
        conn = req.headers.get("connection", "").lower()
        if req.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    def _reset(self) -> None:
        t = self._transport
        assert t is not None
        sock = t.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns close() into an RST: the client sees ECONNRESET.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._closing = True
        t.abort()

    def _write_simple(self, status: int, message: str) -> None:
        t = self._transport
        assert t is not None
        t.write(serialize(Response.text(status, message + "\n"), keep_alive=False))
        self._closing = True
        t.close()

    def _parse(self) -> Request | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            return None
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _parse_chunked(buf, start)
            if parsed is None:
                self._maybe_continue(headers)
                return None
            body, consumed = parsed
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as err:
                raise _BadRequest(400, "bad Content-Length") from err
            if length < 0 or length > MAX_BODY:
                raise _BadRequest(413, "body too large")
            if len(buf) - start < length:
                self._maybe_continue(headers)
                return None
            body, consumed = bytes(buf[start : start + length]), start + length
        del buf[:consumed]
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
        return Request(method, target, path, query, headers, body, version,
                       self._client, self._local)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        # curl waits ~1 s for "100 Continue" before sending a large PUT body.
        if headers.get("expect", "").lower() == "100-continue" and self._transport:
            headers["expect"] = ""
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        except ValueError as err:
            raise _BadRequest(400, "bad chunk size") from err
        pos = eol + 2
        if size == 0:
            # Skip trailers up to the empty line.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if len(out) > MAX_BODY:
            raise _BadRequest(413, "body too large")
        pos += size + 2


class Listener:
    """A listening socket and the connections it accepted.

    Tracking connections lets `close()` end held long polls and black holes
    at once (asyncio.Server.close_clients only exists from Python 3.13)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections: set[HttpProtocol] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.connections):
            conn.abort()
        await self.server.wait_closed()
        self.server = None


async def serve(
    handler: Handler, host: str, port: int, on_complete: Completion | None = None,
) -> Listener:
    listener = Listener()
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: HttpProtocol(handler, on_complete, listener.connections), host, port,
        reuse_address=True, backlog=4096,
    )
    return listener
