"""Azure's pure parsers: ovf-env.xml, IMDS, the WireServer's goal state and versions, the health
report, the DHCP leases that name the WireServer. Documents written out here as Microsoft and the
reference agents (WALinuxAgent, cloud-init's Azure datasource) describe them."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.domain import safexml
from guestagent.domain.platforms.azure import (
    ASSET_TAG,
    MAX_KEYS,
    AzureExtras,
    AzureFetched,
    AzureMetadataError,
    GoalState,
    HealthStatus,
    OvfError,
    WireServerError,
    azure,
    dmi_says_azure,
    failed,
    parse_azure,
    parse_goal_state,
    parse_ovf_env,
    parse_versions,
    render_health,
    wireserver_from_dhclient,
    wireserver_from_networkd,
)
from tests.keys import ED25519, ED25519_BOB, RSA

VM_ID = "6a6ff5d1-8e2f-4a3a-9a8c-2f0b8f6c7a11"


def ovf(
    *,
    user: str = "azureuser",
    password: str | None = None,
    disable: str = "true",
    keys: str = "",
    custom: str | None = None,
    hostname: str = "myvm",
    config_type: str = "LinuxProvisioningConfiguration",
    settings_xml: str = "<ProvisionGuestAgent>true</ProvisionGuestAgent>",
) -> bytes:
    """An ovf-env.xml as the provisioning DVD carries it (WALinuxAgent's test data shape)."""
    password_xml = f"<UserPassword>{password}</UserPassword>" if password is not None else ""
    custom_xml = f"<CustomData>{custom}</CustomData>" if custom is not None else ""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
 xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
 xmlns:wa="http://schemas.microsoft.com/windowsazure"
 xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure"
     xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
      <ConfigurationSetType>{config_type}</ConfigurationSetType>
      <HostName>{hostname}</HostName>
      <UserName>{user}</UserName>
      {password_xml}
      <DisableSshPasswordAuthentication>{disable}</DisableSshPasswordAuthentication>
      <SSH><PublicKeys>{keys}</PublicKeys><KeyPairs></KeyPairs></SSH>
      {custom_xml}
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
  <wa:PlatformSettingsSection>
    <wa:Version>1.0</wa:Version>
    <PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure"
     xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
      <KmsServerHostname>kms.core.windows.net</KmsServerHostname>
      {settings_xml}
      <GuestAgentPackageName i:nil="true" />
    </PlatformSettings>
  </wa:PlatformSettingsSection>
</Environment>
""".encode()


def key_xml(
    value: str | None, path: str = "/home/azureuser/.ssh/authorized_keys", fingerprint: str = ""
) -> str:
    value_xml = f"<Value>{value}</Value>" if value is not None else ""
    return f"<PublicKey><Fingerprint>{fingerprint}</Fingerprint><Path>{path}</Path>{value_xml}</PublicKey>"


def imds(**compute: Any) -> bytes:
    """IMDS's instance document (api-version 2021-08-01), as the IMDS documentation shows it."""
    document: dict[str, Any] = {
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": "westeurope",
            "name": "myvm",
            "osProfile": {
                "adminUsername": "azureuser",
                "computerName": "myvm",
                "disablePasswordAuthentication": "true",
            },
            "osType": "Linux",
            "publicKeys": [{"keyData": ED25519, "path": "/home/azureuser/.ssh/authorized_keys"}],
            "resourceGroupName": "rg",
            "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
            "vmId": VM_ID,
            "vmSize": "Standard_B2s",
        },
        "network": {
            "interface": [
                {
                    "ipv4": {
                        "ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": "20.1.2.3"}],
                        "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
                    },
                    "ipv6": {"ipAddress": []},
                    "macAddress": "000D3A123456",
                }
            ]
        },
    }
    document["compute"].update(compute)
    return json.dumps(document).encode()


def parse(ovf_bytes: bytes | None = None, imds_bytes: bytes | None = None) -> Any:
    document = imds() if imds_bytes is None else imds_bytes
    return parse_azure(AzureFetched(imds=document, ovf=ovf_bytes, ovf_source="/dev/sr0"))


# ---------------------------------------------------------------- ovf-env.xml


