"""Azure: Instance Metadata Service (`/metadata/instance`) and the WireServer
(`/?comp=versions`, `/machine/?comp=goalstate`, `POST /machine?comp=health`).

In the cloud they are two addresses (169.254.169.254 and 168.63.129.16); here
they share one port because their paths differ. Tree:

    instance/compute/...      IMDS compute (camelCase, as served)
    instance/network/...      IMDS network
    wireserver/incarnation    bump it to announce a new goal state
    wireserver/container-id

Health reports the guest POSTs are recorded in `state()["health_reports"]`
(newest last), each with state Ready/NotReady, sub-status and description.
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape

from ..httpcore import HandlerResult, Request, Response
from ..scenario import Scenario, deep_merge
from ..simclock import SimClock
from ..tree import ANY4, Node, PathError, is_dir, split
from .base import Platform

API_VERSIONS = ("2017-03-01", "2017-04-02", "2017-08-01", "2017-12-01", "2018-02-01",
                "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30",
                "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01",
                "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01",
                "2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01",
                "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13", "2022-02-01",
                "2022-03-01", "2022-07-01", "2022-08-01", "2022-09-01", "2023-07-01")
WIRE_VERSIONS = ("2015-04-05", "2012-11-30", "2012-09-15", "2012-05-15", "2011-12-31",
                 "2011-10-15", "2011-08-31", "2011-04-07", "2010-12-15", "2010-28-10")
IMDS_HEADERS: list[tuple[str, str]] = [("Content-Type", "application/json; charset=utf-8"),
                                       ("Server", "Microsoft-IIS/10.0")]
XML = [("Content-Type", "text/xml; charset=utf-8"), ("x-ms-version", "2012-11-30")]


def mac_azure(mac: str) -> str:
    return mac.replace(":", "").replace("-", "").upper()


def render_tree(scn: Scenario) -> dict[str, Node]:
    admin = scn.admin_user
    keys = [{"keyData": k.authorized_line(), "path": f"/home/{user}/.ssh/authorized_keys"}
            for user, k in scn.all_keys() if admin is not None and user == admin.name]
    compute: dict[str, Node] = {
        "azEnvironment": "AzurePublicCloud",
        "location": scn.region_name,
        "name": scn.name,
        "offer": "debian-12",
        "osProfile": {"adminUsername": admin.name if admin else "azureuser",
                      "computerName": scn.short_hostname,
                      # As the OVF says: password logins stay on for an admin given a password.
                      "disablePasswordAuthentication":
                          "false" if admin is not None and admin.password else "true"},
        "osType": "Linux",
        "provider": "Microsoft.Compute",
        "publicKeys": keys,
        "publisher": "Debian",
        "resourceGroupName": scn.project_id,
        "resourceId": f"/subscriptions/{scn.uuid}/resourceGroups/{scn.project_id}"
                      f"/providers/Microsoft.Compute/virtualMachines/{scn.name}",
        "sku": "12-gen2",
        "subscriptionId": scn.uuid,
        "tags": ";".join(scn.tags),
        "userData": base64.b64encode((scn.user_data or "").encode()).decode(),
        "customData": "",
        "version": "0.20260101.0",
        "vmId": scn.uuid,
        "vmSize": scn.machine_type if scn.machine_type.startswith("Standard_") else "Standard_B1s",
        "zone": scn.zone.rsplit("-", 1)[-1] if "-" in scn.zone else "",
    }
    interfaces: list[Node] = []
    for nic in scn.interfaces:
        interfaces.append({
            "ipv4": {"ipAddress": [{"privateIpAddress": nic.ip or "",
                                    "publicIpAddress": nic.public_ip or ""}],
                     "subnet": [{"address": _network(nic.ip or ANY4, nic.prefix),
                                 "prefix": str(nic.prefix)}]},
            "ipv6": {"ipAddress": [{"privateIpAddress": a} for a in nic.ipv6]},
            "macAddress": mac_azure(nic.mac),
        })
    tree: dict[str, Node] = {
        "instance": {"compute": compute, "network": {"interface": interfaces}},
        "wireserver": {"incarnation": 1, "container-id": scn.uuid},
    }
    return deep_merge(tree, scn.overrides.get("azure") or {})


def _network(ip: str, prefix: int) -> str:
    parts = [int(p) for p in ip.split(".")]
    value = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    value &= (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


class AzurePlatform(Platform):
    name = "azure"
    prefixes = ("/metadata/instance", "/metadata/versions", "/machine", "/HealthService")
    base_path = "/metadata/instance"
    fault_headers = IMDS_HEADERS

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        super().__init__(scenario, clock)
        self.health_reports: list[dict[str, Any]] = []

    def render(self, scenario: Scenario) -> dict[str, Node]:
        return render_tree(scenario)

    def claims_root(self, req: Request) -> int:
        return 2 if "comp" in req.query else 0

    def state(self) -> dict[str, Any]:
        return {"health_reports": list(self.health_reports),
                "last_state": self.health_reports[-1]["state"] if self.health_reports else None}

    def handle(self, req: Request) -> HandlerResult:
        if req.path.startswith("/metadata"):
            return self._imds(req)
        return self._wire(req)

    # -- IMDS -------------------------------------------------------------------------
    @staticmethod
    def _imds_error(status: int, message: str) -> Response:
        return Response(status, json.dumps({"error": message}).encode(), IMDS_HEADERS)

    def _imds(self, req: Request) -> Response:
        if req.headers.get("metadata", "").lower() != "true":
            return self._imds_error(400, "Bad request. Required metadata header not specified")
        if "x-forwarded-for" in req.headers:
            return self._imds_error(400, "Bad request. Requests with X-Forwarded-For are refused")
        segs = split(req.path)
        if segs == ["metadata", "versions"]:
            return Response(200, json.dumps({"apiVersions": list(API_VERSIONS)}).encode(),
                            IMDS_HEADERS)
        version = req.query.get("api-version")
        if version is None:
            return self._imds_error(400, "Bad request. api-version was not specified in the "
                                         "request. For more information refer to aka.ms/azureimds")
        if version not in API_VERSIONS:
            return self._imds_error(400, "Bad request. api-version is invalid or was not "
                                         "specified in the request.")
        if req.method != "GET":
            return self._imds_error(405, "Method not allowed")
        try:
            node = self.tree.resolve(segs[1:])
        except PathError:
            return self._imds_error(404, "Not found")
        if req.query.get("format") == "text":
            if is_dir(node):
                return self._imds_error(400, "Bad request. Text format is only supported for "
                                             "leaf nodes")
            return Response(200, str(node).encode(), [("Content-Type", "text/plain")])
        return Response(200, json.dumps(node).encode(), IMDS_HEADERS)

    # -- WireServer ----------------------------------------------------------------------
    def _wire(self, req: Request) -> Response:
        comp = req.query.get("comp")
        if comp == "versions" and req.path in ("", "/"):
            return self._xml(self._versions())
        if req.headers.get("x-ms-version") is None:
            return self._xml("<Error><Code>MissingHeader</Code><Message>x-ms-version is "
                             "required</Message></Error>", 400)
        if comp == "goalstate" and req.method == "GET":
            return self._xml(self._goal_state(req))
        if comp == "health" and req.method == "POST":
            return self._health(req)
        if comp == "config" and req.method == "GET":
            return self._xml(self._config(req.query.get("type", "")))
        return self._xml("<Error><Code>ResourceNotFound</Code></Error>", 404)

    @staticmethod
    def _xml(body: str, status: int = 200) -> Response:
        return Response(status, ('<?xml version="1.0" encoding="utf-8"?>\n' + body).encode(), XML)

    @staticmethod
    def _versions() -> str:
        supported = "".join(f"<Version>{v}</Version>" for v in WIRE_VERSIONS)
        return (f"<Versions><Preferred><Version>{WIRE_VERSIONS[0]}</Version></Preferred>"
                f"<Supported>{supported}</Supported></Versions>")

    def _ids(self) -> tuple[str, str, int]:
        wire = self.tree.root.get("wireserver", {})
        container = str(wire.get("container-id", self.scenario.uuid))
        return container, f"{self.scenario.uuid}.{self.scenario.name}", int(
            wire.get("incarnation", 1))

    def _goal_state(self, req: Request) -> str:
        container, instance, incarnation = self._ids()
        host = req.headers.get("host", "168.63.129.16")
        base = f"http://{escape(host)}/machine/{container}/{escape(instance)}?comp=config"
        cfg = "".join(
            f"<{tag}>{base}&amp;type={kind}&amp;incarnation={incarnation}</{tag}>"
            for tag, kind in (("HostingEnvironmentConfig", "hostingEnvironmentConfig"),
                              ("SharedConfig", "sharedConfig"),
                              ("ExtensionsConfig", "extensionsConfig"),
                              ("FullConfig", "fullConfig")))
        return (
            "<GoalState><Version>2012-11-30</Version>"
            f"<Incarnation>{incarnation}</Incarnation>"
            "<Machine><ExpectedState>Started</ExpectedState>"
            "<StopRolesDeadlineHint>300000</StopRolesDeadlineHint>"
            "<LBProbePorts><Port>16001</Port></LBProbePorts>"
            "<ExpectHealthReport>FALSE</ExpectHealthReport></Machine>"
            f"<Container><ContainerId>{container}</ContainerId><RoleInstanceList>"
            f"<RoleInstance><InstanceId>{escape(instance)}</InstanceId><State>Started</State>"
            f"<Configuration>{cfg}<ConfigName>{escape(instance)}.1.xml</ConfigName>"
            "</Configuration></RoleInstance></RoleInstanceList></Container></GoalState>"
        )

    def _config(self, kind: str) -> str:
        name = escape(self.scenario.name)
        if kind == "hostingEnvironmentConfig":
            return (f'<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">'
                    f'<Deployment name="{name}" guid="{{{self.scenario.uuid}}}" '
                    'incarnation="1" isNonCancellableTopologyChangeEnabled="false"/>'
                    f'<Incarnation number="1" instance="{name}" guid="{{{self.scenario.uuid}}}"/>'
                    f'<Role guid="{{{self.scenario.uuid}}}" name="{name}" hostingEnvironmentVersion="1"/>'
                    "</HostingEnvironmentConfig>")
        if kind == "sharedConfig":
            return (f'<SharedConfig version="1.0.0.0" goalStateIncarnation="1">'
                    f'<Deployment name="{name}" guid="{{{self.scenario.uuid}}}" incarnation="1"/>'
                    f'<Instances><Instance id="{name}" address="'
                    f'{self._primary_ip()}"/></Instances></SharedConfig>')
        if kind == "extensionsConfig":
            return ('<Extensions version="1.0.0.0" goalStateIncarnation="1">'
                    "<GuestAgentExtension/><Plugins/><PluginSettings/>"
                    "<StatusUploadBlob/></Extensions>")
        return f"<{escape(kind) or 'Config'}/>"

    def _primary_ip(self) -> str:
        return self.scenario.interfaces[0].ip or "" if self.scenario.interfaces else ""

    def _health(self, req: Request) -> Response:
        try:
            root = ET.fromstring(req.body)  # noqa: S314 - bounded body from our own guest
        except ET.ParseError as err:
            return self._xml(f"<Error><Code>BadXml</Code><Message>{escape(str(err))}"
                             "</Message></Error>", 400)

        def find(path: str) -> str | None:
            el = root.find(path)
            return None if el is None or el.text is None else el.text.strip()

        container, instance, incarnation = self._ids()
        report: dict[str, Any] = {
            "time": time.time(),
            "incarnation": find("GoalStateIncarnation"),
            "container_id": find("Container/ContainerId"),
            "instance_id": find("Container/RoleInstanceList/Role/InstanceId"),
            "state": find("Container/RoleInstanceList/Role/Health/State"),
            "substatus": find("Container/RoleInstanceList/Role/Health/Details/SubStatus"),
            "description": find("Container/RoleInstanceList/Role/Health/Details/Description"),
        }
        report["matches_goal_state"] = (
            report["container_id"] == container and report["instance_id"] == instance
            and report["incarnation"] == str(incarnation))
        if report["state"] not in ("Ready", "NotReady"):
            return self._xml("<Error><Code>BadHealth</Code><Message>State must be Ready or "
                             "NotReady</Message></Error>", 400)
        self.health_reports.append(report)
        return self._xml("")
