"""SmartOS's pure parser: metadata keys as Triton documents them (and as cloud-init and
mdata-fetch read them), the host's FAILURE answers, and hostile values."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata, MetadataScript, NetworkInterface, Route
from guestagent.domain.platforms.smartos import (
    KEYS_READ,
    MAX_KEYS,
    NO_EXTRAS,
    SmartOsError,
    SmartOsFetched,
    dmi_says_smartos,
    parse_smartos,
    smartos,
)
from tests.keys import ED25519, ED25519_BOB, RSA

UUID = "a4d7f8a1-0e9b-4c8e-9b1e-6ad3d9f0c0a1"

# sdc:nics as a Triton KVM/bhyve guest gets it: one public NIC (primary) and one on a
# private fabric, both static; the older ip/netmask/gateway fields next to ips/gateways.
NICS: list[dict[str, Any]] = [
    {
        "interface": "net0",
        "mac": "90:B8:D0:C0:FF:EE",
        "vlan_id": 0,
        "nic_tag": "external",
        "gateway": "8.19.41.1",
        "gateways": ["8.19.41.1"],
        "netmask": "255.255.255.0",
        "ip": "8.19.41.79",
        "ips": ["8.19.41.79/24"],
        "mtu": 1500,
        "primary": True,
    },
    {
        "interface": "net1",
        "mac": "90:b8:d0:ba:ad:f0",
        "vlan_id": 253,
        "nic_tag": "sdc_overlay/4418352",
        "gateway": "10.112.0.1",
        "gateways": ["10.112.0.1"],
        "netmask": "255.255.240.0",
        "ip": "10.112.3.5",
        "ips": ["10.112.3.5/20"],
        "mtu": 8500,
    },
]
RESOLVERS = ["8.8.8.8", "8.8.4.4"]
# sdc:routes as the host builds it from the VM's routes: a gateway route and a link-local
# one (the gateway is the NIC's own address).
ROUTES = [
    {"linklocal": False, "dst": "10.0.0.0/8", "gateway": "10.112.0.1"},
    {"linklocal": True, "dst": "172.20.0.0/16", "gateway": "10.112.3.5"},
]


def fetched(**values: object) -> SmartOsFetched:
    """A session's answers; keys spelled with _ for : and -; non-bytes JSON-encoded."""
    out: dict[str, bytes] = {"sdc:uuid": UUID.encode()}
    for name, value in values.items():
        key = name.replace("__", ":").replace("_", "-") if name != "root_authorized_keys" else name
        if value is None:
            out.pop(key, None)
        elif isinstance(value, bytes):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value.encode()
        else:
            out[key] = json.dumps(value).encode()
    return SmartOsFetched(values=out)


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


# ------------------------------------------------------------------ identity and keys


def test_uuid_alone_is_an_instance() -> None:
    md = parse_smartos(fetched())
    assert (md.platform, md.instance_id) == ("smartos", UUID)
    assert (md.hostname, md.ssh_keys, md.rejections, md.network_interfaces) == ("", (), (), ())
    assert (md.user_data, md.vendor_data, dict(md.scripts)) == (None, None, {})
    assert smartos(md) == NO_EXTRAS


def test_the_key_names_fetched_are_the_documented_ones() -> None:
    assert set(KEYS_READ) == {
        "sdc:uuid",
        "hostname",
        "sdc:hostname",
        "sdc:nics",
        "sdc:resolvers",
        "sdc:routes",
        "root_authorized_keys",
        "user-script",
        "sdc:operator-script",
        "user-data",
        "sdc:vendor-data",
    }


def test_no_uuid_is_no_instance() -> None:
    with pytest.raises(SmartOsError, match="no sdc:uuid"):
        parse_smartos(SmartOsFetched(values={"sdc:hostname": b"x"}))


