"""Google Compute Engine metadata server (`/computeMetadata/v1/`).

Behaviour follows design/GCE_REFERENCE.md: flavor header both ways, 301 for a
directory without its slash, empty segments ignored, recursive JSON with
camelCased keys (attribute names untouched), `alt=text`, per-subtree ETag,
long polls, and guest attributes kept apart from the instance tree so writing
them never changes the etag of `instance/attributes/`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..httpcore import HandlerResult, Request, Response
from ..longpoll import LongPolls
from ..scenario import Scenario, deep_merge
from ..simclock import SimClock
from ..tree import Node, PathError, Tree, is_dir, listing, split
from .base import Platform

PREFIX = "/computeMetadata"
FLAVOR = ("Metadata-Flavor", "Google")
BASE_HEADERS: list[tuple[str, str]] = [
    FLAVOR,
    ("Server", "Metadata Server for VM"),
    ("X-XSS-Protection", "0"),
    ("X-Frame-Options", "SAMEORIGIN"),
]
GUEST_ATTR_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# Children of these directories are user-chosen names: never camelCased.
VERBATIM_PARENTS = {"attributes", "service-accounts", "guest-attributes"}


def camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def to_json(node: Node, parent: str = "") -> Node:
    """The recursive JSON form: kebab-case names become camelCase, except
    under attributes, whose keys stay exactly as the user wrote them."""
    if isinstance(node, dict):
        keep = parent in VERBATIM_PARENTS
        return {(k if keep else camel(k)): to_json(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [to_json(v, "") for v in node]
    return node


def leaf_text(value: Node) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def text_lines(node: Node, prefix: str, out: list[str]) -> None:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        name = f"{prefix}{k}"
        if is_dir(v):
            text_lines(v, name + "/", out)
        else:
            out.append(f"{name} {leaf_text(v)}")


def ssh_key_lines(scn: Scenario, scope: str) -> list[str]:
    return [f"{u.name}:{k.gce_line(u.name)}" for u in scn.users if u.scope == scope for k in u.keys]


def build_attributes(base: dict[str, str], lines: list[str], extra: dict[str, str]) -> dict[str, str]:
    attrs = dict(extra)
    attrs.update(base)
    if lines:
        existing = attrs.get("ssh-keys")
        attrs["ssh-keys"] = "\n".join(([existing] if existing else []) + lines)
    return attrs


def render_tree(scn: Scenario) -> dict[str, Node]:
    num = scn.project_number
    extra: dict[str, str] = {}
    s = scn.scripts
    for key, value in (
        ("startup-script", s.startup), ("startup-script-url", s.startup_url),
        ("shutdown-script", s.shutdown), ("shutdown-script-url", s.shutdown_url),
        ("user-data", scn.user_data),
    ):
        if value is not None:
            extra[key] = value
    nics: list[Node] = []
    for nic in scn.interfaces:
        entry: dict[str, Node] = {
            "access-configs": (
                [{"external-ip": nic.public_ip, "type": "ONE_TO_ONE_NAT"}] if nic.public_ip else []
            ),
            "dns-servers": list(scn.nameservers) or ([nic.gateway] if nic.gateway else []),
            "forwarded-ips": list(nic.forwarded_ips),
            "forwarded-ipv6s": list(nic.forwarded_ipv6s),
            "gateway": nic.gateway or "",
            "ip": nic.ip or "",
            "ip-aliases": list(nic.ip_aliases),
            "mac": nic.mac,
            "mtu": nic.mtu,
            "network": f"projects/{num}/networks/{nic.network}",
            "subnetmask": nic.netmask,
            "target-instance-ips": list(nic.target_instance_ips),
        }
        if nic.ipv6:
            entry["ipv6s"] = list(nic.ipv6)
            entry["gateway-ipv6"] = nic.ipv6_gateway or ""
        nics.append(entry)
    instance: dict[str, Node] = {
        "attributes": build_attributes(scn.attributes, ssh_key_lines(scn, "instance"), extra),
        "cpu-platform": "Intel Broadwell",
        "description": "",
        "disks": [{"device-name": "persistent-disk-0", "index": 0, "interface": "SCSI",
                   "mode": "READ_WRITE", "type": "PERSISTENT-BALANCED"}],
        "hostname": scn.fqdn,
        # The real server sends the numeric id as a JSON number.
        "id": int(scn.instance_id) if scn.instance_id.isdigit() else scn.instance_id,
        "image": f"projects/debian-cloud/global/images/{scn.image}",
        "licenses": [],
        "machine-type": f"projects/{num}/machineTypes/{scn.machine_type}",
        "maintenance-event": "NONE",
        "name": scn.name,
        "network-interfaces": nics,
        "preempted": "FALSE",
        "remaining-cpu-time": -1,
        "scheduling": {"automatic-restart": "TRUE", "on-host-maintenance": "MIGRATE",
                       "preemptible": "FALSE"},
        "service-accounts": {
            "default": {"aliases": ["default"],
                        "email": f"{num}-compute@developer.gserviceaccount.com",
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]},
        },
        "tags": list(scn.tags),
        "virtual-clock": {"drift-token": scn.drift_token},
        "zone": f"projects/{num}/zones/{scn.zone}",
    }
    project: dict[str, Node] = {
        "attributes": build_attributes(scn.project_attributes, ssh_key_lines(scn, "project"), {}),
        "numeric-project-id": num,
        "project-id": scn.project_id,
    }
    root: dict[str, Node] = {"instance": instance, "project": project}
    return deep_merge(root, scn.overrides.get("gce") or {})


class GcePlatform(Platform):
    name = "gce"
    prefixes = (PREFIX,)
    fault_headers = BASE_HEADERS
    base_path = "/computeMetadata/v1/"

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        super().__init__(scenario, clock)
        # Guest attributes live in their own tree: the instance etag must not
        # move when the guest writes them.
        self.guest = Tree({})
        self._polls = LongPolls(self.tree)
        self._guest_polls = LongPolls(self.guest)
        self._cache: dict[tuple[Any, ...], Response] = {}
        self._cache_version = (-1, -1)

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return render_tree(scenario)

    def claims_root(self, req: Request) -> int:
        return 1

    def state(self) -> dict[str, Any]:
        return {"guest_attributes": self.guest_attributes()}

    def guest_attributes(self) -> dict[str, str]:
        return {f"{ns}/{k}": str(v) for ns, kv in self.guest.root.items() for k, v in kv.items()}

    def held_polls(self) -> int:
        return len(self._polls) + len(self._guest_polls)

    # -- HTTP -------------------------------------------------------------------
    def handle(self, req: Request) -> HandlerResult:
        if req.path == "/" or req.path == "":
            # The detection probe: answered without asking for the header.
            return Response.text(200, "computeMetadata/\n", BASE_HEADERS, "application/text")
        if "x-forwarded-for" in req.headers:
            return self._forbidden("Request had X-Forwarded-For header; refusing.")
        if req.headers.get("metadata-flavor") != "Google":
            return self._forbidden("Missing Metadata-Flavor:Google header.")
        segs = split(req.path)[1:]  # drop "computeMetadata"
        slash = req.path.endswith("/")
        if not segs:
            return self._dir_or_redirect(req, slash, "v1/\n")
        if segs[0] != "v1":
            return self._error(404)
        segs = segs[1:]
        if segs[:2] == ["instance", "guest-attributes"]:
            return self._guest(req, tuple(segs[2:]), slash)
        if req.method not in ("GET", "HEAD"):
            return self._error(405)
        return self._get(req, self.tree, self._polls, tuple(segs), slash)

    def _dir_or_redirect(self, req: Request, slash: bool, body: str) -> Response:
        if not slash:
            return self._redirect(req)
        return Response.text(200, body, BASE_HEADERS, "application/text")

    @staticmethod
    def _redirect(req: Request) -> Response:
        location = req.path + "/" + (req.target[len(req.path):] if "?" in req.target else "")
        return Response.text(301, f"Moved to {location}\n", [*BASE_HEADERS, ("Location", location)],
                             "text/html; charset=UTF-8")

    @staticmethod
    def _forbidden(why: str) -> Response:
        return Response.text(403, f"Your client does not have permission to get URL. {why}\n",
                             BASE_HEADERS, "text/html; charset=UTF-8")

    @staticmethod
    def _error(status: int) -> Response:
        return Response.text(status, f"Error {status}\n", BASE_HEADERS, "text/html; charset=UTF-8")

    def _get(
        self, req: Request, tree: Tree, polls: LongPolls, segs: tuple[str, ...], slash: bool,
    ) -> HandlerResult:
        q = req.query
        recursive = q.get("recursive", "").lower() == "true"
        alt = q.get("alt", "")
        if alt not in ("", "json", "text"):
            return self._error(400)
        try:
            node = tree.resolve(segs)
        except PathError:
            return self._error(404)
        if is_dir(node) and not slash:
            return self._redirect(req)
        if not is_dir(node) and slash:
            return self._error(404)

        def render() -> Response:
            return self._render(tree, segs, recursive, alt)

        if q.get("wait_for_change", "").lower() == "true":
            last = q.get("last_etag")
            current = tree.etag(segs)
            if last == "NONE" or (last is not None and last != current):
                return render()
            timeout: float | None = None
            if "timeout_sec" in q:
                try:
                    timeout = max(0.0, float(q["timeout_sec"]))
                except ValueError:
                    return self._error(400)
            return polls.wait(segs, current, timeout, render)
        return render()

    def _render(self, tree: Tree, segs: tuple[str, ...], recursive: bool, alt: str) -> Response:
        version = (self.tree.version, self.guest.version)
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        key = (id(tree), segs, recursive, alt)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            node = tree.resolve(segs)
        except PathError:
            return self._error(404)
        etag = tree.etag(segs)
        if is_dir(node):
            as_json = alt == "json" or (recursive and alt != "text")
            if recursive and as_json:
                value = to_json(node, segs[-1] if segs else "")
                if tree is self.tree and segs in ((), ("instance",)):
                    inst = value["instance"] if not segs else value
                    inst["guestAttributes"] = {}
                body = json.dumps(value, separators=(",", ":"))
            elif recursive:
                lines: list[str] = []
                text_lines(node, "", lines)
                body = "\n".join(lines) + ("\n" if lines else "")
            elif as_json:
                body = json.dumps(listing(node))
            else:
                names = listing(node)
                body = "\n".join(names) + ("\n" if names else "")
        elif alt == "json":
            as_json = True
            body = json.dumps(node)
        else:
            as_json = False
            body = leaf_text(node)
        ctype = "application/json" if as_json else "application/text"
        resp = Response(200, body.encode(),
                        [*BASE_HEADERS, ("Content-Type", ctype), ("ETag", etag)])
        self._cache[key] = resp
        return resp

    # -- guest attributes -------------------------------------------------------
    def _guest(self, req: Request, segs: tuple[str, ...], slash: bool) -> HandlerResult:
        if req.method in ("GET", "HEAD"):
            return self._get(req, self.guest, self._guest_polls, segs, slash or not segs)
        if req.method not in ("PUT", "DELETE"):
            return self._error(405)
        if len(segs) != 2 or not all(GUEST_ATTR_NAME.match(s) for s in segs):
            return self._error(400)
        ns, key = segs
        if req.method == "PUT":
            try:
                value = req.body.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(400)
            self.guest.set(f"{ns}/{key}", value)
        else:
            try:
                self.guest.delete(f"{ns}/{key}")
            except PathError:
                return self._error(404)
            if not self.guest.root.get(ns):
                self.guest.root.pop(ns, None)
        return Response(200, b"", [*BASE_HEADERS, ("Content-Type", "application/text")])

    # -- state API ----------------------------------------------------------------
    def _split_guest(self, path: str) -> str | None:
        segs = split(path)
        if segs[:2] == ["instance", "guest-attributes"]:
            return "/".join(segs[2:])
        return None

    def get(self, path: str) -> Node:
        g = self._split_guest(path)
        return self.guest.get(g) if g is not None else self.tree.get(path)

    def set(self, path: str, value: Node) -> None:
        g = self._split_guest(path)
        if g is not None:
            self.guest.set(g, value)
        else:
            self.tree.set(path, value)

    def delete(self, path: str) -> None:
        g = self._split_guest(path)
        if g is not None:
            self.guest.delete(g)
        else:
            self.tree.delete(path)
