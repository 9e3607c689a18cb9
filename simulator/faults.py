"""Faults injected at run time, per path pattern.

A fault matches a request by fnmatch pattern against the platform-relative
path (`instance/attributes/ssh-keys`) or the full URL path
(`/computeMetadata/v1/instance/...`), optionally by platform, method and
client address. The first active matching fault decides; `count` limits how
many requests it affects, after which it disappears ("two 503s then OK" is
`kind="status", status=503, count=2`). `kind="sequence"` scripts a list of
steps, one per request, each a fault spec or "ok".
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from .httpcore import Action, Response

KINDS = (
    "latency", "status", "reset", "truncate", "html", "flavor", "blackhole", "flap", "sequence",
    "ok", "body",
)

CAPTIVE_PORTAL = (
    "<!DOCTYPE html><html><head><title>Sign in to network</title></head>"
    "<body><h1>Welcome to Guest Wi-Fi</h1><form action=\"/login\">"
    "<input name=\"accept\" type=\"submit\" value=\"Accept terms\"></form></body></html>\n"
)


class FaultError(ValueError):
    pass


@dataclass
class Fault:
    pattern: str
    kind: str
    count: int | None = None  # None: until cleared
    status: int = 503
    delay: float = 0.0  # latency seconds (also added before other kinds)
    fraction: float = 0.5  # truncate: share of the body that is sent
    flavor: str | None = None  # flavor kind: value to send, None = header removed
    period: float = 1.0  # flap: seconds up, then seconds down
    down: str = "status"  # flap: what "down" means: status | reset | blackhole
    steps: list[dict[str, Any]] = field(default_factory=list)
    body: str = ""  # body kind: the whole answer, sent 200 with the platform's headers
    content_type: str = "application/json"  # body kind
    platform: str | None = None
    method: str | None = None
    client: str | None = None
    id: int = 0
    hits: int = 0
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind == "sequence":
            self.steps = [s if isinstance(s, dict) else _step(s) for s in self.steps]
            for s in self.steps:
                Fault(pattern="*", **s)  # validate early
            if self.count is None:
                self.count = len(self.steps)
        if self.count is not None and self.count < 0:
            raise FaultError("count must be >= 0")

    def matches(self, platform: str, rel: str, full: str, method: str, client: str) -> bool:
        if self.platform and self.platform != platform:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.client and self.client != client:
            return False
        return fnmatch.fnmatchcase(rel, self.pattern) or fnmatch.fnmatchcase(full, self.pattern)

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "created"}
        return out


def _step(spec: str | int) -> dict[str, Any]:
    """Short step forms: 503 / "503" -> status; "reset", "ok", ... -> kind."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return {"kind": "status", "status": int(spec)}
    return {"kind": str(spec)}


@dataclass(frozen=True)
class Verdict:
    """What the server does with a matched request: `delay` seconds first,
    then either the normal answer (`replace is None`) or `replace`."""

    delay: float
    replace: Response | None
    truncate: float | None = None  # share of the normal body to send
    rewrite_flavor: bool = False  # replace the flavor header by `flavor`
    flavor: str | None = None  # None with rewrite_flavor: header removed
    fault: int = 0  # id of the fault that decided


class Faults:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, fault: Fault) -> int:
        fault.id = next(self._ids)
        self._faults.append(fault)
        return fault.id

    def remove(self, fid: int) -> bool:
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fid]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self._faults]

    def __bool__(self) -> bool:
        return bool(self._faults)

    def check(self, platform: str, rel: str, full: str, method: str, client: str,
              headers: list[tuple[str, str]]) -> Verdict | None:
        for f in self._faults:
            if f.count is not None and f.hits >= f.count:
                continue
            if not f.matches(platform, rel, full, method, client):
                continue
            index = f.hits
            f.hits += 1
            if f.count is not None and f.hits >= f.count:
                self._faults.remove(f)
            if f.kind == "sequence":
                step = Fault(pattern=f.pattern, **f.steps[index % len(f.steps)])
                step.id = f.id
                return verdict(step, headers)
            return verdict(f, headers)
        return None


def verdict(f: Fault, headers: list[tuple[str, str]]) -> Verdict:
    return dataclasses.replace(_verdict(f, headers), fault=f.id)


def _verdict(f: Fault, headers: list[tuple[str, str]]) -> Verdict:
    kind = f.kind
    if kind == "flap":
        up = int((time.monotonic() - f.created) / max(f.period, 1e-3)) % 2 == 0
        if up:
            return Verdict(f.delay, None)
        kind = f.down
    if kind in ("ok", "latency"):
        return Verdict(f.delay, None)
    if kind == "status":
        return Verdict(f.delay, Response.text(f.status, f"injected {f.status}\n", headers))
    if kind == "reset":
        return Verdict(f.delay, Response(0, action=Action.RESET))
    if kind == "blackhole":
        return Verdict(f.delay, Response(0, action=Action.BLACKHOLE))
    if kind == "html":
        # A captive portal: 200, HTML, and none of the platform's headers.
        return Verdict(f.delay, Response.text(200, CAPTIVE_PORTAL,
                                              content_type="text/html; charset=utf-8"))
    if kind == "body":
        # The platform itself answering with a document of the test's choosing (hostile
        # nesting, wrong types, garbage): every header right, the content wrong.
        return Verdict(f.delay, Response.text(200, f.body, headers, content_type=f.content_type))
    if kind == "truncate":
        return Verdict(f.delay, None, truncate=f.fraction)
    if kind == "flavor":
        return Verdict(f.delay, None, rewrite_flavor=True, flavor=f.flavor)
    raise FaultError(kind)  # pragma: no cover - kinds validated on creation