def test_a_failure_for_the_uuid_is_no_instance() -> None:
    with pytest.raises(SmartOsError, match="FAILURE"):
        parse_smartos(SmartOsFetched(failures={"sdc:uuid": "boom"}))


@pytest.mark.parametrize("bad", [b"", b"  ", b"two words", b"\xff\xfe", b"x" * 256])
def test_an_unusable_uuid_is_no_instance(bad: bytes) -> None:
    with pytest.raises(SmartOsError):
        parse_smartos(SmartOsFetched(values={"sdc:uuid": bad}))


def test_not_what_the_transport_reads() -> None:
    with pytest.raises(SmartOsError, match="expected"):
        parse_smartos({"sdc:uuid": UUID})


def test_sdc_hostname() -> None:
    assert parse_smartos(fetched(sdc__hostname="web01\n")).hostname == "web01"


def test_the_users_hostname_key_wins_as_in_cloud_init() -> None:
    md = parse_smartos(fetched(sdc__hostname="web01", hostname="frontend"))
    assert md.hostname == "frontend"


def test_a_hostname_that_is_not_one_word_holds_the_hostname() -> None:
    md = parse_smartos(fetched(sdc__hostname="web 01"))
    assert md.hostname == ""
    assert held(md) == {("sdc:hostname", "hostname")}


def test_a_failure_for_the_hostname_holds_it() -> None:
    md = parse_smartos(SmartOsFetched(values={"sdc:uuid": UUID.encode()}, failures={"sdc:hostname": "x"}))
    assert held(md) == {("sdc:hostname", "hostname")}


def test_root_authorized_keys_go_to_root() -> None:
    md = parse_smartos(fetched(root_authorized_keys=f"{ED25519}\n\n# comment\n{RSA}\r\n"))
    assert [(k.user, k.line) for k in md.ssh_keys] == [("root", ED25519), ("root", RSA)]
    assert md.users() == frozenset({"root"})


def test_a_bad_key_line_is_refused_alone() -> None:
    md = parse_smartos(fetched(root_authorized_keys=f"{ED25519}\nssh-ed25519 AAAA-truncated x\n{ED25519_BOB}"))
    assert [k.line for k in md.ssh_keys] == [ED25519, ED25519_BOB]
    assert [(r.where, r.concerns, r.holds) for r in md.rejections] == [
        ("root_authorized_keys line 2", "accounts", False)
    ]


def test_unreadable_keys_hold_accounts() -> None:
    md = parse_smartos(fetched(root_authorized_keys=b"\xff" + ED25519.encode()))
    assert md.ssh_keys == ()
    assert held(md) == {("root_authorized_keys", "accounts")}
    failed = SmartOsFetched(values={"sdc:uuid": UUID.encode()}, failures={"root_authorized_keys": "x"})
    assert held(parse_smartos(failed)) == {("root_authorized_keys", "accounts")}


def test_too_many_keys_hold_accounts() -> None:
    md = parse_smartos(fetched(root_authorized_keys="\n".join([ED25519] * (MAX_KEYS + 1))))
    assert ("root_authorized_keys", "accounts") in held(md)


# ------------------------------------------------------------------ network


def test_documented_nics() -> None:
    md = parse_smartos(fetched(sdc__nics=NICS, sdc__resolvers=RESOLVERS))
    assert md.network_interfaces == (
        NetworkInterface(
            mac="90:b8:d0:c0:ff:ee",
            ip="8.19.41.79",
            prefix_length=24,
            gateway="8.19.41.1",
            mtu=1500,
            static=True,
            addresses=("8.19.41.79/24",),
        ),
        # Not the primary NIC: its gateway would add a second default route (cloud-init
        # uses only the primary's too).
        NetworkInterface(
            mac="90:b8:d0:ba:ad:f0",
            ip="10.112.3.5",
            prefix_length=20,
            mtu=8500,
            static=True,
            addresses=("10.112.3.5/20",),
        ),
    )
    assert md.dns_servers == ("8.8.8.8", "8.8.4.4")
    extras = smartos(md)
    assert dict(extras.interface_names) == {"90:b8:d0:c0:ff:ee": "net0", "90:b8:d0:ba:ad:f0": "net1"}
    assert extras.nic_tags["90:b8:d0:ba:ad:f0"] == "sdc_overlay/4418352"
    assert md.rejections == ()


