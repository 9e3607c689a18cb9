"""Simulator benchmark: `nox -s bench-sim` or `python -m guestsim.bench`.

The server runs in its own process (`guestsim serve`); load comes from
another process: wrk when installed (C, keep-alive connections), else a
Python asyncio load generator. Measured:

1. small GETs/s       GET /computeMetadata/v1/instance/id
2. recursive GETs/s   GET /computeMetadata/v1/?recursive=true (the whole tree as JSON)
3. long polls         N connections each holding a wait_for_change GET; one
                      change through the control API; time until every one
                      of the N has its answer.
4. (--compare-aiohttp) the same small GET against a minimal aiohttp server,
   the measurement behind choosing raw asyncio protocols.

Bounded in count and time; loopback only. Exit status 1 if a target is missed
(--targets): >= 5,000 small GETs/s; 10,000 long polls released within 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEMO = HERE / "scenarios" / "demo.yaml"
FLAVOR = "Metadata-Flavor: Google"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- server process ----------------------------------------------------------------

class Served:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        cmd = [sys.executable, "-m", "guestsim.cli", "serve", "--platform", "gce",
               "--scenario", str(DEMO), "--state-file", f"{self.tmp.name}/state.json"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        urls: dict[str, str] = {}
        assert self.proc.stdout is not None
        while "control" not in urls:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("guestsim serve exited")
            name, _, url = line.rpartition(": ")
            urls["control" if name == "control" else "gce"] = url.strip()
        self.gce = urls["gce"]
        self.control = urls["control"]

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.control + "/v1/info", timeout=10) as r:  # noqa: S310
            data: dict[str, Any] = json.load(r)
            return data

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


# -- throughput ----------------------------------------------------------------------

def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", FLAVOR, url],
        capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(m.group(1))


async def _py_load(host: str, port: int, path: str, seconds: float, connections: int) -> int:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{FLAVOR}\r\n\r\n").encode()
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            done += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done


def throughput(url: str, seconds: int, connections: int) -> tuple[float, str]:
    if shutil.which("wrk"):
        return wrk(url, seconds, connections), "wrk"
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m is not None
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    # The generator runs in a child process so it does not share the
    # server's core accounting with this one.
    code = (f"import asyncio,sys; from guestsim.bench import _py_load; "
            f"print(asyncio.run(_py_load({host!r},{port},{path!r},{seconds},{connections})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=seconds + 60).stdout
    return int(out.strip()) / seconds, "python"


# -- long polls ------------------------------------------------------------------------

class _Poll(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[float]) -> None:
        self.request, self.done = request, done
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and not self.done.done():
            # Keep the connection: closing 10,000 at once would load the
            # server during the very interval being measured.
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before answering: {exc}"))


async def long_polls(served: Served, count: int, hold_timeout: float = 120) -> dict[str, float]:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", served.gce)
    assert m is not None
    host, port, base = m.group(1), int(m.group(2)), m.group(3)
    loop = asyncio.get_running_loop()
    # Current etag of instance/attributes/.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {base}instance/attributes/ HTTP/1.1\r\nHost: x\r\n{FLAVOR}\r\n"
                 "Connection: close\r\n\r\n".encode())
    head = (await reader.read()).decode("latin-1")
    writer.close()
    etag_m = re.search(r"ETag: (\w+)", head)
    assert etag_m is not None
    path = (f"{base}instance/attributes/?recursive=true&wait_for_change=true"
            f"&last_etag={etag_m.group(1)}&timeout_sec={int(hold_timeout)}")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{FLAVOR}\r\n\r\n".encode()
    futures: list[asyncio.Future[float]] = []
    transports: list[asyncio.BaseTransport] = []
    t0 = time.perf_counter()
    batch = 500  # connect in batches: the listen backlog is finite
    for start in range(0, count, batch):
        conns = []
        for _ in range(min(batch, count - start)):
            fut: asyncio.Future[float] = loop.create_future()
            futures.append(fut)
            conns.append(loop.create_connection(lambda f=fut: _Poll(request, f), host, port))
        for transport, _ in await asyncio.gather(*conns):
            transports.append(transport)
    connect_s = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while True:
        held = await asyncio.to_thread(lambda: served.info()["held_polls"])
        if held >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if held < count:
        raise RuntimeError(f"only {held} of {count} polls held")
    answered_early = sum(1 for f in futures if f.done())
    body = json.dumps("alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAbench alice").encode()

    def trigger() -> float:
        url = served.control + "/v1/tree/instance/attributes/ssh-keys"
        req = urllib.request.Request(url, data=body, method="PUT")  # noqa: S310 - loopback
        start = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30):  # noqa: S310 - loopback control API
            pass
        return start

    started = await asyncio.to_thread(trigger)
    results = await asyncio.wait_for(asyncio.gather(*futures), timeout=60)
    last = max(results)
    for t in transports:
        t.close()
    return {"polls": count, "held": held, "answered_before_change": answered_early,
            "connect_s": round(connect_s, 3), "release_all_s": round(last - started, 3)}


# -- aiohttp comparison --------------------------------------------------------------------

AIOHTTP_SERVER = """
import sys
from aiohttp import web
async def h(request):
    if request.headers.get("Metadata-Flavor") != "Google":
        return web.Response(status=403)
    return web.Response(text="4520031799277581759", headers={"Metadata-Flavor": "Google",
                        "ETag": "abc", "Content-Type": "application/text"})
app = web.Application()
app.router.add_get("/{tail:.*}", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True),
            access_log=None)
"""


def compare_aiohttp(seconds: int, connections: int) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", AIOHTTP_SERVER, str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.3)
        rate, _ = throughput(f"http://127.0.0.1:{port}/computeMetadata/v1/instance/id",
                             seconds, connections)
        return rate
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=5, help="per throughput run (max 60)")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--polls", type=int, default=10000, help="long polls held at once")
    p.add_argument("--compare-aiohttp", action="store_true")
    p.add_argument("--targets", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    seconds = max(1, min(args.seconds, 60))
    nofile = raise_nofile()
    polls = min(args.polls, max(100, (nofile - 200) // 1))
    results: dict[str, Any] = {"nofile": nofile, "cpus": os.cpu_count()}
    served = Served()
    try:
        results["small_gets_per_s"], results["load_generator"] = throughput(
            served.gce + "instance/id", seconds, args.connections)
        results["recursive_gets_per_s"], _ = throughput(
            served.gce + "?recursive=true", seconds, args.connections)
        results["long_poll"] = asyncio.run(long_polls(served, polls))
    finally:
        served.close()
    if args.compare_aiohttp:
        results["aiohttp_small_gets_per_s"] = compare_aiohttp(seconds, args.connections)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"load generator: {results['load_generator']}, {args.connections} keep-alive "
              f"connections, {seconds} s each, RLIMIT_NOFILE {nofile}")
        print(f"small GETs/s:          {results['small_gets_per_s']:>10,.0f}")
        print(f"recursive JSON GETs/s: {results['recursive_gets_per_s']:>10,.0f}")
        lp = results["long_poll"]
        print(f"long polls held:       {lp['held']:>10,}  (connected in {lp['connect_s']} s)")
        print(f"one change released all in {lp['release_all_s']} s")
        if "aiohttp_small_gets_per_s" in results:
            print(f"aiohttp small GETs/s:  {results['aiohttp_small_gets_per_s']:>10,.0f}")
    ok = (results["small_gets_per_s"] >= 5000 and results["long_poll"]["release_all_s"] <= 1.0
          and results["long_poll"]["polls"] >= 10000)
    if args.targets and not ok:
        print("TARGET MISSED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
