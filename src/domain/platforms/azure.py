"""Azure: the provisioning DVD's ovf-env.xml and IMDS into the neutral model; the
WireServer's goal state and version list; the health report the agent posts back.

Wire shapes (what Microsoft documents and the reference agents read):

ovf-env.xml (DVD, UDF or ISO9660), namespaces OVF `http://schemas.dmtf.org/ovf/environment/1`
and Azure `http://schemas.microsoft.com/windowsazure`:

    <Environment>
      <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
        <LinuxProvisioningConfigurationSet>
          <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
          <HostName>vm</HostName> <UserName>azureuser</UserName>
          <UserPassword>...</UserPassword>                       (optional)
          <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>
          <SSH><PublicKeys><PublicKey><Fingerprint/><Path>/home/azureuser/.ssh/authorized_keys</Path>
                <Value>ssh-ed25519 AAAA...</Value></PublicKey></PublicKeys><KeyPairs/></SSH>
          <CustomData>BASE64</CustomData>                        (optional)
        </LinuxProvisioningConfigurationSet>
      </wa:ProvisioningSection>
      <wa:PlatformSettingsSection><PlatformSettings>
          <ProvisionGuestAgent>true</ProvisionGuestAgent> <PreprovisionedVm>false</PreprovisionedVm>
      </PlatformSettings></wa:PlatformSettingsSection>
    </Environment>

IMDS `GET /metadata/instance?api-version=2021-08-01` (header `Metadata: true`), JSON:

    {"compute": {"vmId": "...", "name": "vm", "osProfile": {"adminUsername": "azureuser",
       "computerName": "vm", "disablePasswordAuthentication": "true"},
       "publicKeys": [{"keyData": "ssh-rsa ...", "path": "/home/azureuser/.ssh/authorized_keys"}],
       "location": "westeurope", "vmSize": "Standard_B2s", ...},
     "network": {"interface": [{"macAddress": "000D3A123456",
       "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}],
                "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
       "ipv6": {"ipAddress": []}}]}}

What becomes of them:

- the instance id is IMDS `compute.vmId` (required: it keys "provision once per VM");
- the admin user is the OVF UserName, else IMDS `osProfile.adminUsername`; its keys are the OVF
  keys that carry a Value and IMDS `publicKeys[].keyData`, each for that named user. A key
  whose Path is not the user's `/home/USER/.ssh/authorized_keys` is refused with a reason
  (the agent installs keys in one place only); a fingerprint-only key (its body is in the
  WireServer's certificate bundle) is refused too: IMDS normally lists the same key. A value
  of several lines is that many key lines, each checked (and refused) on its own; an entry
  that cannot be read (not an object, a keyData that is not a string) or more than MAX_KEYS
  keys hold accounts: the keys past or behind them may be the admin's;
- the hostname is OVF HostName, else `osProfile.computerName`, else `compute.name`;
- CustomData (base64 in the OVF) is decoded into the neutral `user_data`; the text as given is
  kept in the extras (DecodeCustomData decides which of the two is saved);
- the password, DisableSshPasswordAuthentication and the platform settings go to AzureExtras
  (read by the azure_provisioning subsystem only; the password never appears in a repr);
- NICs from `network.interface[]` (DHCP on Azure: informational, never static).

A DVD document that is not an OVF environment does not stop the snapshot (IMDS still
describes the VM): `AzureExtras.ovf_error` carries the reason, and provisioning reports it
to the fabric as ProvisioningFailed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import attrs

from guestagent.domain import safexml
from guestagent.domain.jsondoc import JsonRefused, loads
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, SshKey
from guestagent.domain.ssh_keys import dedupe, parse_key_text
from guestagent.domain.validation import Invalid, check_username
from guestagent.domain.values import canonical_ip, canonical_mac, parse_bool

PLATFORM = "azure"
# Every Azure VM carries this chassis asset tag: the decimal ASCII codes of "MSFT AZURE VM".
ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
OVF_FILE = "ovf-env.xml"
IMDS_API_VERSION = "2021-08-01"
WIRE_VERSION = "2012-11-30"
DEFAULT_WIRESERVER = "168.63.129.16"
AGENT_NAME = "guestagent"

OVF_MAX = 1024 * 1024
GOAL_STATE_MAX = 256 * 1024
# Azure's limit on custom data is 64 KiB; base64 of that and some slack.
CUSTOM_DATA_MAX = 128 * 1024
DESCRIPTION_MAX = 512  # the fabric trims a health description to this
MAX_KEYS = 100
MAX_NICS = 64

READY = "Ready"
NOT_READY = "NotReady"
PROVISIONING = "Provisioning"
PROVISIONING_FAILED = "ProvisioningFailed"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INCARNATION = re.compile(r"[0-9]{1,18}")
_ID = re.compile(r"[\x21-\x7e]{1,255}")


class AzureMetadataError(ValueError):
    """What was read cannot describe an Azure VM (IMDS without a vmId, not JSON...)."""


class OvfError(ValueError):
    """ovf-env.xml is not a Linux OVF provisioning environment; str() is safe to log."""


class WireServerError(ValueError):
    """A WireServer document (goal state, versions) that cannot be used."""


# ---------------------------------------------------------------- detection


def dmi_says_azure(dmi: Mapping[str, str]) -> str | None:
    """Azure's detection hint: the chassis asset tag every Azure VM carries."""
    if dmi.get("chassis_asset_tag", "").strip() == ASSET_TAG:
        return f"DMI chassis_asset_tag is {ASSET_TAG!r} (Azure)"
    return None