def test_the_primary_nic_comes_first_whatever_the_order() -> None:
    md = parse_smartos(fetched(sdc__nics=[NICS[1], NICS[0]]))
    assert [n.mac for n in md.network_interfaces] == ["90:b8:d0:c0:ff:ee", "90:b8:d0:ba:ad:f0"]
    assert md.network_interfaces[0].gateway == "8.19.41.1"


def test_without_a_primary_the_first_nic_is_it() -> None:
    nics = [{**NICS[1], "primary": False}, {k: v for k, v in NICS[0].items() if k != "primary"}]
    md = parse_smartos(fetched(sdc__nics=nics))
    assert md.network_interfaces[0].mac == "90:b8:d0:ba:ad:f0"
    assert md.network_interfaces[0].gateway == "10.112.0.1"
    assert md.network_interfaces[1].gateway is None


def test_dhcp_and_addrconf_are_not_static() -> None:
    nic = {"interface": "net0", "mac": "90:b8:d0:00:00:01", "ips": ["dhcp", "addrconf"], "primary": True}
    md = parse_smartos(fetched(sdc__nics=[nic]))
    assert md.network_interfaces == (NetworkInterface(mac="90:b8:d0:00:00:01"),)


def test_older_ip_and_netmask_fields() -> None:
    nic = {"mac": "90:b8:d0:00:00:01", "ip": "192.0.2.5", "netmask": "255.255.255.128", "gateway": "192.0.2.1"}
    md = parse_smartos(fetched(sdc__nics=[nic]))
    assert md.network_interfaces[0].addresses == ("192.0.2.5/25",)
    assert md.network_interfaces[0].gateway == "192.0.2.1"
    dhcp = {"mac": "90:b8:d0:00:00:01", "ip": "dhcp"}
    assert parse_smartos(fetched(sdc__nics=[dhcp])).network_interfaces[0].static is False


def test_ipv6_addresses_and_gateways() -> None:
    nic = {
        "mac": "90:b8:d0:00:00:01",
        "primary": True,
        "ips": ["192.0.2.5/24", "2001:DB8::5/64", "addrconf"],
        "gateways": ["2001:db8::1", "192.0.2.1"],
    }
    iface = parse_smartos(fetched(sdc__nics=[nic])).network_interfaces[0]
    assert (iface.ip, iface.ipv6, iface.gateway, iface.gateway6) == (
        "192.0.2.5",
        ("2001:db8::5",),
        "192.0.2.1",
        "2001:db8::1",
    )
    assert iface.addresses == ("192.0.2.5/24", "2001:db8::5/64")


def test_routes_go_to_the_nic_that_reaches_their_gateway() -> None:
    extra = {"linklocal": False, "dst": "198.51.100.0/24", "gateway": "203.0.113.1"}
    md = parse_smartos(fetched(sdc__nics=NICS, sdc__routes=[*ROUTES, extra]))
    private = md.network_interfaces[1]
    assert private.routes == (Route("10.0.0.0/8", "10.112.0.1"), Route("172.20.0.0/16", None))
    assert md.network_interfaces[0].routes == ()
    # No NIC's subnet holds 203.0.113.1: the route stays at instance level.
    assert smartos(md).routes == (Route("198.51.100.0/24", "203.0.113.1"),)
    assert md.rejections == ()


def test_a_host_route_is_read_as_a_slash_32() -> None:
    md = parse_smartos(fetched(sdc__nics=NICS, sdc__routes=[{"dst": "10.9.9.9", "gateway": "10.112.0.1"}]))
    assert md.network_interfaces[1].routes == (Route("10.9.9.9/32", "10.112.0.1"),)


