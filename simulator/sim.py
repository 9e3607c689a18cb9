"""`Simulator`: the Python API. A metadata server in a background thread
with its own event loop; every method is safe to call from the test's thread
and runs on the server's loop (the tree is only ever touched there)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .faults import Fault
from .registry import canonical
from .scenario import Fleet, ScenarioLike, load_scenario
from .server import Instance, MetadataServer
from .tree import Node

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now: give it to the agent first, start a
    Simulator on it later (`Simulator(..., port=p)`) to test its retries."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Simulator:
    """A running simulator for one scenario (or a fleet).

    >>> with Simulator("demo.yaml", platforms=("gce",)) as sim:
    ...     sim.set("instance/attributes/enable-oslogin", "true")
    """

    def __init__(
        self,
        scenario: ScenarioLike = None,
        platforms: Iterable[str] = ("gce",),
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
    ) -> None:
        self.platforms = tuple(canonical(p) for p in platforms)  # fails fast on a typo
        self.host = host
        self._want_port = port
        self._want_control = control_port
        self.scenario = load_scenario(scenario)
        self.server = MetadataServer(self.scenario, self.platforms)
        self.port = 0
        self.control_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._control: Any = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Simulator:
        if self._thread is not None:
            return self
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="guestsim",
                                        daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as err:
            ready.set_exception(err)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _start(self) -> None:
        self.port = await self.server.start(self.host, self._want_port)
        await self.server.open_channels()
        if self._want_control is not None:
            from .control import ControlServer

            self._control = ControlServer(self.server)
            self.control_port = await self._control.start(self.host, self._want_control)

    async def _shutdown(self) -> None:
        if self._control is not None:
            await self._control.stop()
        await self.server.close_channels()
        await self.server.stop()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = self._loop = None

    def suspend(self) -> None:
        """Stop listening (clients get "connection refused"; held connections
        are closed) but keep every bit of state, until resume()."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running")
        asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(timeout=30)

    def resume(self) -> None:
        """Listen again on the same port(s) after suspend()."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running")
        asyncio.run_coroutine_threadsafe(self.server.resume(), loop).result(timeout=30)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running")
        if threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=30)

    # -- addresses ------------------------------------------------------------------
    def url(self, platform: str | None = None, instance: str | None = None) -> str:
        """Base URL a client of `platform` starts from, e.g.
        http://127.0.0.1:PORT/computeMetadata/v1/."""
        name = platform or self.platforms[0]
        inst = self.server.instance(instance)
        port = inst.port if inst.port is not None else self.port
        return host_url(self.host, port) + inst.platforms[name].base_path

    def serial_socket(self, platform: str = "smartos", instance: str | None = None) -> str:
        """The unix socket where `platform` serves a VM's metadata serial line (SmartOS):
        join a QEMU serial port to it, or connect to it as an LX zone would."""
        path: str = self.call(lambda: self._plat(platform, instance).socket_path)
        return path

    @property
    def control_url(self) -> str | None:
        return None if self.control_port is None else host_url(self.host, self.control_port)

    # -- state --------------------------------------------------------------------------
    def _inst(self, instance: str | None) -> Instance:
        return self.server.instance(instance)

    def _plat(self, platform: str | None, instance: str | None) -> Any:
        return self._inst(instance).platforms[platform or self.platforms[0]]

    def get(self, path: str = "", *, platform: str | None = None,
            instance: str | None = None) -> Node:
        return self.call(lambda: self._plat(platform, instance).get(path))

    def set(self, path: str, value: Node, *, platform: str | None = None,
            instance: str | None = None) -> None:
        self.call(lambda: self._plat(platform, instance).set(path, value))

    def delete(self, path: str, *, platform: str | None = None,
               instance: str | None = None) -> None:
        self.call(lambda: self._plat(platform, instance).delete(path))

    def apply(self, scenario: ScenarioLike, instance: str | None = None) -> None:
        """Replace a VM's scenario: every platform re-renders its tree (what the
        guest wrote back is kept). Handy to change users in the neutral form:
        `sim.apply({**doc, "users": [...]})`."""
        scn = load_scenario(scenario)
        if isinstance(scn, Fleet):
            raise ValueError("apply() takes one VM's scenario, not a fleet")
        self.call(lambda: self._inst(instance).reload(scn))

    def guest_attributes(self, instance: str | None = None) -> dict[str, str]:
        """What the guest PUT under instance/guest-attributes/, as {"ns/key": value}."""
        result: dict[str, str] = self.call(
            lambda: self._plat("gce", instance).guest_attributes())
        return result

    def state(self, platform: str | None = None, instance: str | None = None) -> dict[str, Any]:
        """What the guest wrote back on a platform (guest attributes, health reports)."""
        result: dict[str, Any] = self.call(lambda: self._plat(platform, instance).state())
        return result

    def held_polls(self) -> int:
        """Long polls waiting right now, over all VMs and platforms."""
        return self.call(lambda: sum(p.held_polls() for i in self.server.instances
                                     for p in i.platforms.values()))

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock (token/key expiry), not the machine's."""
        self.call(lambda: self.server.clock.advance(seconds))

    # -- faults -------------------------------------------------------------------------
    def add_fault(self, pattern: str, kind: str, **params: Any) -> int:
        """Inject a fault for paths matching `pattern`; returns its id.
        kinds: latency(delay) status(status) reset truncate(fraction) html
        flavor(flavor=None|"Wrong") blackhole flap(period, down) sequence(steps)
        body(body, content_type: a 200 of the test's choosing with the platform's headers);
        every kind takes count, delay, platform, method, client."""
        fault = Fault(pattern=pattern, kind=kind, **params)
        return self.call(lambda: self.server.faults.add(fault))

    def remove_fault(self, fault_id: int) -> bool:
        return self.call(lambda: self.server.faults.remove(fault_id))

    def clear_faults(self) -> None:
        self.call(self.server.faults.clear)

    def faults(self) -> list[dict[str, Any]]:
        return self.call(self.server.faults.describe)

    # -- request log --------------------------------------------------------------------
    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """The request log, oldest first; `path` filters by fnmatch pattern on the
        URL path (e.g. "*/guest-attributes/*"), `method` by HTTP method."""
        entries = self.call(self.server.log.entries)
        return [e for e in entries
                if (path is None or fnmatch.fnmatchcase(e["path"], path))
                and (method is None or e["method"] == method.upper())]

    def clear_requests(self) -> None:
        self.call(self.server.log.clear)

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float = 10.0,
                 interval: float = 0.02) -> bool:
        """Poll `predicate(self)` until true or `timeout`; returns the last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