# ---------------------------------------------------------------- ovf-env.xml


@attrs.frozen
class OvfKey:
    path: str
    value: str | None
    fingerprint: str | None


@attrs.frozen
class OvfEnv:
    """What the provisioning DVD says, as given (validated later, where it is used)."""

    hostname: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    disable_ssh_password_auth: bool = True
    keys: tuple[OvfKey, ...] = ()
    key_pairs: int = 0
    custom_data: str | None = attrs.field(default=None, repr=False)
    provision_guest_agent: bool | None = None
    preprovisioned_vm: bool = False


def _text(element: safexml.Element | None) -> str | None:
    return None if element is None else element.text.strip()


def _bool(text: str | None, where: str, default: bool, rejections: list[Rejection], concerns: str) -> bool:
    if text is None or text == "":
        return default
    value = parse_bool(text)
    if value is None or text.strip().lower() not in ("true", "false"):
        rejections.append(Rejection(where, f"not true or false; taken as {str(default).lower()}", concerns))
        return default
    return value


def parse_ovf_env(data: bytes) -> tuple[OvfEnv, tuple[Rejection, ...]]:
    """The provisioning values of an ovf-env.xml; OvfError when it is not one."""
    try:
        root = safexml.parse(data, max_bytes=OVF_MAX)
    except safexml.XmlRefused as exc:
        raise OvfError(f"{OVF_FILE}: {exc}") from exc
    if root.local != "Environment" or root.namespace not in (OVF_NS, ""):
        raise OvfError(f"{OVF_FILE}: the root element is not an OVF Environment")
    section = root.child("ProvisioningSection")
    config = None if section is None else section.child("LinuxProvisioningConfigurationSet")
    if config is None:
        raise OvfError(f"{OVF_FILE}: no ProvisioningSection/LinuxProvisioningConfigurationSet")
    kind = _text(config.child("ConfigurationSetType"))
    if kind not in (None, "", "LinuxProvisioningConfiguration"):
        raise OvfError(
            f"{OVF_FILE}: ConfigurationSetType {kind[:64]!r} is not LinuxProvisioningConfiguration"
        )
    rejections: list[Rejection] = []
    where = f"{OVF_FILE} LinuxProvisioningConfigurationSet"
    disable = _bool(
        _text(config.child("DisableSshPasswordAuthentication")),
        f"{where}/DisableSshPasswordAuthentication",
        True,
        rejections,
        "azure_provisioning",
    )
    keys: list[OvfKey] = []
    ssh = config.child("SSH")
    key_pairs = 0
    if ssh is not None:
        public = ssh.child("PublicKeys")
        for key in () if public is None else public.all("PublicKey"):
            keys.append(
                OvfKey(
                    path=_text(key.child("Path")) or "",
                    value=_text(key.child("Value")) or None,
                    fingerprint=_text(key.child("Fingerprint")) or None,
                )
            )
        pairs = ssh.child("KeyPairs")
        key_pairs = 0 if pairs is None else len(pairs.all("KeyPair"))
    # UserPassword is taken exactly as given: surrounding spaces may be part of it.
    password_el = config.child("UserPassword")
    password = None if password_el is None or password_el.text == "" else password_el.text
    custom = _text(config.child("CustomData"))
    if custom is None:
        custom = _text(config.child("UserData"))  # cloud-init's older spelling
    settings_section = root.child("PlatformSettingsSection")
    settings = None if settings_section is None else settings_section.child("PlatformSettings")
    provision_agent = None
    preprovisioned = False
    if settings is not None:
        text = _text(settings.child("ProvisionGuestAgent"))
        provision_agent = None if not text else parse_bool(text)
        preprovisioned = _bool(
            _text(settings.child("PreprovisionedVm")),
            f"{OVF_FILE} PlatformSettings/PreprovisionedVm",
            False,
            rejections,
            "azure_provisioning",
        )
    env = OvfEnv(
        hostname=_text(config.child("HostName")) or None,
        username=_text(config.child("UserName")) or None,
        password=password,
        disable_ssh_password_auth=disable,
        keys=tuple(keys[:MAX_KEYS]),
        key_pairs=key_pairs,
        custom_data=custom or None,
        provision_guest_agent=provision_agent,
        preprovisioned_vm=preprovisioned,
    )
    if len(keys) > MAX_KEYS:
        rejections.append(
            Rejection(
                f"{where}/SSH/PublicKeys", f"more than {MAX_KEYS} keys; keys kept as they are", holds=True
            )
        )
    return env, tuple(rejections)


