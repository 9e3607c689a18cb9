"""The control API: JSON over HTTP on its own loopback port, for the CLI and
for tests that drive a simulator in another process.

    GET    /v1/info                          instances, ports, platforms, URLs
    GET    /v1/tree/PATH?platform=P&instance=I       value at PATH (JSON)
    PUT    /v1/tree/PATH   body: JSON value (or text/plain: the raw string)
    DELETE /v1/tree/PATH
    GET    /v1/state?platform=P&instance=I   what the guest wrote back
    GET    /v1/log[?since=N]                 request log, JSON lines
    DELETE /v1/log
    GET    /v1/faults   POST /v1/faults (JSON spec)   DELETE /v1/faults[/ID]
    POST   /v1/clock    {"advance": seconds}
    PUT    /v1/scenario[?instance=I]  body: a scenario (YAML or JSON): re-render that VM
    POST   /v1/suspend | /v1/resume    stop / restart listening on the metadata port(s)

Kept apart from the metadata port so a guest can never reach it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import yaml

from .faults import Fault, FaultError
from .httpcore import HandlerResult, Listener, Request, Response, serve
from .platforms.base import Platform
from .scenario import Scenario, ScenarioError, load_scenario
from .server import MetadataServer
from .tree import PathError


def _json(status: int, value: Any) -> Response:
    body = json.dumps(value, indent=None, default=str).encode() + b"\n"
    return Response(status, body, [("Content-Type", "application/json")])


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


class ControlServer:
    def __init__(self, server: MetadataServer) -> None:
        self.server = server
        self._listener: Listener | None = None

    async def start(self, host: str, port: int) -> int:
        self._listener = await serve(self.handle, host, port)
        return self._listener.port

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    def info(self) -> dict[str, Any]:
        return {
            "platforms": list(self.server.platform_names),
            "instances": [
                {"name": i.name, "port": i.port, "client": i.scenario.match_client,
                 "paths": {p: plat.base_path for p, plat in i.platforms.items()}}
                for i in self.server.instances
            ],
            "requests": self.server.log.total,
            "held_polls": sum(p.held_polls() for i in self.server.instances
                              for p in i.platforms.values()),
        }

    def _platform(self, req: Request) -> Platform:
        inst = self.server.instance(req.query.get("instance") or None)
        name = req.query.get("platform") or self.server.platform_names[0]
        try:
            return inst.platforms[name]
        except KeyError:
            raise KeyError(f"platform {name!r} is not served") from None

    def handle(self, req: Request) -> HandlerResult:
        try:
            return self._route(req)
        except (KeyError, PathError) as err:
            return _error(404, str(err.args[0]) if err.args else "not found")
        except (ValueError, TypeError, FaultError, ScenarioError, yaml.YAMLError) as err:
            return _error(400, str(err))

    def _route(self, req: Request) -> HandlerResult:
        path, method = req.path, req.method
        if path == "/v1/info":
            return _json(200, self.info())
        if path == "/v1/tree" or path.startswith("/v1/tree/"):
            return self._tree(req, path[len("/v1/tree"):])
        if path == "/v1/state" and method == "GET":
            return _json(200, self._platform(req).state())
        if path == "/v1/log":
            if method == "DELETE":
                self.server.log.clear()
                return _json(200, {"cleared": True})
            entries = self.server.log.entries(int(req.query.get("since", "0")))
            body = "".join(json.dumps(e) + "\n" for e in entries)
            return Response(200, body.encode(), [("Content-Type", "application/x-ndjson")])
        if path == "/v1/faults":
            if method == "GET":
                return _json(200, self.server.faults.describe())
            if method == "POST":
                spec = json.loads(req.body or b"{}")
                if not isinstance(spec, dict) or "pattern" not in spec or "kind" not in spec:
                    raise ValueError("a fault needs pattern and kind")
                return _json(201, {"id": self.server.faults.add(Fault(**spec))})
            if method == "DELETE":
                self.server.faults.clear()
                return _json(200, {"cleared": True})
        if path.startswith("/v1/faults/") and method == "DELETE":
            fid = int(path.rsplit("/", 1)[1])
            if not self.server.faults.remove(fid):
                raise KeyError(f"no fault {fid}")
            return _json(200, {"removed": fid})
        if path == "/v1/scenario" and method == "PUT":
            doc = yaml.safe_load(req.body.decode("utf-8")) or {}
            scn = load_scenario(doc)
            if not isinstance(scn, Scenario):
                raise ValueError("PUT /v1/scenario takes one VM's scenario, not a fleet")
            self.server.instance(req.query.get("instance") or None).reload(scn)
            return _json(200, {"applied": True})
        if path in ("/v1/suspend", "/v1/resume") and method == "POST":
            work = self.server.stop() if path == "/v1/suspend" else self.server.resume()
            return self._after(work, {"listening": path == "/v1/resume"})
        if path == "/v1/clock" and method == "POST":
            spec = json.loads(req.body or b"{}")
            self.server.clock.advance(float(spec.get("advance", 0)))
            return _json(200, {"offset": self.server.clock.offset})
        return _error(404, f"no control endpoint {method} {path}")

    @staticmethod
    def _after(work: Coroutine[Any, Any, None], result: dict[str, Any]) -> HandlerResult:
        """Answer once `work` (suspend/resume of the metadata port) is done."""
        task = asyncio.get_running_loop().create_task(work)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def done(t: asyncio.Task[None]) -> None:
            if fut.done():
                return
            exc = None if t.cancelled() else t.exception()
            fut.set_result(_error(500, repr(exc)) if exc else _json(200, result))

        task.add_done_callback(done)
        return fut

    def _tree(self, req: Request, path: str) -> Response:
        plat = self._platform(req)
        if req.method == "GET":
            return _json(200, plat.get(path))
        if req.method == "PUT":
            ctype = req.headers.get("content-type", "")
            text = req.body.decode("utf-8")
            value = text if ctype.startswith("text/plain") else json.loads(text)
            plat.set(path, value)
            return _json(200, {"set": path})
        if req.method == "DELETE":
            plat.delete(path)
            return _json(200, {"deleted": path})
        return _error(405, "GET, PUT or DELETE")