def test_documented_ovf_env() -> None:
    env, rejections = parse_ovf_env(
        ovf(keys=key_xml(ED25519), custom=base64.b64encode(b"#!/bin/sh\n").decode())
    )
    assert rejections == ()
    assert env.hostname == "myvm"
    assert env.username == "azureuser"
    assert env.password is None
    assert env.disable_ssh_password_auth is True
    assert [(k.path, k.value) for k in env.keys] == [("/home/azureuser/.ssh/authorized_keys", ED25519)]
    assert env.custom_data == "IyEvYmluL3NoCg=="
    assert env.provision_guest_agent is True
    assert env.preprovisioned_vm is False


def test_password_is_taken_verbatim_and_never_shown() -> None:
    env, _ = parse_ovf_env(ovf(password=" p&amp;ss w0rd ", disable="false"))
    assert env.password == " p&ss w0rd "
    assert env.disable_ssh_password_auth is False
    assert "w0rd" not in repr(env)


@pytest.mark.parametrize(
    ("text", "expected", "refused"),
    [("true", True, False), ("FALSE", False, False), ("", True, False), ("yes please", True, True)],
)
def test_disable_password_auth_unreadable_stays_on_the_safe_side(
    text: str, expected: bool, refused: bool
) -> None:
    env, rejections = parse_ovf_env(ovf(disable=text))
    assert env.disable_ssh_password_auth is expected
    assert bool(rejections) is refused


def test_a_windows_provisioning_set_is_not_a_linux_environment() -> None:
    with pytest.raises(OvfError, match="not LinuxProvisioningConfiguration"):
        parse_ovf_env(ovf(config_type="WindowsProvisioningConfiguration"))


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"not xml",
        b"<Environment/>",
        b'<Environment xmlns="urn:other"><ProvisioningSection/></Environment>',
        b"<html><body>captive portal</body></html>",
    ],
)
def test_documents_that_are_not_ovf_environments(document: bytes) -> None:
    with pytest.raises(OvfError):
        parse_ovf_env(document)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"><x>&lol3;</x></Environment>
"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/shadow">]>
<Environment>&x;</Environment>
"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL, b"<!DOCTYPE Environment><Environment/>"])
def test_dtds_and_entities_are_refused(document: bytes) -> None:
    with pytest.raises(OvfError, match="refused"):
        parse_ovf_env(document)


def test_an_undeclared_entity_is_refused() -> None:
    with pytest.raises(OvfError):
        parse_ovf_env(b"<Environment>&lol;</Environment>")


def test_huge_and_deep_documents_are_refused() -> None:
    with pytest.raises(OvfError, match="larger than"):
        parse_ovf_env(b"<Environment>" + b" " * (2 * 1024 * 1024) + b"</Environment>")
    with pytest.raises(OvfError, match="nested deeper"):
        parse_ovf_env(b"<a>" * 100 + b"</a>" * 100)
    with pytest.raises(safexml.XmlRefused, match="elements"):
        safexml.parse(b"<a>" + b"<b/>" * 20_000 + b"</a>")


# ---------------------------------------------------------------- the neutral model


def test_dvd_and_imds_into_the_neutral_model() -> None:
    custom = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    metadata = parse(ovf(keys=key_xml(RSA), custom=custom, password="S3cret!", disable="false"))
    assert metadata.platform == "azure"
    assert metadata.instance_id == VM_ID
    assert metadata.hostname == "myvm"
    # The DVD's key and IMDS's, both for the named admin user.
    assert [(k.user, k.line) for k in metadata.ssh_keys] == [("azureuser", RSA), ("azureuser", ED25519)]
    assert metadata.user_data == b"#!/bin/sh\necho hi\n"
    extras = azure(metadata)
    assert extras == AzureExtras(
        vm_id=VM_ID,
        admin_user="azureuser",
        password="S3cret!",
        disable_password_auth=False,
        custom_data=custom,
        ovf_source="/dev/sr0",
        provision_guest_agent=True,
        name="myvm",
        location="westeurope",
        vm_size="Standard_B2s",
        subscription_id="8d10da13-8125-4ba9-a717-bf7490507b3d",
        resource_group="rg",
    )
    assert "S3cret" not in repr(metadata)
    [nic] = metadata.network_interfaces
    assert (nic.mac, nic.ip, nic.prefix_length, nic.static) == ("00:0d:3a:12:34:56", "10.0.0.4", 24, False)