# ---------------------------------------------------------------- the neutral model


@attrs.frozen
class AzureExtras:
    """What only Azure has; read by the azure_provisioning subsystem."""

    vm_id: str = ""
    admin_user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    disable_password_auth: bool = True
    # CustomData exactly as the DVD gave it (base64 text); the decoded bytes are user_data.
    custom_data: str | None = attrs.field(default=None, repr=False)
    ovf_source: str | None = None  # where ovf-env.xml was read, None: no DVD
    ovf_error: str | None = None  # the DVD's document could not be used, and why
    provision_guest_agent: bool | None = None
    preprovisioned_vm: bool = False
    name: str = ""
    location: str = ""
    vm_size: str = ""
    subscription_id: str = ""
    resource_group: str = ""


NO_EXTRAS = AzureExtras()


def azure(metadata: InstanceMetadata) -> AzureExtras:
    """Azure's extras of a snapshot; empty ones on any other platform."""
    return metadata.extras if isinstance(metadata.extras, AzureExtras) else NO_EXTRAS


@attrs.frozen
class AzureFetched:
    """What the transport read: IMDS's body, and ovf-env.xml's bytes when a DVD holds one."""

    imds: bytes
    ovf: bytes | None = None
    ovf_source: str | None = None
    # The DVD was there but could not be read (a reason safe to log).
    ovf_unreadable: str | None = None


def _str(document: Mapping[str, object], key: str) -> str:
    value = document.get(key)
    return value.strip() if isinstance(value, str) else ""


def _key_path_ok(path: str, user: str) -> bool:
    return path in ("", f"/home/{user}/.ssh/authorized_keys", "~/.ssh/authorized_keys")