@pytest.mark.parametrize(
    ("nics", "where"),
    [
        ({"mac": "x"}, "sdc:nics"),
        ("not json [", "sdc:nics"),
        ([{"mac": "not-a-mac"}], "sdc:nics[0]"),
        ([{"ips": ["10.0.0.1/24"]}], "sdc:nics[0]"),
        ([{**NICS[0], "ips": "10.0.0.1/24"}], "sdc:nics[0]"),
        ([{**NICS[0], "ips": ["10.0.0.1"], "netmask": None}], "sdc:nics[0]"),  # no prefix at all
        ([{**NICS[0], "ips": [{"ip": "x"}]}], "sdc:nics[0]"),
        ([{**NICS[0], "mtu": "jumbo"}], "sdc:nics[0]"),
        ([{**NICS[0], "mtu": 10}], "sdc:nics[0]"),
        ([{**NICS[0], "mtu": True}], "sdc:nics[0]"),
        ([{**NICS[0], "primary": "yes"}], "sdc:nics[0]"),
        ([{**NICS[0], "gateways": "8.19.41.1"}], "sdc:nics[0]"),
        ([{**NICS[0], "gateways": ["gw"]}], "sdc:nics[0]"),
        ([NICS[0], 7], "sdc:nics[1]"),
    ],
)
def test_an_unreadable_nic_list_holds_the_network(nics: object, where: str) -> None:
    md = parse_smartos(fetched(sdc__nics=nics))
    assert md.network_interfaces == ()
    assert held(md) == {(where, "nics"), (where, "routes"), (where, "hostname")}


def test_a_failure_for_the_nics_holds_the_network() -> None:
    md = parse_smartos(SmartOsFetched(values={"sdc:uuid": UUID.encode()}, failures={"sdc:nics": "x"}))
    assert held(md) == {("sdc:nics", "nics"), ("sdc:nics", "routes"), ("sdc:nics", "hostname")}


def test_deep_json_is_refused_not_crashed() -> None:
    md = parse_smartos(fetched(sdc__nics="[" * 100_000))
    assert ("sdc:nics", "nics") in held(md)


@pytest.mark.parametrize("resolvers", [{"a": 1}, ["8.8.8.8", "dns.example"], [8], "x"])
def test_unreadable_resolvers_hold_dns(resolvers: object) -> None:
    md = parse_smartos(fetched(sdc__resolvers=resolvers))
    assert md.dns_servers == ()
    assert held(md) == {("sdc:resolvers", "nics")}


@pytest.mark.parametrize(
    "routes",
    [
        {"dst": "10.0.0.0/8"},
        [{"dst": "10.0.0.0/8"}],
        [{"dst": "ten", "gateway": "10.112.0.1"}],
        [{"dst": "10.0.0.0/8", "gateway": "10.112.0.1", "linklocal": "no"}],
        [{"dst": "2001:db8::/32", "gateway": "10.112.0.1"}],
    ],
)
def test_unreadable_routes_hold_routes(routes: object) -> None:
    md = parse_smartos(fetched(sdc__nics=NICS, sdc__routes=routes))
    assert all(n.routes == () for n in md.network_interfaces)
    assert {c for _, c in held(md)} == {"routes"}


# ------------------------------------------------------------------ scripts and data


def test_user_script_runs_at_every_boot_after_the_operators() -> None:
    md = parse_smartos(fetched(user_script="#!/bin/sh\necho user\n", sdc__operator_script="echo op\n"))
    assert md.scripts["startup"] == (
        MetadataScript("sdc:operator-script", False, "echo op\n", "operator"),
        MetadataScript("user-script", False, "#!/bin/sh\necho user\n", "instance"),
    )


def test_an_empty_script_is_no_script() -> None:
    assert dict(parse_smartos(fetched(user_script="  \n")).scripts) == {}