def test_imds_alone_provisions_without_a_dvd() -> None:
    metadata = parse(
        None,
        imds(
            osProfile={
                "adminUsername": "ops",
                "computerName": "web-1",
                "disablePasswordAuthentication": "false",
            },
            publicKeys=[{"keyData": ED25519_BOB, "path": "/home/ops/.ssh/authorized_keys"}],
        ),
    )
    extras = azure(metadata)
    assert (extras.admin_user, extras.disable_password_auth, extras.ovf_source) == ("ops", False, None)
    assert metadata.hostname == "web-1"
    assert [(k.user, k.line) for k in metadata.ssh_keys] == [("ops", ED25519_BOB)]


def test_a_key_for_another_path_is_refused_with_a_reason() -> None:
    metadata = parse(ovf(keys=key_xml(RSA, path="/root/.ssh/authorized_keys")))
    assert [k.line for k in metadata.ssh_keys] == [ED25519]
    [rejection] = metadata.rejections_for("accounts")
    assert "/root/.ssh/authorized_keys" in rejection.reason and "refused" in rejection.reason
    assert not rejection.holds


def test_fingerprint_only_keys_are_refused_and_said_why() -> None:
    metadata = parse(ovf(keys=key_xml(None, fingerprint="EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62")))
    assert [k.line for k in metadata.ssh_keys] == [ED25519]
    assert any("fingerprint-only" in r.reason for r in metadata.rejections)


def test_the_dvds_user_name_wins_over_imds() -> None:
    metadata = parse(
        ovf(user="dvduser", keys=key_xml(RSA, path="/home/dvduser/.ssh/authorized_keys")), imds(publicKeys=[])
    )
    assert azure(metadata).admin_user == "dvduser"
    assert [r.concerns for r in metadata.rejections] == ["azure_provisioning"]


def test_an_unreadable_dvd_document_is_carried_for_the_report() -> None:
    metadata = parse(b"<html>oops</html>")
    assert azure(metadata).ovf_error is not None
    assert metadata.instance_id == VM_ID  # IMDS still describes the VM


def test_bad_custom_data_holds_firstboot() -> None:
    metadata = parse(ovf(custom="not*base64"))
    assert metadata.user_data is None
    assert metadata.held("firstboot")


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"[]",
        b"{}",
        b'{"compute": []}',
        b'{"compute": {"name": "x"}}',
        b'{"compute": {"vmId": ""}}',
        b"<html></html>",
        b"[" * 10_000,
    ],
)
def test_imds_without_a_vm_id_refuses_the_snapshot(document: bytes) -> None:
    with pytest.raises(AzureMetadataError):
        parse(None, document)


def test_wrong_typed_public_keys_hold_accounts() -> None:
    metadata = parse(None, imds(publicKeys={"keyData": ED25519}))
    assert metadata.held("accounts")
    assert metadata.ssh_keys == ()


PATH = "/home/azureuser/.ssh/authorized_keys"


@pytest.mark.parametrize(
    "entry",
    [ED25519, {"keyData": ["x"], "path": PATH}, {"keyData": ED25519_BOB, "path": 5}],
)
def test_an_unreadable_public_keys_entry_holds_accounts(entry: object) -> None:
    metadata = parse(None, imds(publicKeys=[{"keyData": RSA, "path": PATH}, entry]))
    assert [r.where for r in metadata.held("accounts")] == ["IMDS compute.publicKeys[1]"]
    assert [k.line for k in metadata.ssh_keys] == [RSA]


def test_more_public_keys_than_the_bound_hold_accounts() -> None:
    listed = [{"keyData": ED25519, "path": PATH}] * (MAX_KEYS + 1)
    metadata = parse(None, imds(publicKeys=listed))
    assert [r.where for r in metadata.held("accounts")] == ["IMDS compute.publicKeys"]