def _keys(
    user: str | None,
    ovf: OvfEnv | None,
    compute: Mapping[str, object],
    rejections: list[Rejection],
) -> list[SshKey]:
    given: list[tuple[str, str, str | None, str | None]] = []  # (where, path, text, fingerprint)
    if ovf is not None:
        for number, key in enumerate(ovf.keys, start=1):
            given.append((f"{OVF_FILE} PublicKey {number}", key.path, key.value, key.fingerprint))
        if ovf.key_pairs:
            rejections.append(
                Rejection(
                    f"{OVF_FILE} SSH/KeyPairs",
                    f"{ovf.key_pairs} key pairs refused: private keys from the fabric's certificates "
                    "are not installed",
                )
            )
    listed = compute.get("publicKeys")
    if listed is not None and not isinstance(listed, list):
        rejections.append(Rejection("IMDS compute.publicKeys", "is not a list", holds=True))
    elif isinstance(listed, list):
        if len(listed) > MAX_KEYS:
            # Not read as the first MAX_KEYS: the keys past them would be removed.
            rejections.append(
                Rejection(
                    "IMDS compute.publicKeys",
                    f"lists more than {MAX_KEYS} keys; keys kept as they are",
                    holds=True,
                )
            )
        for number, entry in enumerate(listed[:MAX_KEYS], start=1):
            where = f"IMDS compute.publicKeys[{number - 1}]"
            # An entry that cannot be read may be a key the admin has: keys are kept as they are.
            if not isinstance(entry, dict):
                rejections.append(Rejection(where, "is not an object; keys kept as they are", holds=True))
                continue
            data = entry.get("keyData")
            path = entry.get("path", "")
            if not isinstance(data, str) or not isinstance(path, str):
                rejections.append(
                    Rejection(where, "keyData or path is not a string; keys kept as they are", holds=True)
                )
                continue
            given.append((where, path.strip(), data, None))
    keys: list[SshKey] = []
    for where, path, text, fingerprint in given:
        if text is None:
            shown = f" {fingerprint[:40]}" if fingerprint else ""
            rejections.append(
                Rejection(
                    where,
                    f"fingerprint-only key{shown} refused: its body is in the fabric's certificate "
                    "bundle, which the agent does not fetch (IMDS publicKeys normally lists it)",
                )
            )
            continue
        if user is None:
            rejections.append(Rejection(where, "no admin user name (UserName / osProfile.adminUsername)"))
            continue
        if not _key_path_ok(path, user):
            rejections.append(
                Rejection(
                    where,
                    f"key path {path[:120]!r} refused: keys are installed only in "
                    f"/home/{user}/.ssh/authorized_keys",
                )
            )
            continue
        # Azure's own agent writes a value of several lines out as given.
        found, refused = parse_key_text(user, text, where)
        keys += found
        rejections += refused
    return keys


def _admin(ovf: OvfEnv | None, os_profile: Mapping[str, object], rejections: list[Rejection]) -> str | None:
    from_ovf = ovf.username if ovf is not None else None
    from_imds = _str(os_profile, "adminUsername") or None
    name = from_ovf or from_imds
    if from_ovf and from_imds and from_ovf != from_imds:
        rejections.append(
            Rejection(
                "IMDS osProfile.adminUsername",
                f"differs from the DVD's UserName; {from_ovf!r} (the DVD's) is used",
                "azure_provisioning",
            )
        )
    if name is None:
        return None
    try:
        return check_username(name, system_users=())
    except Invalid as exc:
        rejections.append(Rejection("admin user name", str(exc), "azure_provisioning"))
        return None