def test_an_unreadable_script_holds_scripts() -> None:
    md = parse_smartos(fetched(user_script=b"\xff\xfe"))
    assert dict(md.scripts) == {}
    assert held(md) == {("user-script", "scripts")}


def test_user_data_and_vendor_data_are_kept_apart_as_bytes() -> None:
    md = parse_smartos(fetched(user_data=b"\x00\xffraw", sdc__vendor_data="#cloud-config\n{}"))
    assert (md.user_data, md.vendor_data) == (b"\x00\xffraw", b"#cloud-config\n{}")


def test_a_failure_for_user_data_holds_scripts() -> None:
    md = parse_smartos(SmartOsFetched(values={"sdc:uuid": UUID.encode()}, failures={"user-data": "x"}))
    assert md.user_data is None
    assert held(md) == {("user-data", "scripts")}


def test_rejections_never_carry_key_material() -> None:
    md = parse_smartos(fetched(root_authorized_keys="ssh-ed25519 AAAAsecretmaterial x"))
    assert md.rejections and all("secretmaterial" not in r.describe() for r in md.rejections)


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("product", "found"),
    [("SmartDC HVM", True), ("SmartDC HVM\n", True), ("SmartDC", True), ("Standard PC (Q35)", False), ("", False)],
)
def test_dmi_product_name(product: str, found: bool) -> None:
    assert (dmi_says_smartos({"product_name": product}) is not None) is found


# ------------------------------------------------------------------ properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
nic_like = st.fixed_dictionaries(
    {},
    optional={
        "mac": st.sampled_from(["90:b8:d0:00:00:01", "90:b8:d0:00:00:02", "x", ""]) | st.text(max_size=17),
        "primary": st.booleans() | json_values,
        "ips": st.lists(st.sampled_from(["dhcp", "addrconf", "10.0.0.5/24", "2001:db8::5/64", "10.0.0.5", "x"]))
        | json_values,
        "ip": st.sampled_from(["dhcp", "10.0.0.5"]) | json_values,
        "netmask": st.sampled_from(["255.255.255.0", "x"]) | json_values,
        "gateways": st.lists(st.sampled_from(["10.0.0.1", "2001:db8::1", "x"])) | json_values,
        "gateway": st.sampled_from(["10.0.0.1", ""]) | json_values,
        "mtu": st.integers(-1, 70000) | json_values,
        "interface": st.sampled_from(["net0", "net 1"]) | json_values,
    },
)
route_like = st.fixed_dictionaries(
    {},
    optional={
        "dst": st.sampled_from(["10.0.0.0/8", "10.9.9.9", "2001:db8::/32", "x"]) | json_values,
        "gateway": st.sampled_from(["10.0.0.1", "10.0.0.5", "2001:db8::1", "x"]) | json_values,
        "linklocal": st.booleans() | json_values,
    },
)
values = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())


@given(
    st.dictionaries(st.sampled_from(KEYS_READ), values, max_size=len(KEYS_READ)),
    st.dictionaries(st.sampled_from(KEYS_READ), st.text(max_size=20), max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_arbitrary_answers_raise_only_the_parsers_error(raw: dict[str, bytes], failures: dict[str, str]) -> None:
    with contextlib.suppress(SmartOsError):
        parse_smartos(SmartOsFetched(values=raw, failures=failures))


@given(st.lists(nic_like, max_size=4) | json_values, st.lists(route_like, max_size=4) | json_values, json_values)
@settings(max_examples=400, deadline=None)
def test_arbitrary_network_documents_never_crash(nics: object, routes: object, resolvers: object) -> None:
    md = parse_smartos(fetched(sdc__nics=json.dumps(nics), sdc__routes=json.dumps(routes), sdc__resolvers=resolvers))
    for nic in md.network_interfaces:
        assert nic.static == bool(nic.addresses)