def test_key_data_of_several_lines_is_read_line_by_line() -> None:
    bad = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcut"
    text = "\n".join(["", f"  {ED25519}  ", bad, f"{ED25519_BOB}\r", ED25519_BOB, bad])
    metadata = parse(None, imds(publicKeys=[{"keyData": text, "path": PATH}]))
    assert [(k.user, k.line) for k in metadata.ssh_keys] == [
        ("azureuser", ED25519),
        ("azureuser", ED25519_BOB),
    ]
    assert [r.where for r in metadata.rejections] == [
        "IMDS compute.publicKeys[0] line 3",
        "IMDS compute.publicKeys[0] line 6",
    ]
    assert not any(r.holds for r in metadata.rejections)


def test_dmi_asset_tag() -> None:
    assert dmi_says_azure({"chassis_asset_tag": ASSET_TAG})
    assert dmi_says_azure({"chassis_asset_tag": "No Asset Tag"}) is None
    assert dmi_says_azure({}) is None


# ---------------------------------------------------------------- the WireServer

GOAL_STATE = b"""<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>3</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>8e3b8f1c-4e1b-4b5a-a5c6-1b2c3d4e5f60</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>7d2cf4a7e8b44d6f9c5d1c3e0a1b2c3d.myvm</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>http://168.63.129.16:80/machine/x?comp=config&amp;type=hostingEnvironmentConfig&amp;incarnation=3</HostingEnvironmentConfig>
          <ConfigName>7d2cf4a7e8b44d6f9c5d1c3e0a1b2c3d.0.myvm.1.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"""


def test_goal_state() -> None:
    assert parse_goal_state(GOAL_STATE) == GoalState(
        "3", "8e3b8f1c-4e1b-4b5a-a5c6-1b2c3d4e5f60", "7d2cf4a7e8b44d6f9c5d1c3e0a1b2c3d.myvm"
    )


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<GoalState/>",
        GOAL_STATE.replace(b"<Incarnation>3", b"<Incarnation>three"),
        GOAL_STATE.replace(b"<ContainerId>8e3b8f1c-4e1b-4b5a-a5c6-1b2c3d4e5f60", b"<ContainerId>"),
        b"<!DOCTYPE g [<!ENTITY a 'b'>]><GoalState/>",
        b"<Versions/>",
    ],
)
def test_goal_states_that_cannot_be_used(document: bytes) -> None:
    with pytest.raises(WireServerError):
        parse_goal_state(document)


def test_versions() -> None:
    document = (
        b'<?xml version="1.0" encoding="utf-8"?><Versions><Preferred><Version>2015-04-05</Version>'
        b"</Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version>"
        b"</Supported></Versions>"
    )
    assert parse_versions(document) == ("2015-04-05", "2012-11-30")


def test_health_report_ready_and_not_ready() -> None:
    goal = GoalState("3", "c-1", "i-1.vm")
    ready = safexml.parse(render_health(goal, HealthStatus("Ready")))
    assert ready.local == "Health"
    assert ready.findtext("GoalStateIncarnation") == "3"
    assert ready.findtext("Container/ContainerId") == "c-1"
    assert ready.findtext("Container/RoleInstanceList/Role/InstanceId") == "i-1.vm"
    assert ready.findtext("Container/RoleInstanceList/Role/Health/State") == "Ready"
    assert ready.find("Container/RoleInstanceList/Role/Health/Details") is None
    bad = safexml.parse(render_health(goal, failed("useradd: cannot lock /etc/passwd <&> " + "x" * 600)))
    health = bad.find("Container/RoleInstanceList/Role/Health")
    assert health is not None
    assert health.findtext("State") == "NotReady"
    assert health.findtext("Details/SubStatus") == "ProvisioningFailed"
    description = health.findtext("Details/Description") or ""
    assert description.startswith("useradd: cannot lock /etc/passwd <&> ")
    assert len(description) == 512


# ---------------------------------------------------------------- where the WireServer is

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASES = """lease {
  interface "eth0";
  fixed-address 10.0.0.4;
  option unknown-245 a8:3f:81:10;
  renew 4 2025/01/01 00:00:00;
  expire 4 2025/01/02 00:00:00;
}
lease {
  interface "eth0";
  fixed-address 10.0.0.4;
  option subnet-mask 255.255.255.0;
  option unknown-245 64:41:60:82;
  renew 5 2026/06/01 00:00:00;
  expire 5 2026/06/02 00:00:00;
}
"""