def _nic(entry: object, index: int, rejections: list[Rejection]) -> NetworkInterface | None:
    where = f"IMDS network.interface[{index}]"
    if not isinstance(entry, dict):
        rejections.append(Rejection(where, "is not an object", "nics"))
        return None
    try:
        mac = canonical_mac(_str(entry, "macAddress"))
    except ValueError:
        rejections.append(Rejection(f"{where}.macAddress", "not a MAC address", "nics"))
        return None
    ip = prefix = None
    ipv6: list[str] = []
    v4 = entry.get("ipv4")
    if isinstance(v4, dict):
        addresses = v4.get("ipAddress")
        if isinstance(addresses, list) and addresses and isinstance(addresses[0], dict):
            text = _str(addresses[0], "privateIpAddress")
            try:
                ip = canonical_ip(text) if text else None
            except ValueError:
                rejections.append(
                    Rejection(f"{where}.ipv4", "privateIpAddress is not an IP address", "hostname")
                )
        subnets = v4.get("subnet")
        if isinstance(subnets, list) and subnets and isinstance(subnets[0], dict):
            text = _str(subnets[0], "prefix")
            if text.isdigit() and 0 <= int(text) <= 32:
                prefix = int(text)
    v6 = entry.get("ipv6")
    if isinstance(v6, dict) and isinstance(v6.get("ipAddress"), list):
        for item in v6["ipAddress"]:
            if isinstance(item, dict):
                text = _str(item, "privateIpAddress")
                try:
                    if text and isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address):
                        ipv6.append(canonical_ip(text))
                except ValueError:
                    continue
    return NetworkInterface(mac=mac, ip=ip, prefix_length=prefix if ip else None, ipv6=tuple(ipv6))


def _interfaces(document: Mapping[str, object], rejections: list[Rejection]) -> tuple[NetworkInterface, ...]:
    network = document.get("network")
    if network is None:
        return ()
    listed = network.get("interface") if isinstance(network, dict) else None
    if not isinstance(listed, list):
        rejections.append(Rejection("IMDS network.interface", "is not a list", "nics", holds=True))
        return ()
    nics = [_nic(entry, i, rejections) for i, entry in enumerate(listed[:MAX_NICS])]
    return tuple(n for n in nics if n is not None)


def decode_custom_data(text: str) -> bytes:
    """CustomData's bytes; ValueError when it is not base64 (whitespace and line breaks allowed)."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("CustomData is not base64") from exc


def parse_imds(data: bytes) -> dict[str, object]:
    """IMDS's instance document (JSON, depth-bounded); AzureMetadataError when it is not one."""
    try:
        document = loads(data)
    except JsonRefused as exc:
        raise AzureMetadataError(f"IMDS answer refused: {exc}") from exc
    if not isinstance(document, dict):
        raise AzureMetadataError("IMDS answer is not a JSON object")
    compute = document.get("compute")
    if not isinstance(compute, dict):
        raise AzureMetadataError("IMDS answer has no compute object")
    vm_id = compute.get("vmId")
    if not isinstance(vm_id, str) or not _ID.fullmatch(vm_id.strip()):
        raise AzureMetadataError("IMDS compute.vmId is missing or not an id")
    return document


