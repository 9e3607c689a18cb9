"""AWS EC2 instance metadata service (IMDSv1 and v2).

Settings live beside the tree under `imds/` (set them at run time with
`sim.set("imds/http-tokens", "required", platform="ec2")` or in the scenario
as `overrides: {ec2: {imds: {...}}}`):

    http-tokens       optional | required   (required: GETs without a token get 401)
    http-endpoint     enabled | disabled    (disabled: 403 everywhere)
    hop-limit-exceeded  false | true        (the token PUT is accepted but its reply
                                             never arrives, as past the hop limit)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..httpcore import Action, HandlerResult, Request, Response
from ..scenario import Scenario, deep_merge
from ..simclock import SimClock
from ..tree import ANY4, Node, PathError, is_dir, listing, split
from .base import Platform

VERSIONS = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
    "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12", "2014-02-25",
    "2014-11-05", "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02", "2018-03-28",
    "2018-08-17", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23",
    "2021-07-15", "2022-09-24", "latest",
)
HEADERS: list[tuple[str, str]] = [("Server", "EC2ws"), ("Content-Type", "text/plain")]
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"  # noqa: S105 - a header name
DEFAULT_SETTINGS: dict[str, Node] = {
    "http-tokens": "optional",
    "http-endpoint": "enabled",
    "hop-limit-exceeded": False,
}


def instance_id(scn: Scenario) -> str:
    if scn.instance_id.startswith("i-"):
        return scn.instance_id
    if scn.instance_id.isdigit():
        return "i-" + f"{int(scn.instance_id):017x}"[-17:]
    return "i-" + hashlib.sha256(scn.instance_id.encode()).hexdigest()[:17]


# An EC2 availability zone is its region plus one letter (eu-west-1a -> eu-west-1);
# GCE's zones add "-a" instead, which the scenario's region_name strips.
_EC2_ZONE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+[a-z]")


def region_of(scn: Scenario) -> str:
    if scn.region is None and _EC2_ZONE.fullmatch(scn.zone):
        return scn.zone[:-1]
    return scn.region_name


def ip_hostname(ip: str | None, region: str) -> str:
    suffix = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{(ip or ANY4).replace('.', '-')}.{suffix}"


def render_tree(scn: Scenario) -> dict[str, Node]:
    region = region_of(scn)
    iid = instance_id(scn)
    primary = scn.interfaces[0] if scn.interfaces else None
    itype = scn.machine_type if "." in scn.machine_type else "t3.micro"
    macs: dict[str, Node] = {}
    for i, nic in enumerate(scn.interfaces):
        entry: dict[str, Node] = {
            "device-number": str(i),
            "interface-id": f"eni-{i:017x}",
            "local-hostname": ip_hostname(nic.ip, region),
            "local-ipv4s": nic.ip or "",
            "mac": nic.mac,
            "owner-id": str(scn.project_number),
            "security-group-ids": "sg-0123456789abcdef0",
            "security-groups": "default",
            "subnet-id": f"subnet-{nic.subnet}",
            # The subnet's network address, as EC2 gives it (no host bits).
            "subnet-ipv4-cidr-block": str(
                ipaddress.ip_network(f"{nic.ip or ANY4}/{nic.prefix}", strict=False)),
            "vpc-id": f"vpc-{nic.network}",
        }
        if nic.public_ip:
            entry["public-ipv4s"] = nic.public_ip
            entry["public-hostname"] = f"ec2-{nic.public_ip.replace('.', '-')}.compute.amazonaws.com"
        if nic.ipv6:
            entry["ipv6s"] = "\n".join(nic.ipv6)
        macs[nic.mac] = entry
    keys = [{"name": name, "openssh-key": key.authorized_line()}
            for name, key in scn.named_keys()]
    meta: dict[str, Node] = {
        "ami-id": "ami-0123456789abcdef0",
        "ami-launch-index": "0",
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": ip_hostname(primary.ip if primary else None, region),
        "instance-action": "none",
        "instance-id": iid,
        "instance-life-cycle": "on-demand",
        "instance-type": itype,
        "local-hostname": ip_hostname(primary.ip if primary else None, region),
        "local-ipv4": (primary.ip or "") if primary else "",
        "mac": primary.mac if primary else "",
        "network": {"interfaces": {"macs": macs}},
        "placement": {"availability-zone": scn.zone, "region": region,
                      "availability-zone-id": f"{region[:3]}-az1"},
        "reservation-id": "r-0123456789abcdef0",
        "security-groups": "default",
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    if keys:
        meta["public-keys"] = keys
    if primary is not None and primary.public_ip:
        meta["public-ipv4"] = primary.public_ip
        meta["public-hostname"] = f"ec2-{primary.public_ip.replace('.', '-')}.compute.amazonaws.com"
    document = {
        "accountId": str(scn.project_number), "architecture": "x86_64",
        "availabilityZone": scn.zone, "billingProducts": None, "devpayProductCodes": None,
        "marketplaceProductCodes": None, "imageId": meta["ami-id"], "instanceId": iid,
        "instanceType": itype, "kernelId": None, "pendingTime": "2026-01-01T00:00:00Z",
        "privateIp": meta["local-ipv4"], "ramdiskId": None, "region": region,
        "version": "2017-09-30",
    }
    tree: dict[str, Node] = {
        "meta-data": meta,
        "dynamic": {"instance-identity": {
            "document": json.dumps(document, indent=2),
            "signature": "c2ltdWxhdGVkLXNpZ25hdHVyZQ==",
            "pkcs7": "c2ltdWxhdGVkLXBrY3M3",
        }},
    }
    if scn.user_data is not None:
        tree["user-data"] = scn.user_data
    over = dict(scn.overrides.get("ec2") or {})
    tree["imds"] = deep_merge(DEFAULT_SETTINGS, over.pop("imds", None) or {})
    return deep_merge(tree, over)


@dataclass(slots=True)
class _Token:
    expires: float


class Ec2Platform(Platform):
    name = "ec2"
    prefixes = tuple(f"/{v}" for v in VERSIONS)
    base_path = "/latest/"
    fault_headers = HEADERS

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        super().__init__(scenario, clock)
        self._tokens: dict[str, _Token] = {}

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return render_tree(scenario)

    def claims_root(self, req: Request) -> int:
        return 1

    def relpath(self, path: str) -> str:
        segs = split(path)
        return "/".join(segs[1:]) if segs and segs[0] in VERSIONS else "/".join(segs)

    def state(self) -> dict[str, Any]:
        now = self.clock.now()
        return {"tokens": sum(1 for t in self._tokens.values() if t.expires > now),
                "imds": self.tree.get("imds")}

    def _setting(self, key: str) -> Node:
        return self.tree.root.get("imds", {}).get(key, DEFAULT_SETTINGS[key])

    @staticmethod
    def _text(status: int, body: str, extra: list[tuple[str, str]] | None = None) -> Response:
        return Response(status, body.encode(), [*HEADERS, *(extra or [])])

    def handle(self, req: Request) -> HandlerResult:
        if self._setting("http-endpoint") == "disabled":
            return self._text(403, "Forbidden\n")
        segs = split(req.path)
        if not segs:
            return self._text(200, "\n".join(VERSIONS))
        rest = segs[1:]
        if rest == ["api", "token"]:
            return self._token(req)
        auth = self._check_token(req)
        if auth is not None:
            return auth
        resp = self._serve(req, rest)
        ttl = self._remaining(req)
        if ttl is not None and resp.status == 200:
            # IMDSv2 answers carry the token's remaining lifetime.
            resp.headers.append(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", str(ttl)))
        return resp

    def _serve(self, req: Request, rest: list[str]) -> Response:
        if req.method not in ("GET", "HEAD"):
            return self._text(405, "Method Not Allowed\n", [("Allow", "OPTIONS, GET, HEAD")])
        if not rest:
            return self._text(200, "dynamic\nmeta-data\nuser-data" if "user-data" in self.tree.root
                              else "dynamic\nmeta-data")
        if rest[0] == "imds":
            return self._not_found()
        try:
            node = self.tree.resolve(rest[:1])
            if rest[0] == "meta-data" and len(rest) > 1 and rest[1] == "public-keys":
                return self._public_keys(node, rest[2:])
            node = self.tree.resolve(rest)
        except PathError:
            return self._not_found()
        if is_dir(node):
            return self._text(200, "\n".join(listing(node)))
        return self._text(200, node if isinstance(node, str) else json.dumps(node))

    def _public_keys(self, meta: Node, rest: list[str]) -> Response:
        keys = meta.get("public-keys") if isinstance(meta, dict) else None
        if not keys:
            return self._not_found()
        if not rest:
            return self._text(200, "\n".join(f"{i}={k['name']}" for i, k in enumerate(keys)))
        idx = rest[0]
        if not idx.isdigit() or int(idx) >= len(keys):
            return self._not_found()
        entry = keys[int(idx)]
        if len(rest) == 1:
            return self._text(200, "openssh-key")
        if rest[1:] == ["openssh-key"]:
            return self._text(200, str(entry["openssh-key"]) + "\n")
        return self._not_found()

    def _not_found(self) -> Response:
        body = ('<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html>\n'
                "<html><head><title>404 - Not Found</title></head>"
                "<body><h1>404 - Not Found</h1></body></html>\n")
        return Response(404, body.encode(), [("Server", "EC2ws"), ("Content-Type", "text/html")])

    # -- IMDSv2 ---------------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        if req.method != "PUT":
            return self._text(405, "Method Not Allowed\n", [("Allow", "OPTIONS, PUT")])
        if "x-forwarded-for" in req.headers:
            return self._text(403, "Forbidden\n")
        raw = req.headers.get(TTL_HEADER)
        try:
            ttl = int(raw) if raw is not None else -1
        except ValueError:
            ttl = -1
        if not 1 <= ttl <= 21600:
            return self._text(400, "Bad Request\n")
        token = secrets.token_urlsafe(40)
        now = self.clock.now()
        self._tokens = {k: v for k, v in self._tokens.items() if v.expires > now}
        self._tokens[token] = _Token(now + ttl)
        resp = self._text(200, token, [("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", str(ttl))])
        if self._setting("hop-limit-exceeded") in (True, "true"):
            # Past the hop limit the reply packets are dropped: no HTTP error,
            # the client just waits. The token is minted all the same.
            return Response(0, action=Action.BLACKHOLE)
        return resp

    def _check_token(self, req: Request) -> Response | None:
        token = req.headers.get(TOKEN_HEADER)
        if token is None:
            if self._setting("http-tokens") == "required":
                return self._text(401, "Unauthorized\n")
            return None
        entry = self._tokens.get(token)
        if entry is None or entry.expires <= self.clock.now():
            return self._text(401, "Unauthorized\n")
        return None

    def _remaining(self, req: Request) -> int | None:
        entry = self._tokens.get(req.headers.get(TOKEN_HEADER, ""))
        return None if entry is None else max(0, int(entry.expires - self.clock.now()))
