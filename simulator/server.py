"""The metadata server: routes a request to a VM and a platform, applies
faults, records the request log. Runs on whichever event loop starts it (the
Simulator's background thread, or the CLI's main thread)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from .faults import Faults, Verdict
from .httpcore import Action, HandlerResult, Listener, Request, Response, serve
from .platforms.base import Platform
from .registry import canonical, create_platform
from .reqlog import RequestLog
from .scenario import Fleet, Scenario
from .simclock import SimClock


class Instance:
    """One simulated VM: its scenario and one Platform per served cloud."""

    def __init__(self, name: str, scenario: Scenario, platforms: Sequence[str],
                 clock: SimClock) -> None:
        self.name = name
        self.scenario = scenario
        self.platforms: dict[str, Platform] = {
            p: create_platform(p, scenario, clock) for p in platforms
        }
        self.port: int | None = None  # set when this VM has its own listening port

    def reload(self, scenario: Scenario) -> None:
        self.scenario = scenario
        for plat in self.platforms.values():
            plat.reload(scenario)

    def platform_for(self, req: Request) -> Platform | None:
        for plat in self.platforms.values():
            if plat.claims(req):
                return plat
        if req.path in ("", "/"):
            best = max(self.platforms.values(), key=lambda p: p.claims_root(req))
            if best.claims_root(req):
                return best
        return None


class MetadataServer:
    def __init__(self, scenario: Scenario | Fleet, platforms: Sequence[str],
                 clock: SimClock | None = None) -> None:
        self.clock = clock or SimClock()
        self.platform_names = tuple(canonical(p) for p in platforms)
        self.faults = Faults()
        self.log = RequestLog()
        scenarios = scenario.instances if isinstance(scenario, Fleet) else (scenario,)
        self.instances: list[Instance] = []
        for i, scn in enumerate(scenarios):
            name = scn.name if scn.name not in {x.name for x in self.instances} else f"{scn.name}-{i}"
            self.instances.append(Instance(name, scn, self.platform_names, self.clock))
        self._by_client = {
            i.scenario.match_client: i for i in self.instances if i.scenario.match_client
        }
        self._by_port: dict[int, Instance] = {}
        self.servers: list[Listener] = []
        self.host, self.port = "127.0.0.1", 0

    # -- lifecycle ----------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen on the main port and on each VM's own port; return the main port."""
        main = await serve(self.handle, host, port, self._complete)
        self.servers.append(main)
        bound = main.port
        self.host, self.port = host, bound
        for inst in self.instances:
            want = inst.scenario.match_port
            if want is None:
                continue
            srv = await serve(self.handle, host, want, self._complete)
            self.servers.append(srv)
            inst.port = srv.port
            self._by_port[inst.port] = inst
        return bound

    async def stop(self) -> None:
        for srv in self.servers:
            await srv.close()
        self.servers.clear()

    # Platforms that reach the guest by another channel than HTTP (SmartOS: a unix socket
    # per VM, joined to its serial port) open it on the server's loop; stop() leaves them
    # open (a metadata server "down" is its HTTP side), close_channels() ends them.
    async def open_channels(self) -> None:
        for inst in self.instances:
            for plat in inst.platforms.values():
                opener = getattr(plat, "open_channel", None)
                if opener is not None:
                    await opener(self)

    async def close_channels(self) -> None:
        for inst in self.instances:
            for plat in inst.platforms.values():
                closer = getattr(plat, "close_channel", None)
                if closer is not None:
                    await closer()

    @property
    def listening(self) -> bool:
        return bool(self.servers)

    async def resume(self) -> None:
        """Listen again on the same ports after stop(); the state is kept."""
        if self.servers:
            return
        host, port = self.host, self.port
        main = await serve(self.handle, host, port, self._complete)
        self.servers.append(main)
        for inst in self.instances:
            if inst.port is not None:
                self.servers.append(await serve(self.handle, host, inst.port, self._complete))

    # -- routing ----------------------------------------------------------------------
    def route(self, req: Request) -> Instance:
        inst = self._by_client.get(req.client[0])
        if inst is None:
            inst = self._by_port.get(req.local[1], self.instances[0])
        return inst

    def instance(self, name: str | None) -> Instance:
        if name is None:
            return self.instances[0]
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(f"no instance named {name!r}")

    def handle(self, req: Request) -> HandlerResult:
        inst = self.route(req)
        req.instance = inst.name
        plat = inst.platform_for(req)
        if plat is None:
            return Response.text(404, "Not Found\n")
        req.platform = plat.name
        if not self.faults:
            return plat.handle(req)
        verdict = self.faults.check(plat.name, plat.relpath(req.path), req.path, req.method,
                                    req.client[0], plat.fault_headers)
        if verdict is None:
            return plat.handle(req)
        req.fault = verdict.fault
        if verdict.delay <= 0:
            return self._apply(plat, req, verdict)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()

        def later() -> None:
            if fut.done():
                return
            chain(self._apply(plat, req, verdict), fut)

        loop.call_later(verdict.delay, later)
        return fut

    @staticmethod
    def _apply(plat: Platform, req: Request, verdict: Verdict) -> HandlerResult:
        if verdict.replace is not None:
            return verdict.replace
        result = plat.handle(req)
        if verdict.truncate is not None:
            share = verdict.truncate
            return then(result, lambda r: dataclasses.replace(
                r, action=Action.TRUNCATE, truncate_at=int(len(r.body) * share)))
        if verdict.rewrite_flavor:
            value = verdict.flavor

            def rewrite(r: Response) -> Response:
                headers = [(k, v) for k, v in r.headers if k.lower() != "metadata-flavor"]
                if value is not None:
                    headers.append(("Metadata-Flavor", value))
                return dataclasses.replace(r, headers=headers)

            return then(result, rewrite)
        return result

    def _complete(self, req: Request, resp: Response | None, duration: float) -> None:
        self.log.record(req, resp, duration)


def chain(result: HandlerResult, fut: asyncio.Future[Response],
          fn: Callable[[Response], Response] = lambda r: r) -> None:
    """Resolve `fut` with `fn(result)`, now or when `result` is ready. If the
    client goes away (`fut` cancelled) the inner work is cancelled too."""
    if isinstance(result, Response):
        if not fut.done():
            fut.set_result(fn(result))
        return

    def done(inner: asyncio.Future[Response]) -> None:
        if fut.done():
            return
        if inner.cancelled():
            fut.cancel()
            return
        exc = inner.exception()
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(fn(inner.result()))

    result.add_done_callback(done)
    fut.add_done_callback(lambda f: result.cancel() if f.cancelled() else None)


def then(result: HandlerResult, fn: Callable[[Response], Response]) -> HandlerResult:
    if isinstance(result, Response):
        return fn(result)
    out: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    chain(result, out, fn)
    return out
