"""SmartOS / Triton: the host side of the metadata protocol (version 2, and version 1's GET),
served on a unix socket per VM instead of HTTP.

A KVM/bhyve guest reaches it on its second serial port: QEMU joins the port to
the socket (`-chardev socket,id=md,path=SOCK -device isa-serial,chardev=md`
after the console's port, so it is COM2 = /dev/ttyS1); an LX zone, or a test,
connects to the socket directly. `Simulator.serial_socket("smartos")` is the
path. Every connection is one stream, answered line by line in order, as a
serial line is:

- an empty line: `invalid command`;
- `NEGOTIATE V2`: `V2_OK`;
- a V2 frame (`V2 LEN CRC32 BODY`, BODY = `REQID CODE [BASE64]`): a frame whose
  length or checksum is wrong gets no answer at all (as on Triton); `GET key`
  -> `SUCCESS value` / `NOTFOUND`; `KEYS` -> the customer keys, one per line;
  `PUT` (payload base64(base64(key) SP base64(value))) -> `SUCCESS` (an empty
  value is refused, as Triton trims it away); `DELETE key` -> `SUCCESS`; writing an `sdc:` key ->
  `FAILURE`; an unknown code -> `FAILURE`;
- version 1's `GET key`: `SUCCESS`, the value's lines (a leading `.` doubled),
  `.`; or `NOTFOUND`.

The metadata is the platform's tree, flat: one entry per key, e.g.
`sim.set("root_authorized_keys", "ssh-ed25519 ...", platform="smartos")`. A
value that is not a string (`sdc:nics` is a list) is served as compact JSON,
and `sim.set("sdc:nics/0/mtu", 9000)` edits inside it. Keys under
`guestsim:` are the host's settings, never served: `guestsim:protocol` =
`v1` plays a host that speaks only version 1 (NEGOTIATE and V2 frames get
`FAILURE`).

What the guest PUT or DELETEd is in `sim.state("smartos")` (`put`: key ->
value, `deleted`: keys) and stays across `sim.apply()`. Requests are in the
request log (`method` = GET/KEYS/PUT/DELETE/NEGOTIATE/NEWLINE, `path` = the
key, `status` 200 SUCCESS / 404 NOTFOUND / 500 FAILURE / 0 no answer) and
faults apply to them (`pattern` matched against the key, `method` = the
operation): `blackhole` = no answer, `reset` = the host closes the
connection, `status` = FAILURE (404: NOTFOUND), `body` = SUCCESS with that
value, `html` = a line that is not a frame, `truncate` = a frame cut short
(length and checksum wrong), `flavor` = the right frame with a wrong checksum
(`flavor="reqid"`: right checksum, another request's id); `latency`,
`sequence`, `flap` as everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from typing import TYPE_CHECKING, Any

from ..faults import Verdict
from ..httpcore import Action, HandlerResult, Request, Response
from ..scenario import Scenario, deep_merge
from ..simclock import SimClock
from ..tree import Node, PathError
from .base import Platform

if TYPE_CHECKING:
    from ..server import MetadataServer

SETTINGS = "guestsim:"
PROTOCOL = SETTINGS + "protocol"
MAX_LINE = 4 * 1024 * 1024
_V2 = re.compile(r"V2 ([0-9]+) ([0-9a-f]+) ([0-9a-f]+) ?(.*)", re.DOTALL)
NOT_A_FRAME = b"<html><body>not a metadata frame</body></html>\n"


def crc32(body: bytes) -> str:
    return f"{zlib.crc32(body) & 0xFFFFFFFF:08x}"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def unb64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def v2_frame(reqid: str, code: str, payload: bytes | None = None) -> bytes:
    body = f"{reqid} {code}".encode()
    if payload:
        body += b" " + b64(payload)
    return b"V2 %d %s %s\n" % (len(body), crc32(body).encode(), body)


def render(scn: Scenario) -> dict[str, Node]:
    """The keys a SmartOS VM of this scenario has (Triton's names)."""
    nics: list[Node] = []
    for i, nic in enumerate(scn.interfaces):
        static = bool(nic.ip) and not nic.dhcp
        ips = [f"{nic.ip}/{nic.prefix}"] if static else ["dhcp"]
        ips += [f"{a}/{nic.ipv6_prefix}" for a in nic.ipv6]
        entry: dict[str, Node] = {
            "interface": f"net{i}",
            "mac": nic.mac,
            "primary": i == 0,
            "nic_tag": "external" if i == 0 else "internal",
            "vlan_id": 0,
            "mtu": nic.mtu,
            "ips": ips,
            "ip": nic.ip if static else "dhcp",
        }
        if static:
            entry["netmask"] = nic.netmask
            gateways = [g for g in (nic.gateway, nic.ipv6_gateway) if g]
            if gateways:
                entry["gateways"] = gateways
            if nic.gateway:
                entry["gateway"] = nic.gateway
        nics.append(entry)
    doc: dict[str, Node] = {
        "sdc:uuid": scn.uuid,
        "sdc:hostname": scn.short_hostname,
        "sdc:datacenter_name": scn.zone,
        "sdc:nics": nics,
        "sdc:resolvers": list(scn.nameservers),
        "sdc:routes": [],
    }
    if scn.search:
        doc["sdc:dns_domain"] = scn.search[0]
    keys = [k.authorized_line() for _, k in scn.all_keys()]
    if keys:
        doc["root_authorized_keys"] = "\n".join(keys) + "\n"
    if scn.scripts.startup:
        doc["user-script"] = scn.scripts.startup
    if scn.user_data is not None:
        doc["user-data"] = scn.user_data
    if scn.vendor_data is not None:
        doc["sdc:vendor-data"] = scn.vendor_data
    return deep_merge(doc, scn.overrides.get("smartos") or {})


def wire_value(node: Node) -> bytes | None:
    """A key's value as the host sends it; None for a key that holds nothing."""
    if node is None:
        return None
    if isinstance(node, str):
        return node.encode("utf-8", "surrogateescape")
    return json.dumps(node, separators=(",", ":")).encode()


class SmartOsPlatform(Platform):
    name = "smartos"
    prefixes = ()  # nothing over HTTP
    base_path = "/"

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self._put: dict[str, str] = {}
        self._deleted: list[str] = []
        self._gone: set[str] = set()  # keys the guest deleted (and has not PUT since)
        super().__init__(scenario, clock)
        self._dir: str | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: MetadataServer | None = None
        self._instance = ""

    # -- the tree: one flat entry per key ------------------------------------------------
    def render(self, scenario: Scenario) -> dict[str, Node]:
        doc = render(scenario)
        for key in self._gone:
            doc.pop(key, None)
        for key, value in self._put.items():
            doc[key] = value
        return doc

    def _nested(self, path: str) -> bool:
        head = path.split("/", 1)[0]
        return (path not in self.tree.root and "/" in path
                and isinstance(self.tree.root.get(head), dict | list))

    def get(self, path: str) -> Node:
        if not path:
            return copy.deepcopy(self.tree.root)
        if self._nested(path):
            return self.tree.get(path)
        if path not in self.tree.root:
            raise PathError(path)
        return copy.deepcopy(self.tree.root[path])

    def set(self, path: str, value: Node) -> None:
        if not path or self._nested(path):
            self.tree.set(path, value)
            return
        self.tree.root[path] = copy.deepcopy(value)
        self.tree.changed()

    def delete(self, path: str) -> None:
        if self._nested(path):
            self.tree.delete(path)
            return
        if path not in self.tree.root:
            raise PathError(path)
        del self.tree.root[path]
        self.tree.changed()

    def state(self) -> dict[str, Any]:
        return {"put": dict(self._put), "deleted": list(self._deleted)}

    def handle(self, req: Request) -> HandlerResult:
        return self.not_found()

    def address(self, http_base: str) -> str:
        return f"unix:{self.socket_path}"  # what the agent's --metadata-url takes

    @property
    def socket_path(self) -> str:
        if self._dir is None:
            raise RuntimeError("the SmartOS metadata socket is not open (is the simulator running?)")
        return os.path.join(self._dir, "metadata.sock")

    # -- the channel ------------------------------------------------------------------------
    async def open_channel(self, server: MetadataServer) -> None:
        """Listen on a fresh socket in a private (0700) directory; runs on the server's loop."""
        if self._listener is not None:
            return
        self._server = server
        self._instance = next((i.name for i in server.instances if self in i.platforms.values()), "")
        self._dir = tempfile.mkdtemp(prefix="guestsim-smartos-")
        self._listener = await asyncio.start_unix_server(self._serve, path=self.socket_path,
                                                         limit=MAX_LINE)

    async def close_channel(self) -> None:
        listener, self._listener = self._listener, None
        for writer in list(self._writers):
            writer.transport.abort()
        if listener is not None:
            listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    return  # a line no host would take: hang up
                if not await self._answer(line, writer):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    # -- one line ---------------------------------------------------------------------------
    def _record(self, method: str, key: str, status: int, outcome: Action, started: float,
                fault: int | None) -> None:
        if self._server is None:
            return
        req = Request(method=method, target=key, path=key, query={}, headers={}, body=b"",
                      version="mdata", client=("unix", 0), local=("unix", 0), started=started)
        req.instance, req.platform, req.fault = self._instance, self.name, fault
        self._server.log.record(req, Response(status, action=outcome), time.monotonic() - started)

    def _verdict(self, method: str, key: str) -> Verdict | None:
        if self._server is None or not self._server.faults:
            return None
        return self._server.faults.check(self.name, key, f"{method} {key}", method, "unix", [])

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one line; False when the connection is to be closed."""
        started = time.monotonic()
        text = line.decode("utf-8", "surrogateescape").rstrip()
        v1_only = self.tree.root.get(PROTOCOL) == "v1"
        parts = text.split(None, 1)
        cmd = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else ""
        reqid: str | None = None
        raw = b""
        if not cmd:
            method, key = "NEWLINE", ""
        elif cmd == "V2" and not v1_only:
            parsed = self._parse_v2(text)
            if parsed is None:  # Triton drops a frame it cannot check: no answer
                self._record("V2", "", 0, Action.BLACKHOLE, started, None)
                return True
            reqid, method, raw = parsed
            key = raw.decode("utf-8", "surrogateescape").strip() if method in ("GET", "DELETE") else ""
            if method == "PUT":
                key = self._put_key(raw) or ""
        else:
            method, key = cmd, ("" if cmd == "V2" else arg.strip())
        verdict = self._verdict(method, key)
        if verdict is not None and verdict.delay > 0:
            await asyncio.sleep(verdict.delay)
        fault = verdict.fault if verdict is not None else None
        replace = verdict.replace if verdict is not None else None
        if replace is not None and replace.action is Action.RESET:
            self._record(method, key, 0, Action.RESET, started, fault)
            return False
        if replace is not None and replace.action is Action.BLACKHOLE:
            self._record(method, key, 0, Action.BLACKHOLE, started, fault)
            return True
        if replace is not None and replace.status == 200 and "html" in dict(replace.headers).get(
                "Content-Type", "text/html"):
            writer.write(NOT_A_FRAME)
            await writer.drain()
            self._record(method, key, 200, Action.TRUNCATE, started, fault)
            return True
        if reqid is not None:
            code, payload = self._v2(method, raw, replace)
            out = v2_frame(reqid, code, payload)
            out = self._mangle(out, reqid, code, payload, verdict)
        else:
            code, out = self._plain(cmd, key, v1_only, replace, method)
        writer.write(out)
        await writer.drain()
        status = {"SUCCESS": 200, "V2_OK": 200, "NOTFOUND": 404, "invalid command": 400}.get(code, 500)
        outcome = Action.TRUNCATE if verdict is not None and (
            verdict.truncate is not None or verdict.rewrite_flavor) else Action.SEND
        self._record(method, key, status, outcome, started, fault)
        return True

    @staticmethod
    def _parse_v2(text: str) -> tuple[str, str, bytes] | None:
        m = _V2.fullmatch(text)
        if m is None:
            return None
        body = f"{m.group(3)} {m.group(4)}".rstrip().encode("utf-8", "surrogateescape")
        if int(m.group(1)) != len(body) or m.group(2) != crc32(body):
            return None
        fields = body.decode("utf-8", "surrogateescape").split(" ")
        if len(fields) > 3 or not fields[1:]:
            return None
        raw = unb64(fields[2].encode()) if len(fields) == 3 else b""
        if raw is None:
            return None
        return fields[0], fields[1], raw

    @staticmethod
    def _put_key(raw: bytes) -> str | None:
        terms = raw.decode("utf-8", "surrogateescape").strip().split(" ")
        if len(terms) != 2:
            return None
        key = unb64(terms[0].encode())
        return None if key is None else key.decode("utf-8", "replace").strip()

    def _lookup(self, key: str) -> bytes | None:
        if key.startswith(SETTINGS):
            return None
        return wire_value(self.tree.root.get(key))

    def _customer_keys(self) -> list[str]:
        return [k for k, v in self.tree.root.items()
                if not k.startswith(("sdc:", SETTINGS)) and v is not None]

    def _v2(self, method: str, raw: bytes, replace: Response | None) -> tuple[str, bytes | None]:
        """(code, payload) for a checked V2 request."""
        if replace is not None and replace.status == 200:
            return "SUCCESS", replace.body  # the `body` fault: a value of the test's choosing
        if replace is not None:
            return ("NOTFOUND", None) if replace.status == 404 else (
                "FAILURE", f"injected {replace.status}".encode())
        if method == "GET":
            key = raw.decode("utf-8", "surrogateescape").strip()
            if not key:
                return "FAILURE", b"Invalid GET Request"
            value = self._lookup(key)
            return ("NOTFOUND", None) if value is None else ("SUCCESS", value)
        if method == "KEYS":
            return "SUCCESS", "\n".join(self._customer_keys()).encode()
        if method == "PUT":
            terms = raw.decode("utf-8", "surrogateescape").strip().split(" ")
            name = self._put_key(raw)
            value = unb64(terms[1].encode()) if len(terms) == 2 else None
            if not name or value is None:
                return "FAILURE", b"Invalid PUT Request"
            return self._write(name, value.decode("utf-8", "surrogateescape"))
        if method == "DELETE":
            key = raw.decode("utf-8", "surrogateescape").strip()
            if not key:
                return "FAILURE", b"Invalid DELETE Request"
            return self._write(key, None)
        return "FAILURE", f"Unknown command {method}".encode()

    def _write(self, key: str, value: str | None) -> tuple[str, bytes | None]:
        if key.startswith("sdc:"):
            return "FAILURE", b'Cannot update the "sdc" Namespace.'
        if key.startswith(SETTINGS):
            return "FAILURE", b'Cannot update the "guestsim" Namespace.'
        if value is None:
            self._put.pop(key, None)
            self._deleted.append(key)
            self._gone.add(key)
            if key in self.tree.root:
                del self.tree.root[key]
                self.tree.changed()
        else:
            self._put[key] = value
            self._gone.discard(key)
            self.tree.root[key] = value
            self.tree.changed()
        return "SUCCESS", b"OK"

    @staticmethod
    def _mangle(out: bytes, reqid: str, code: str, payload: bytes | None,
                verdict: Verdict | None) -> bytes:
        """The truncate and flavor faults: a frame cut short, a wrong checksum, a wrong id."""
        if verdict is None:
            return out
        _, length, crc, body = out.rstrip(b"\n").split(b" ", 3)
        if verdict.truncate is not None:
            return b"V2 %s %s %s\n" % (length, crc, body[: int(len(body) * verdict.truncate)])
        if verdict.rewrite_flavor:
            if verdict.flavor == "reqid":
                return v2_frame(f"{(int(reqid, 16) + 1) & 0xFFFFFFFF:08x}", code, payload)
            wrong = f"{int(crc, 16) ^ 0x5A5A5A5A:08x}".encode()
            return b"V2 %s %s %s\n" % (length, wrong, body)
        return out

    def _plain(self, cmd: str, key: str, v1_only: bool, replace: Response | None,
               method: str) -> tuple[str, bytes]:
        """(code, bytes) for a line that is not a V2 frame."""
        if not cmd:
            return "invalid command", b"invalid command\n"
        if cmd == "NEGOTIATE":
            if not v1_only and key == "V2" and replace is None:
                return "V2_OK", b"V2_OK\n"
            return "FAILURE", b"FAILURE\n"
        if cmd == "GET":
            if not key:
                return "invalid command", b"invalid command\n"
            if replace is not None and replace.status != 200:
                return ("NOTFOUND", b"NOTFOUND\n") if replace.status == 404 else ("FAILURE", b"FAILURE\n")
            value = replace.body if replace is not None else self._lookup(key)
            if value is None:
                return "NOTFOUND", b"NOTFOUND\n"
            lines = value.decode("utf-8", "surrogateescape").split("\n")
            stuffed = "\n".join("." + ln if ln.startswith(".") else ln for ln in lines)
            return "SUCCESS", b"SUCCESS\n" + stuffed.encode("utf-8", "surrogateescape") + b"\n.\n"
        return "FAILURE", b"FAILURE\n"