def test_option_245_from_dhclient_leases() -> None:
    assert wireserver_from_dhclient(LEASES, NOW) == "100.65.96.130"
    # Every lease expired: none.
    assert wireserver_from_dhclient(LEASES, datetime(2027, 1, 1, tzinfo=UTC)) is None
    # dhclient writes an all-printable value as a string: 100.64.65.66 is "d@AB".
    assert (
        wireserver_from_dhclient('lease {\n option unknown-245 "d@AB";\n expire never;\n}\n', NOW)
        == "100.64.65.66"
    )
    assert wireserver_from_dhclient("lease {\n option unknown-245 1:2:3;\n}\n", NOW) is None
    assert wireserver_from_dhclient("", NOW) is None


def test_option_245_from_networkd_lease() -> None:
    text = "# This is private data. Do not parse.\nADDRESS=10.0.0.4\nOPTION_245=A83F8110\n"
    assert wireserver_from_networkd(text) == "168.63.129.16"
    assert wireserver_from_networkd("OPTION_245=zz\n") is None


# ---------------------------------------------------------------- hostile input

ENTITY_DOCS = st.builds(
    lambda name, depth, width: (
        f'<?xml version="1.0"?><!DOCTYPE Environment [<!ENTITY {name}0 "x">'
        + "".join(f'<!ENTITY {name}{i} "' + f"&{name}{i - 1};" * width + '">' for i in range(1, depth))
        + f"]><Environment>&{name}{depth - 1};</Environment>"
    ).encode(),
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=20),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ENTITY_DOCS)
def test_entity_expansion_is_always_refused(document: bytes) -> None:
    with pytest.raises(OvfError, match="refused"):
        parse_ovf_env(document)


XMLISH = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda parts: "".join(parts).encode(),
        st.lists(
            st.sampled_from(
                [
                    "<Environment>",
                    "</Environment>",
                    "<ProvisioningSection>",
                    "</ProvisioningSection>",
                    "<LinuxProvisioningConfigurationSet>",
                    "</LinuxProvisioningConfigurationSet>",
                    "<UserName>",
                    "</UserName>",
                    "<SSH><PublicKeys><PublicKey>",
                    "</PublicKey></PublicKeys></SSH>",
                    "<Value>",
                    "</Value>",
                    "<Path>",
                    "</Path>",
                    "<CustomData>",
                    "</CustomData>",
                    "&amp;",
                    "&lol;",
                    "<!DOCTYPE x>",
                    "<![CDATA[x]]>",
                    "azureuser",
                    ED25519,
                    "/home/azureuser/.ssh/authorized_keys",
                    "<?xml version='1.0'?>",
                    "\x00",
                    "é",
                    "<HostName>",
                    "</HostName>",
                ]
            ),
            max_size=40,
        ),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(XMLISH)
def test_any_dvd_document_parses_or_is_refused_with_ovf_error(document: bytes) -> None:
    with contextlib.suppress(OvfError):
        parse_ovf_env(document)
    # Through the whole parser, an unusable DVD never refuses the snapshot: IMDS still answers.
    metadata = parse(document)
    assert metadata.instance_id == VM_ID


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(XMLISH)
def test_any_goal_state_parses_or_is_refused(document: bytes) -> None:
    with contextlib.suppress(WireServerError):
        parse_goal_state(document)
    with contextlib.suppress(WireServerError):
        parse_versions(document)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "compute",
                    "vmId",
                    "osProfile",
                    "adminUsername",
                    "publicKeys",
                    "keyData",
                    "path",
                    "network",
                    "interface",
                    "macAddress",
                    "ipv4",
                    "ipAddress",
                    "privateIpAddress",
                    "subnet",
                    "prefix",
                    "name",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH, st.text(max_size=40))
def test_any_imds_document_parses_or_is_refused(document: object, vm_id: str) -> None:
    if isinstance(document, dict) and isinstance(document.get("compute"), dict):
        document["compute"]["vmId"] = vm_id
    with contextlib.suppress(AzureMetadataError):
        parse(None, json.dumps(document).encode())