def parse_azure(fetched: object) -> InstanceMetadata:
    """AzureFetched into the neutral model; AzureMetadataError when IMDS is unusable."""
    if not isinstance(fetched, AzureFetched):
        raise AzureMetadataError("not an Azure fetch")
    document = parse_imds(fetched.imds)
    compute = document["compute"]
    assert isinstance(compute, dict)  # parse_imds checked it
    rejections: list[Rejection] = []
    ovf: OvfEnv | None = None
    ovf_error = fetched.ovf_unreadable
    if fetched.ovf is not None:
        try:
            ovf, found = parse_ovf_env(fetched.ovf)
            rejections += found
        except OvfError as exc:
            ovf_error = str(exc)
    os_profile = compute.get("osProfile")
    if not isinstance(os_profile, dict):
        os_profile = {}
    user = _admin(ovf, os_profile, rejections)
    keys = _keys(user, ovf, compute, rejections)
    hostname = (
        (ovf.hostname if ovf is not None else None)
        or _str(os_profile, "computerName")
        or _str(compute, "name")
    )
    if ovf is not None:
        disable = ovf.disable_ssh_password_auth
    else:
        disable = _bool(
            _str(os_profile, "disablePasswordAuthentication"),
            "IMDS osProfile.disablePasswordAuthentication",
            True,
            rejections,
            "azure_provisioning",
        )
    custom = ovf.custom_data if ovf is not None else None
    user_data = None
    if custom is not None:
        if len(custom) > CUSTOM_DATA_MAX:
            rejections.append(
                Rejection(
                    f"{OVF_FILE} CustomData", f"larger than {CUSTOM_DATA_MAX} bytes", "firstboot", holds=True
                )
            )
            custom = None
        else:
            try:
                user_data = decode_custom_data(custom)
            except ValueError as exc:
                rejections.append(Rejection(f"{OVF_FILE} CustomData", str(exc), "firstboot", holds=True))
    nics = _interfaces(document, rejections)
    extras = AzureExtras(
        vm_id=str(compute["vmId"]).strip(),
        admin_user=user,
        password=ovf.password if ovf is not None else None,
        disable_password_auth=disable,
        custom_data=custom,
        ovf_source=fetched.ovf_source if fetched.ovf is not None else None,
        ovf_error=ovf_error,
        provision_guest_agent=ovf.provision_guest_agent if ovf is not None else None,
        preprovisioned_vm=ovf.preprovisioned_vm if ovf is not None else False,
        name=_str(compute, "name"),
        location=_str(compute, "location"),
        vm_size=_str(compute, "vmSize"),
        subscription_id=_str(compute, "subscriptionId"),
        resource_group=_str(compute, "resourceGroupName"),
    )
    return InstanceMetadata(
        platform=PLATFORM,
        instance_id=extras.vm_id,
        hostname=_CONTROL.sub("", hostname)[:255],
        ssh_keys=dedupe(keys),
        rejections=tuple(rejections),
        network_interfaces=nics,
        user_data=user_data,
        extras=extras,
    )


# ---------------------------------------------------------------- the WireServer


@attrs.frozen
class GoalState:
    incarnation: str
    container_id: str
    instance_id: str


def _wire_root(data: bytes, what: str) -> safexml.Element:
    try:
        return safexml.parse(data, max_bytes=GOAL_STATE_MAX)
    except safexml.XmlRefused as exc:
        raise WireServerError(f"{what}: {exc}") from exc


def parse_goal_state(data: bytes) -> GoalState:
    """Incarnation, ContainerId and the (first) RoleInstance's InstanceId; WireServerError otherwise."""
    root = _wire_root(data, "goal state")
    if root.local != "GoalState":
        raise WireServerError("goal state: the root element is not GoalState")
    incarnation = (root.findtext("Incarnation") or "").strip()
    container = (root.findtext("Container/ContainerId") or "").strip()
    instance = (root.findtext("Container/RoleInstanceList/RoleInstance/InstanceId") or "").strip()
    if not _INCARNATION.fullmatch(incarnation):
        raise WireServerError("goal state: Incarnation is missing or not a number")
    for name, value in (("ContainerId", container), ("InstanceId", instance)):
        if not _ID.fullmatch(value):
            raise WireServerError(f"goal state: {name} is missing or not an id")
    return GoalState(incarnation, container, instance)


def parse_versions(data: bytes) -> tuple[str, ...]:
    """The WireServer's protocol versions (preferred first, then supported); WireServerError otherwise."""
    root = _wire_root(data, "versions")
    if root.local != "Versions":
        raise WireServerError("versions: the root element is not Versions")
    found: list[str] = []
    for section in ("Preferred", "Supported"):
        block = root.child(section)
        for version in () if block is None else block.all("Version"):
            text = version.text.strip()
            if text and text not in found:
                found.append(text)
    return tuple(found)


@attrs.frozen
class HealthStatus:
    """One report to the fabric: Ready, or NotReady with a sub-status and a description."""

    state: str
    substatus: str | None = None
    description: str | None = None

    def describe(self) -> str:
        if self.substatus is None:
            return self.state
        return f"{self.state} ({self.substatus}: {self.description or ''})"


READY_STATUS = HealthStatus(READY)


