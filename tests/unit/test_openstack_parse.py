"""OpenStack's pure parser: the documents Nova documents (meta_data.json, network_data.json
with DHCP, static, bonded and VLAN networks), then wrong types and hostile values."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Route
from guestagent.domain.platforms.openstack import (
    MAX_KEYS,
    MAX_LINKS,
    NO_EXTRAS,
    OpenStackError,
    OpenStackExtras,
    OpenStackFiles,
    Unreadable,
    dmi_says_openstack,
    netmask_prefix,
    openstack,
    parse_openstack,
)
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA

UUID = "83679162-1378-4288-a2d4-70e13ec132aa"

# Nova's user documentation (metadata service, "OpenStack format metadata"): the
# meta_data.json of an instance booted with key pair "mykey" and two metadata items.
NOVA_META_DATA: dict[str, Any] = {
    "random_seed": "yu5ZnkqF2CqnDZVAfZgarGJEutTNPNFJ",
    "uuid": UUID,
    "availability_zone": "nova",
    "keys": [{"data": f"{RSA}\n", "type": "ssh", "name": "mykey"}],
    "hostname": "test.novalocal",
    "launch_index": 0,
    "meta": {"priority": "low", "role": "webserver"},
    "devices": [
        {
            "type": "nic",
            "bus": "pci",
            "address": "0000:00:02.0",
            "mac": "00:11:22:33:44:55",
            "tags": ["trusted"],
        },
        {
            "type": "disk",
            "bus": "ide",
            "address": "0:0",
            "serial": "disk-vol-2352423",
            "path": "/dev/sda",
            "tags": ["baz"],
        },
    ],
    "project_id": "f7ac731cc11f40efbc03a9f9e1d1d21f",
    "public_keys": {"mykey": f"{RSA}\n"},
    "name": "test",
}

# The same documentation's network_data.json: one port on a DHCP-enabled subnet.
NOVA_NETWORK_DHCP: dict[str, Any] = {
    "links": [
        {
            "ethernet_mac_address": "fa:16:3e:9c:bf:3d",
            "id": "tapcd9f6d46-4a",
            "mtu": None,
            "type": "bridge",
            "vif_id": "cd9f6d46-4a3a-43ab-a466-994af9db96fc",
        }
    ],
    "networks": [
        {
            "id": "network0",
            "link": "tapcd9f6d46-4a",
            "network_id": "99e88329-f20d-4741-9593-25bf07847b16",
            "type": "ipv4_dhcp",
        }
    ],
    "services": [{"address": "8.8.8.8", "type": "dns"}],
}

# Nova's "metadata service network info" spec example: a VIF, two physical NICs bonded
# with a VLAN on top, a static IPv4 network (an extra route and the default one), a
# static IPv6 network whose prefix is in the address, and a static network on the VLAN.
NOVA_NETWORK_STATIC: dict[str, Any] = {
    "links": [
        {
            "id": "interface2",
            "type": "vif",
            "ethernet_mac_address": "a0:36:9f:2c:e8:70",
            "vif_id": "e1c90e9f-eafc-4e2d-8ec9-58b91cebb53d",
            "mtu": 1500,
        },
        {"id": "interface0", "type": "phy", "ethernet_mac_address": "a0:36:9f:2c:e8:80", "mtu": 9000},
        {"id": "interface1", "type": "phy", "ethernet_mac_address": "a0:36:9f:2c:e8:81", "mtu": 9000},
        {
            "id": "bond0",
            "type": "bond",
            "bond_links": ["interface0", "interface1"],
            "ethernet_mac_address": "a0:36:9f:2c:e8:82",
            "bond_mode": "802.1ad",
            "bond_xmit_hash_policy": "layer3+4",
            "bond_miimon": 100,
        },
        {
            "id": "vlan0",
            "type": "vlan",
            "vlan_link": "bond0",
            "vlan_id": 101,
            "vlan_mac_address": "a0:36:9f:2c:e8:80",
            "neutron_port_id": "ee2aa3a0-a0b8-4e0e-b0d0-bbf2e2d5ce2e",
        },
    ],
    "networks": [
        {
            "id": "private-ipv4",
            "type": "ipv4",
            "link": "interface0",
            "ip_address": "10.184.0.244",
            "netmask": "255.255.240.0",
            "routes": [
                {"network": "10.0.0.0", "netmask": "255.0.0.0", "gateway": "11.0.0.1"},
                {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "23.253.157.1"},
            ],
            "network_id": "da5bb487-5193-4a65-a3df-4a0055a8c0d7",
        },
        {
            "id": "private-ipv6",
            "type": "ipv6",
            "link": "interface0",
            "ip_address": "2001:cdba::3257:9652/24",
            "routes": [
                {"network": "::", "netmask": "::", "gateway": "fd00::1"},
                {"network": "::", "netmask": "ffff:ffff:ffff::", "gateway": "fd00::1:1"},
            ],
            "network_id": "da5bb487-5193-4a65-a3df-4a0055a8c0d7",
        },
        {
            "id": "publicnet-ipv4",
            "type": "ipv4",
            "link": "vlan0",
            "ip_address": "23.253.157.244",
            "netmask": "255.255.255.0",
            "dns_nameservers": ["69.20.0.164", "69.20.0.196"],
            "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "23.253.157.1"}],
            "network_id": "62611d6f-66cb-4270-8b1f-503ef0dd4736",
        },
    ],
    "services": [{"type": "dns", "address": "8.8.8.8"}, {"type": "dns", "address": "8.8.4.4"}],
}


def files(meta: object = None, network: object = None, source: str = "", **kwargs: Any) -> OpenStackFiles:
    """Files as the transport hands them over: documents as JSON bytes."""

    def encoded(value: object) -> object:
        if value is None or isinstance(value, bytes | Unreadable):
            return value
        return json.dumps(value).encode()

    return OpenStackFiles(
        meta_data=encoded(NOVA_META_DATA if meta is None else meta),  # type: ignore[arg-type]
        network_data=encoded(network),  # type: ignore[arg-type]
        **{name: encoded(value) for name, value in kwargs.items()},  # type: ignore[arg-type]
        source=source,
    )


def with_meta(**changes: object) -> dict[str, Any]:
    out = dict(NOVA_META_DATA)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def keys(md: InstanceMetadata) -> list[tuple[str | None, str]]:
    return [(k.user, k.line) for k in md.ssh_keys]


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


def network_held(where: str) -> set[tuple[str, str]]:
    return {(where, "network"), (where, "nics"), (where, "hostname")}


# ------------------------------------------------------------------ meta_data.json


def test_novas_documented_meta_data() -> None:
    md = parse_openstack(files(source="metadata service at 169.254.169.254"))
    assert md.platform == "openstack"
    assert md.instance_id == UUID
    assert md.hostname == "test.novalocal"
    # public_keys and keys[] carry the same key: it is installed once, for the default user.
    assert keys(md) == [(None, RSA)]
    assert md.users() == frozenset()
    assert md.rejections == ()
    assert (md.network_interfaces, md.dns_servers, md.user_data, md.vendor_data) == ((), (), None, None)
    extras = openstack(md)
    assert extras == OpenStackExtras(
        source="metadata service at 169.254.169.254",
        name="test",
        availability_zone="nova",
        project_id="f7ac731cc11f40efbc03a9f9e1d1d21f",
        meta={"priority": "low", "role": "webserver"},
        random_seed="yu5ZnkqF2CqnDZVAfZgarGJEutTNPNFJ",
    )
    with pytest.raises(TypeError):
        extras.meta["role"] = "db"  # type: ignore[index]
    # The RNG seed is never part of a log line.
    assert "yu5Z" not in repr(extras)


def test_hostname_falls_back_to_the_name() -> None:
    assert parse_openstack(files(with_meta(hostname=None))).hostname == "test"
    assert parse_openstack(files(with_meta(hostname=""))).hostname == "test"
    # A display name with spaces is no hostname: none is set, and nothing is held.
    md = parse_openstack(files(with_meta(hostname=None, name="My web server")))
    assert (md.hostname, md.rejections) == ("", ())


@pytest.mark.parametrize("value", [5, ["a"], {"a": "b"}, True])
def test_a_hostname_of_the_wrong_type_holds_the_hostname(value: object) -> None:
    md = parse_openstack(files(with_meta(hostname=value)))
    assert md.hostname == ""
    assert held(md) == {("meta_data.json hostname", "hostname")}


def test_a_hostname_with_spaces_holds_the_hostname() -> None:
    md = parse_openstack(files(with_meta(hostname="two words")))
    assert held(md) == {("meta_data.json hostname", "hostname")}


def test_keys_from_public_keys_and_keys_are_merged_in_order() -> None:
    md = parse_openstack(
        files(
            with_meta(
                public_keys={"laptop": ED25519, "ci": f"{RSA}\n{ECDSA}\n"},
                keys=[
                    {"name": "laptop", "type": "ssh", "data": ED25519},
                    {"name": "bob", "type": "ssh", "data": ED25519_BOB},
                    {"name": "cert", "type": "x509", "data": "-----BEGIN CERTIFICATE-----"},
                ],
            )
        )
    )
    assert keys(md) == [(None, ED25519), (None, RSA), (None, ECDSA), (None, ED25519_BOB)]
    assert md.rejections == ()


def test_a_bad_line_listed_in_public_keys_and_keys_is_refused_once() -> None:
    """Nova lists each key pair in both; a text of many lines (some bad) is read once."""
    bad = [f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{n:03d}cut" for n in range(50)]
    text = "\n".join([*bad, ED25519, ED25519])
    md = parse_openstack(
        files(with_meta(public_keys={"flood": text}, keys=[{"name": "flood", "type": "ssh", "data": text}]))
    )
    assert keys(md) == [(None, ED25519)]
    assert len(md.rejections) == len(bad)
    assert all(r.where.startswith("meta_data.json public_keys entry 1") for r in md.rejections)


def test_a_bad_key_line_is_rejected_and_the_others_kept() -> None:
    md = parse_openstack(files(with_meta(public_keys={"a": "ssh-rsa AAAA truncated", "b": ED25519}, keys=[])))
    assert keys(md) == [(None, ED25519)]
    [rejection] = md.rejections
    assert (rejection.concerns, rejection.holds) == ("accounts", False)
    assert rejection.where.startswith("meta_data.json public_keys entry 1")
    assert "AAAA" not in rejection.describe()


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("public_keys", [ED25519], "meta_data.json public_keys"),
        ("public_keys", ED25519, "meta_data.json public_keys"),
        ("public_keys", {"a": ED25519, "b": 5}, "meta_data.json public_keys entry 2"),
        ("keys", {"name": "a"}, "meta_data.json keys"),
        ("keys", [ED25519], "meta_data.json keys[0]"),
        ("keys", [{"name": "a", "type": "ssh", "data": ["x"]}], "meta_data.json keys[0] data"),
    ],
)
def test_keys_of_the_wrong_type_hold_accounts(field: str, value: object, where: str) -> None:
    md = parse_openstack(files(with_meta(**{field: value})))
    assert (where, "accounts") in held(md)
    # What could be read is still reported (the accounts subsystem keeps its state anyway).
    assert all(k.user is None for k in md.ssh_keys)


def test_more_keys_than_the_bound_hold_accounts() -> None:
    many = {f"k{n}": f"{ED25519[: -len('ed25519@example')]}key{n}" for n in range(MAX_KEYS + 5)}
    md = parse_openstack(files(with_meta(public_keys=many, keys=[])))
    assert len(md.ssh_keys) == MAX_KEYS
    assert ("meta_data.json keys", "accounts") in held(md)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        (b"", "not valid JSON"),
        (b"<html><body>Sign in</body></html>", "not valid JSON"),
        (b'{"uuid": "x"', "not valid JSON"),
        (b"[" * 1000 + b"]" * 1000, "nested deeper than"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "a JSON array, not an object"),
        (b'"uuid"', "a JSON string, not an object"),
        (b"{}", "has no uuid"),
        (b'{"uuid": 5}', "uuid is a JSON number"),
        (b'{"uuid": "two words"}', "not one printable word"),
        (Unreadable("meta_data.json is larger than 1048576 bytes"), "larger than"),
        (None, "there is no meta_data.json"),
    ],
)
def test_meta_data_that_cannot_describe_an_instance_is_refused(meta: object, reason: str) -> None:
    with pytest.raises(OpenStackError, match=reason):
        parse_openstack(OpenStackFiles(meta_data=meta))  # type: ignore[arg-type]


def test_something_else_than_the_transports_files_is_refused() -> None:
    with pytest.raises(OpenStackError, match="expected what the OpenStack transport read"):
        parse_openstack(NOVA_META_DATA)


def test_wrong_typed_extras_are_rejected_for_instance_setup_and_never_hold() -> None:
    md = parse_openstack(
        files(with_meta(availability_zone=5, project_id=["p"], meta={"a": "b", "n": 3, "l": [1]}))
    )
    extras = openstack(md)
    assert (extras.availability_zone, extras.project_id, dict(extras.meta)) == ("", "", {"a": "b"})
    assert {(r.where, r.concerns, r.holds) for r in md.rejections} == {
        ("meta_data.json availability_zone", "instance_setup", False),
        ("meta_data.json project_id", "instance_setup", False),
        ("meta_data.json meta", "instance_setup", False),
    }


def test_other_platforms_have_empty_openstack_extras() -> None:
    assert openstack(InstanceMetadata(platform="gce", instance_id="1")) is NO_EXTRAS


# ------------------------------------------------------------------ network_data.json


def test_novas_documented_dhcp_network() -> None:
    md = parse_openstack(files(network=NOVA_NETWORK_DHCP))
    assert md.network_interfaces == (NetworkInterface(mac="fa:16:3e:9c:bf:3d"),)
    assert md.dns_servers == ("8.8.8.8",)
    assert md.rejections == ()
    assert openstack(md).network_data["links"][0]["type"] == "bridge"  # type: ignore[index]


def test_novas_documented_static_bonded_and_vlan_networks() -> None:
    md = parse_openstack(files(network=NOVA_NETWORK_STATIC))
    vif, eth0, eth1 = md.network_interfaces
    assert vif == NetworkInterface(mac="a0:36:9f:2c:e8:70", mtu=1500)
    assert eth0 == NetworkInterface(
        mac="a0:36:9f:2c:e8:80",
        ip="10.184.0.244",
        prefix_length=20,
        ipv6=("2001:cdba::3257:9652",),
        gateway="23.253.157.1",
        gateway6="fd00::1",
        mtu=9000,
        static=True,
        addresses=("10.184.0.244/20", "2001:cdba::3257:9652/24"),
        routes=(Route("10.0.0.0/8", "11.0.0.1"), Route("::/48", "fd00::1:1")),
    )
    assert eth1 == NetworkInterface(mac="a0:36:9f:2c:e8:81", mtu=9000)
    assert md.dns_servers == ("8.8.8.8", "8.8.4.4")
    # The VLAN's network is refused on its own (the agent configures no VLANs); the rest applies.
    [rejection] = md.rejections
    assert (rejection.where, rejection.concerns, rejection.holds) == (
        "network_data.json networks[2]",
        "network",
        False,
    )
    assert "vlan link" in rejection.reason


def test_a_static_network_with_dns_services() -> None:
    network = {
        "links": [{"id": "tap1", "type": "ovs", "ethernet_mac_address": "FA:16:3E:00:00:01", "mtu": 1450}],
        "networks": [
            {
                "id": "network0",
                "type": "ipv4",
                "link": "tap1",
                "ip_address": "192.0.2.10",
                "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"}],
                "services": [{"type": "dns", "address": "192.0.2.53"}, {"type": "ntp", "address": "x"}],
            },
            {
                "id": "network1",
                "type": "ipv6",
                "link": "tap1",
                "ip_address": "2001:db8::10",
                "netmask": "ffff:ffff:ffff:ffff::",
                "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}],
            },
        ],
        "services": [{"type": "dns", "address": "192.0.2.53"}, {"type": "dns", "address": "2001:db8::53"}],
    }
    md = parse_openstack(files(network=network))
    assert md.network_interfaces == (
        NetworkInterface(
            mac="fa:16:3e:00:00:01",
            ip="192.0.2.10",
            prefix_length=24,
            ipv6=("2001:db8::10",),
            gateway="192.0.2.1",
            gateway6="2001:db8::1",
            mtu=1450,
            dns_servers=("192.0.2.53",),
            static=True,
            addresses=("192.0.2.10/24", "2001:db8::10/64"),
        ),
    )
    assert md.dns_servers == ("192.0.2.53", "2001:db8::53")
    assert md.rejections == ()


@pytest.mark.parametrize(
    "kind", ["ipv4_dhcp", "ipv6_dhcp", "dhcp", "ipv6_slaac", "ipv6_dhcpv6-stateful", "ipv6_dhcpv6-stateless"]
)
def test_dhcp_and_autoconfigured_networks_leave_the_nic_to_dhcp(kind: str) -> None:
    network = {
        "links": [{"id": "tap1", "ethernet_mac_address": "fa:16:3e:00:00:01"}],
        "networks": [{"id": "n0", "type": kind, "link": "tap1"}],
    }
    [nic] = parse_openstack(files(network=network)).network_interfaces
    assert nic == NetworkInterface(mac="fa:16:3e:00:00:01")


def test_an_slaac_address_is_reported_but_not_configured() -> None:
    network = {
        "links": [{"id": "tap1", "ethernet_mac_address": "fa:16:3e:00:00:01"}],
        "networks": [
            {"id": "n0", "type": "ipv4_dhcp", "link": "tap1"},
            {
                "id": "n1",
                "type": "ipv6_slaac",
                "link": "tap1",
                "ip_address": "2001:db8::5",
                "netmask": "ffff:ffff:ffff:ffff::",
                "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}],
            },
        ],
    }
    [nic] = parse_openstack(files(network=network)).network_interfaces
    assert (nic.static, nic.addresses, nic.ipv6, nic.gateway6) == (False, (), ("2001:db8::5",), None)


@pytest.mark.parametrize(
    ("mask", "version", "prefix"),
    [
        ("255.255.255.0", 4, 24),
        ("255.255.240.0", 4, 20),
        ("0.0.0.0", 4, 0),
        ("255.255.255.255", 4, 32),
        ("24", 4, 24),
        (24, 4, 24),
        ("ffff:ffff:ffff:ffff::", 6, 64),
        ("ffff:ffff:ffff:ffff:0:0:0:0", 6, 64),
        ("::", 6, 0),
        ("64", 6, 64),
    ],
)
def test_netmask_prefix(mask: object, version: int, prefix: int) -> None:
    assert netmask_prefix(mask, version) == prefix


@pytest.mark.parametrize(
    ("mask", "version", "reason"),
    [
        ("0.0.0.255", 4, "not contiguous"),  # a host mask
        ("255.0.255.0", 4, "not contiguous"),
        ("33", 4, "out of range"),
        (-1, 4, "out of range"),
        ("129", 6, "out of range"),
        ("ffff::", 4, "an IPv6 netmask for an IPv4 address"),
        ("255.255.255.0", 6, "an IPv4 netmask for an IPv6 address"),
        (True, 4, "not a boolean"),
        (None, 4, "not a null"),
        ("mask", 4, "does not appear to be an IPv4 or IPv6 address"),
        ("ffff::%eth0", 6, "scoped"),
    ],
)
def test_netmask_prefix_refuses_what_is_no_netmask(mask: object, version: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        netmask_prefix(mask, version)


def _one_static(**network: object) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "n0",
        "type": "ipv4",
        "link": "tap1",
        "ip_address": "192.0.2.10",
        "netmask": "255.255.255.0",
    }
    base.update(network)
    return {"links": [{"id": "tap1", "ethernet_mac_address": "fa:16:3e:00:00:01"}], "networks": [base]}


@pytest.mark.parametrize(
    ("network", "where"),
    [
        ([], "network_data.json"),
        ({"links": {"id": "tap1"}}, "network_data.json links"),
        ({"links": ["tap1"]}, "network_data.json links[0]"),
        ({"links": [{"id": 5}]}, "network_data.json links[0].id"),
        (
            {"links": [{"id": "a", "ethernet_mac_address": "fa:16:3e"}]},
            "network_data.json links[0].ethernet_mac_address",
        ),
        (
            {"links": [{"id": "a", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": "1500"}]},
            "network_data.json links[0].mtu",
        ),
        (
            {"links": [{"id": "a", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 10}]},
            "network_data.json links[0].mtu",
        ),
        ({"links": [{"id": "a"}, {"id": "a"}]}, "network_data.json links[1].id"),
        ({"networks": {"a": 1}}, "network_data.json networks"),
        ({"services": "8.8.8.8"}, "network_data.json services"),
        ({"services": [{"type": "dns", "address": "eight"}]}, "network_data.json services[0].address"),
        (_one_static(ip_address=["192.0.2.10"]), "network_data.json networks[0].ip_address"),
        (_one_static(ip_address="192.0.2.300"), "network_data.json networks[0].ip_address"),
        (_one_static(ip_address=None), "network_data.json networks[0].ip_address"),
        (_one_static(netmask="0.255.255.255"), "network_data.json networks[0].netmask"),
        (_one_static(netmask=None), "network_data.json networks[0].netmask"),
        (_one_static(routes={"network": "0.0.0.0"}), "network_data.json networks[0].routes"),
        (
            _one_static(routes=[{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "fd00::1"}]),
            "network_data.json networks[0].routes[0].gateway",
        ),
        (
            _one_static(routes=[{"network": "10.0.0.0", "gateway": "192.0.2.1"}]),
            "network_data.json networks[0].routes[0].netmask",
        ),
        (
            _one_static(services=[{"type": "dns", "address": 8}]),
            "network_data.json networks[0].services[0].address",
        ),
        (_one_static(type=4), "network_data.json networks[0].type"),
        (_one_static(dns_nameservers="192.0.2.53"), "network_data.json networks[0].dns_nameservers"),
        (_one_static(dns_nameservers=["ns1"]), "network_data.json networks[0].dns_nameservers[0]"),
        (
            {"links": [{"id": "a", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": False}]},
            "network_data.json links[0].mtu",
        ),
    ],
)
def test_unreadable_network_data_holds_the_network_nics_and_hostname(network: object, where: str) -> None:
    md = parse_openstack(files(network=network))
    assert held(md) == network_held(where)
    assert (md.network_interfaces, md.dns_servers) == ((), ())
    # Everything else is still read.
    assert keys(md) == [(None, RSA)]
    assert md.hostname == "test.novalocal"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"[" * 100, "nested deeper than 64 levels"),
        (Unreadable("network_data.json is larger than 1048576 bytes (2000000 bytes)"), "larger than"),
    ],
)
def test_an_undecodable_network_data_holds_the_network(raw: object, reason: str) -> None:
    md = parse_openstack(files(network=raw))
    assert held(md) == network_held("network_data.json")
    assert all(reason in r.reason for r in md.rejections)


def test_too_many_links_hold_the_network() -> None:
    links = [
        {"id": f"l{n}", "ethernet_mac_address": f"fa:16:3e:00:{n // 256:02x}:{n % 256:02x}"}
        for n in range(MAX_LINKS + 1)
    ]
    md = parse_openstack(files(network={"links": links}))
    assert held(md) == network_held("network_data.json links")


@pytest.mark.parametrize(
    ("network", "reason"),
    [
        ({"id": "n0", "type": "ipv4", "link": "nowhere"}, "names link 'nowhere', which is not listed"),
        ({"id": "n0", "type": "ipv5", "link": "tap1"}, "has type 'ipv5', which the agent does not know"),
        ({"id": "n0", "link": "tap1"}, "has no type"),
        ({"id": "n0", "type": "ipv4"}, "has no link"),
        ({"id": "n0", "type": "ipv4_dhcp", "link": "bond0"}, "is on a bond link"),
    ],
)
def test_a_network_the_agent_does_not_handle_is_refused_alone(network: dict[str, Any], reason: str) -> None:
    document = {
        "links": [
            {"id": "tap1", "ethernet_mac_address": "fa:16:3e:00:00:01"},
            {"id": "bond0", "type": "bond", "bond_links": ["tap1"]},
        ],
        "networks": [network, _one_static()["networks"][0]],
    }
    md = parse_openstack(files(network=document))
    [rejection] = md.rejections
    assert (rejection.where, rejection.concerns, rejection.holds) == (
        "network_data.json networks[0]",
        "network",
        False,
    )
    assert reason in rejection.reason
    [nic] = md.network_interfaces
    assert nic.addresses == ("192.0.2.10/24",)


def test_two_links_with_one_mac_are_one_nic() -> None:
    document = {
        "links": [
            {"id": "a", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1400},
            {"id": "b", "ethernet_mac_address": "FA-16-3E-00-00-01"},
        ],
        "networks": [_one_static()["networks"][0] | {"link": "b"}],
    }
    [nic] = parse_openstack(files(network=document)).network_interfaces
    assert (nic.mac, nic.mtu, nic.addresses) == ("fa:16:3e:00:00:01", 1400, ("192.0.2.10/24",))


def test_dns_nameservers_on_a_network_and_an_mtu_of_zero() -> None:
    document = _one_static(
        dns_nameservers=["192.0.2.53", "192.0.2.54"], services=[{"type": "dns", "address": "192.0.2.54"}]
    )
    document["links"][0]["mtu"] = 0
    [nic] = parse_openstack(files(network=document)).network_interfaces
    assert (nic.dns_servers, nic.mtu) == (("192.0.2.54", "192.0.2.53"), None)


def test_an_address_with_its_prefix_and_a_numeric_netmask() -> None:
    document = _one_static(ip_address="192.0.2.10/26", netmask=None)
    assert parse_openstack(files(network=document)).network_interfaces[0].addresses == ("192.0.2.10/26",)
    document = _one_static(netmask="25")
    assert parse_openstack(files(network=document)).network_interfaces[0].addresses == ("192.0.2.10/25",)
    document = _one_static(netmask=None, prefix=27)
    assert parse_openstack(files(network=document)).network_interfaces[0].addresses == ("192.0.2.10/27",)


# ------------------------------------------------------------------ user data and vendor data


def test_user_data_and_both_vendor_documents_are_kept_apart() -> None:
    md = parse_openstack(
        files(
            user_data=b"#!/bin/sh\necho user\n",
            vendor_data={"cloud-init": "#cloud-config\npackages: [htop]\n", "other": {"x": 1}},
            vendor_data2={"static": {"a": 1}, "dynamic-service": {"cloud-init": "#cloud-config\n"}},
        )
    )
    assert md.user_data == b"#!/bin/sh\necho user\n"
    assert md.vendor_data == b"#cloud-config\npackages: [htop]\n"
    extras = openstack(md)
    assert extras.vendor_data["other"]["x"] == 1  # type: ignore[index]
    assert extras.vendor_data2["dynamic-service"]["cloud-init"] == "#cloud-config\n"  # type: ignore[index]
    assert md.rejections == ()


@pytest.mark.parametrize(
    ("vendor", "vendor2", "expected"),
    [
        ("#!/bin/sh\n", None, b"#!/bin/sh\n"),  # the document itself may be the payload
        ({}, {"cloud-init": "#cloud-config\n"}, b"#cloud-config\n"),  # vendor_data2 when vendor_data has none
        ({"cloud-init": "a"}, {"cloud-init": "b"}, b"a"),
        ({"something": "else"}, None, None),
    ],
)
def test_the_neutral_vendor_data(vendor: object, vendor2: object, expected: bytes | None) -> None:
    md = parse_openstack(files(vendor_data=vendor, vendor_data2=vendor2))
    assert md.vendor_data == expected


def test_a_cloud_init_member_that_is_not_a_string_is_kept_in_the_extras_only() -> None:
    md = parse_openstack(files(vendor_data={"cloud-init": ["part1", "part2"]}))
    assert md.vendor_data is None
    assert openstack(md).vendor_data["cloud-init"] == ("part1", "part2")  # type: ignore[index]
    assert [(r.where, r.concerns, r.holds) for r in md.rejections] == [
        ("vendor_data.json cloud-init", "scripts", False)
    ]


@pytest.mark.parametrize(
    ("name", "holds"),
    [
        ("user_data", {("user_data", "scripts"), ("user_data", "firstboot")}),
        ("vendor_data", {("vendor_data.json", "scripts")}),
        ("vendor_data2", {("vendor_data2.json", "scripts")}),
    ],
)
def test_unreadable_user_or_vendor_data_holds_only_what_reads_it(
    name: str, holds: set[tuple[str, str]]
) -> None:
    md = parse_openstack(files(**{name: Unreadable(f"{name} is larger than 1048576 bytes")}))
    assert held(md) == holds
    assert keys(md) == [(None, RSA)]


def test_vendor_data_that_is_not_json_holds_scripts() -> None:
    md = parse_openstack(files(vendor_data=b"#cloud-config\n"))
    assert held(md) == {("vendor_data.json", "scripts")}


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("dmi", "reason"),
    [
        (
            {"sys_vendor": "OpenStack Foundation", "product_name": "OpenStack Nova"},
            "DMI product_name is 'OpenStack Nova'",
        ),
        (
            {"sys_vendor": "Red Hat", "product_name": "OpenStack Compute"},
            "DMI product_name is 'OpenStack Compute'",
        ),
        (
            {"sys_vendor": "OpenStack Foundation", "product_name": "KVM"},
            "DMI sys_vendor is 'OpenStack Foundation'",
        ),
        (
            {"product_name": "Standard PC", "chassis_asset_tag": "OpenStack Nova\n"},
            "DMI chassis_asset_tag is 'OpenStack Nova'",
        ),
        ({"chassis_asset_tag": "OpenTelekomCloud"}, "DMI chassis_asset_tag is 'OpenTelekomCloud'"),
        ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, None),
        ({"product_name": "Google Compute Engine"}, None),
        ({}, None),
    ],
)
def test_dmi_hint(dmi: dict[str, str], reason: str | None) -> None:
    assert dmi_says_openstack(dmi) == reason


# ------------------------------------------------------------------ property


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            ED25519,
            RSA,
            "ssh-rsa AAAA",
            "fa:16:3e:00:00:01",
            "192.0.2.1",
            "2001:db8::1",
            "255.255.255.0",
            "0.0.0.0",
            "::",
            "ffff:ffff::",
            "24",
            "tap1",
            "ipv4",
            "ipv6",
            "ipv4_dhcp",
            "ipv6_slaac",
            "dns",
            "bond",
            "vlan",
            "fe80::1%eth0",
            "192.0.2.1/24",
            UUID,
        ]
    )
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


def _shaped(fields: list[str]) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(st.sampled_from(fields), _json, max_size=len(fields))


_routes = st.lists(_shaped(["network", "netmask", "gateway"]), max_size=3)
_networks = st.lists(
    _shaped(["id", "type", "link", "ip_address", "netmask", "prefix", "services"]).flatmap(
        lambda d: _routes.map(lambda r: {**d, "routes": r})
    ),
    max_size=4,
)
_links = st.lists(_shaped(["id", "type", "ethernet_mac_address", "mtu", "vlan_mac_address"]), max_size=4)
_network_data = st.fixed_dictionaries(
    {}, optional={"links": _links | _json, "networks": _networks | _json, "services": _json}
)
_meta = st.fixed_dictionaries(
    {},
    optional={
        "uuid": _json,
        "hostname": _json,
        "name": _json,
        "public_keys": _json,
        "keys": _json,
        "meta": _json,
        "availability_zone": _json,
        "project_id": _json,
        "random_seed": _json,
    },
)
_file = st.none() | st.binary(max_size=40) | _json.map(lambda v: json.dumps(v).encode())


@settings(max_examples=400, deadline=None)
@given(meta=_meta | _json, network=_network_data | _json, vendor=_json, vendor2=_json)
def test_any_document_is_parsed_or_refused_with_the_parsers_error(
    meta: object, network: object, vendor: object, vendor2: object
) -> None:
    with contextlib.suppress(OpenStackError):
        md = parse_openstack(
            OpenStackFiles(
                meta_data=json.dumps(meta).encode(),
                network_data=json.dumps(network).encode(),
                vendor_data=json.dumps(vendor).encode(),
                vendor_data2=json.dumps(vendor2).encode(),
            )
        )
        assert md.instance_id.strip() == md.instance_id != ""
        assert all(k.user is None for k in md.ssh_keys)
        for nic in md.network_interfaces:
            assert nic.static or not nic.addresses


@settings(max_examples=200, deadline=None)
@given(meta=_file, network=_file, user=_file, vendor=_file, vendor2=_file)
def test_any_bytes_are_parsed_or_refused_with_the_parsers_error(
    meta: bytes | None, network: bytes | None, user: bytes | None, vendor: bytes | None, vendor2: bytes | None
) -> None:
    with contextlib.suppress(OpenStackError):
        parse_openstack(OpenStackFiles(meta, network, user, vendor, vendor2))