def failed(description: str) -> HealthStatus:
    """NotReady/ProvisioningFailed with a description the operator reads in the portal."""
    return HealthStatus(NOT_READY, PROVISIONING_FAILED, trim_description(description))


def trim_description(text: str) -> str:
    clean = _CONTROL.sub(" ", text).strip()
    return clean if len(clean) <= DESCRIPTION_MAX else clean[: DESCRIPTION_MAX - 3] + "..."


def render_health(goal: GoalState, status: HealthStatus) -> bytes:
    """The `POST /machine?comp=health` body (the fabric's documented Health XML)."""
    details = ""
    if status.substatus is not None:
        details = (
            "<Details>"
            f"<SubStatus>{escape(status.substatus)}</SubStatus>"
            f"<Description>{escape(trim_description(status.description or ''))}</Description>"
            "</Details>"
        )
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<GoalStateIncarnation>{escape(goal.incarnation)}</GoalStateIncarnation>"
        f"<Container><ContainerId>{escape(goal.container_id)}</ContainerId>"
        "<RoleInstanceList><Role>"
        f"<InstanceId>{escape(goal.instance_id)}</InstanceId>"
        f"<Health><State>{escape(status.state)}</State>{details}</Health>"
        "</Role></RoleInstanceList></Container></Health>\n"
    )
    return text.encode("utf-8")


# ---------------------------------------------------------------- finding the WireServer

_DHCLIENT_245 = re.compile(r"option\s+unknown-245\s+(.+?);")
_HEX_245 = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){3}")
_EXPIRE = re.compile(r"expire\s+(?:\d\s+(\d{4}/\d{1,2}/\d{1,2}\s+\d{1,2}:\d{2}:\d{2})|epoch\s+(\d+)|(never))")


def _option_245(value: str) -> str | None:
    """dhclient prints an option of unknown type as colon-separated hex, or as a quoted
    string when every byte is printable (100.64.65.66 is `"d@AB"`)."""
    value = value.strip()
    raw: bytes
    if _HEX_245.fullmatch(value):
        raw = bytes(int(part, 16) for part in value.split(":"))
    elif len(value) >= 2 and value[0] == value[-1] == '"':
        body = value[1:-1]
        out = bytearray()
        i = 0
        while i < len(body):
            if body[i] == "\\" and i + 4 <= len(body) and body[i + 1 : i + 4].isdigit():
                out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
            elif body[i] == "\\" and i + 1 < len(body):
                out.append(ord(body[i + 1]) & 0xFF)
                i += 2
            else:
                out.append(ord(body[i]) & 0xFF)
                i += 1
        raw = bytes(out)
    else:
        return None
    if len(raw) != 4:
        return None
    return str(ipaddress.IPv4Address(raw))


def _expired(block: str, now: datetime) -> bool:
    match = _EXPIRE.search(block)
    if match is None or match.group(3):
        return False
    try:
        if match.group(2):
            when = datetime.fromtimestamp(int(match.group(2)), UTC)
        else:
            when = datetime.strptime(match.group(1), "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return False
    return when <= now


def wireserver_from_dhclient(text: str, now: datetime) -> str | None:
    """The WireServer address from a dhclient leases file: option 245 of the newest lease
    that has one and has not expired (dhclient appends leases, newest last)."""
    found: str | None = None
    for block in text.split("lease {")[1:]:
        body = block.split("}", 1)[0]
        match = _DHCLIENT_245.search(body)
        if match is None or _expired(body, now):
            continue
        address = _option_245(match.group(1))
        if address is not None:
            found = address
    return found


def wireserver_from_networkd(text: str) -> str | None:
    """The WireServer address from a systemd-networkd lease file (`OPTION_245=A83F8110`)."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "OPTION_245":
            hexed = value.strip()
            if re.fullmatch(r"[0-9a-fA-F]{8}", hexed):
                return str(ipaddress.IPv4Address(bytes.fromhex(hexed)))
    return None
