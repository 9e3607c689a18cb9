"""DigitalOcean's pure parser, fed with v1.json documents written out as DigitalOcean documents
them (the Droplet Metadata API's own examples), plus the variations real droplets answer
with, and the pure helpers of the link-local bootstrap."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata, Rejection
from guestagent.domain.nics import Link
from guestagent.domain.platforms.digitalocean import (
    DATA_MAX,
    DigitalOceanExtras,
    DigitalOceanMetadataError,
    bootstrap_link,
    digitalocean,
    dmi_says_digitalocean,
    has_own_ipv4,
    link_local_address,
    netmask_prefix,
    parse_digitalocean,
)
from tests.keys import ED25519, ED25519_BOB

# The example key of DigitalOcean's metadata API reference (`/metadata/v1/public-keys`).
SAMMY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCcbi6cygCUmuNlB0KqzBpHXf7CFYb3VE4pDOf/RLJ8OFDjOM+fjF83"
    "a24QktSVIpQnHYpJJT2pQMBxD+ZmnhTbKv+OjwHSHwAfkBullAojgZKzz+oN35P4Ea4J78AvMrHw0zp5MknS+WKEDCA2"
    "c6iDRCq6/hZ13Mn64f6c372JK99X29lj/B4VQpKCQyG8PUSTFkb5DXTETGbzuiVft+vM6SF+0XZH9J6dQ7b4yD3sOder"
    "+M0Q7I7CJD4VpdVD/JFa2ycOS4A4dZhjKXzabLQXdkWHvYGgNPGA5lI73TcLUAueUYqdq3RrDRfaQ5Z0PEw0mDllCzhk"
    "5dQpkmmqNi0F sammy@digitalocean.com"
)
PUBLIC_MAC = "04:01:2a:0f:2a:01"
PRIVATE_MAC = "04:01:2a:0f:2a:02"

# The Droplet Metadata API reference's example values, put together as v1.json answers them
# (droplet_id, hostname, vendor_data, public_keys, region, interfaces, floating_ip, dns,
# features; the anchor address as in the `anchor_ipv4` examples, tags as in `/tags`).
DOCUMENTED = (
    """{
  "droplet_id": 2756294,
  "hostname": "sample-droplet",
  "vendor_data": "#cloud-config\\ndisable_root: false\\nmanage_etc_hosts: true\\n",
  "user_data": "#! /bin/bash\\necho \\"Data from user\\"\\n",
  "public_keys": ["SAMMY"],
  "auth_key": "88888888888888888888888888888888",
  "region": "nyc3",
  "interfaces": {
    "public": [
      {
        "ipv4": {"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": "104.131.0.1"},
        "ipv6": {
          "ip_address": "2604:A880:0800:0010:0000:0000:017D:2001",
          "cidr": 64,
          "gateway": "2604:A880:0800:0010:0000:0000:0000:0001"
        },
        "anchor_ipv4": {"ip_address": "10.17.0.160", "netmask": "255.255.0.0", "gateway": "10.17.0.1"},
        "mac": "04:01:2a:0f:2a:01",
        "type": "public"
      }
    ],
    "private": [
      {
        "ipv4": {"ip_address": "10.132.6.205", "netmask": "255.255.0.0", "gateway": "10.132.0.1"},
        "mac": "04:01:2a:0f:2a:02",
        "type": "private"
      }
    ]
  },
  "floating_ip": {"ipv4": {"active": false}},
  "reserved_ip": {"ipv4": {"active": false}, "ipv6": {"active": false}},
  "dns": {"nameservers": ["2001:4860:4860::8844", "2001:4860:4860::8888", "8.8.8.8"]},
  "tags": ["production", "application", "v1"],
  "features": {"dhcp_enabled": false}
}"""
).replace("SAMMY", SAMMY)


def documented() -> dict[str, Any]:
    document = json.loads(DOCUMENTED)
    assert isinstance(document, dict)
    return document


def parse(**changes: Any) -> InstanceMetadata:
    document = documented()
    document.update(changes)
    return parse_digitalocean(document)


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


def concerns_held(md: InstanceMetadata) -> set[str]:
    return {r.concerns for r in md.rejections if r.holds}


def test_documented_droplet() -> None:
    md = parse_digitalocean(documented())
    assert md.platform == "digitalocean"
    assert md.instance_id == "2756294"
    assert md.hostname == "sample-droplet"
    assert [(k.user, k.line) for k in md.ssh_keys] == [(None, SAMMY)]
    assert md.users() == frozenset()  # DigitalOcean's keys are the default user's
    assert md.user_data == b'#! /bin/bash\necho "Data from user"\n'
    assert md.vendor_data == b"#cloud-config\ndisable_root: false\nmanage_etc_hosts: true\n"
    assert md.dns_servers == ("2001:4860:4860::8844", "2001:4860:4860::8888", "8.8.8.8")
    assert md.rejections == ()

    public, private = md.network_interfaces
    assert public.mac == PUBLIC_MAC and public.static
    assert (public.ip, public.prefix_length, public.gateway) == ("104.131.20.105", 18, "104.131.0.1")
    assert public.ipv6 == ("2604:a880:800:10::17d:2001",)
    assert public.gateway6 == "2604:a880:800:10::1"
    # The anchor address is the platform's: never one to configure.
    assert public.addresses == ("104.131.20.105/18", "2604:a880:800:10::17d:2001/64")
    assert private.mac == PRIVATE_MAC and private.static
    assert private.addresses == ("10.132.6.205/16",)
    # A private interface's gateway is not a default route.
    assert (private.gateway, private.gateway6) == (None, None)

    assert digitalocean(md) == DigitalOceanExtras(
        droplet_id=2756294,
        region="nyc3",
        tags=("production", "application", "v1"),
        features=frozenset(),
        floating_ip=None,
        anchor_ipv4="10.17.0.160/16",
    )
    assert digitalocean(md).dhcp_enabled is False  # type: ignore[union-attr]


def test_active_floating_and_reserved_ips_are_extras_never_addresses() -> None:
    md = parse(
        floating_ip={"ipv4": {"active": True, "ip_address": "45.55.96.17"}},
        reserved_ip={
            "ipv4": {"active": True, "ip_address": "45.55.96.17"},
            "ipv6": {"active": True, "ip_address": "2604:A880:0800:0010:0000:0000:017D:2002"},
        },
        features={"dhcp_enabled": True},
    )
    extras = digitalocean(md)
    assert extras is not None
    assert extras.floating_ip == "45.55.96.17"
    assert extras.reserved_ipv6 == "2604:a880:800:10::17d:2002"
    assert extras.dhcp_enabled
    every_address = {a for nic in md.network_interfaces for a in nic.addresses}
    assert not any(a.startswith(("45.55.96.17/", "10.17.0.160/")) for a in every_address)
    # Only the reserved name (newer droplets) says it: same address.
    md = parse(reserved_ip={"ipv4": {"active": True, "ip_address": "45.55.96.18"}})
    assert digitalocean(md).floating_ip == "45.55.96.18"  # type: ignore[union-attr]


def test_real_droplet_variations() -> None:
    # From droplets (cloud-init's fixtures): the id as a string, one key as a string,
    # tags null, no user data, no private interface.
    md = parse(
        droplet_id="22532410",
        public_keys=ED25519 + "\n" + ED25519_BOB,
        tags=None,
        user_data=None,
        interfaces={"public": documented()["interfaces"]["public"]},
    )
    assert md.instance_id == "22532410"
    assert [k.line for k in md.ssh_keys] == [ED25519, ED25519_BOB]
    assert md.user_data is None
    assert [n.mac for n in md.network_interfaces] == [PUBLIC_MAC]
    assert digitalocean(md).tags == ()  # type: ignore[union-attr]
    assert md.rejections == ()


def test_missing_optional_fields() -> None:
    md = parse_digitalocean({"droplet_id": 7})
    assert (md.instance_id, md.hostname, md.ssh_keys, md.network_interfaces) == ("7", "", (), ())
    assert (md.user_data, md.vendor_data, md.dns_servers, md.rejections) == (None, None, (), ())
    assert digitalocean(md) == DigitalOceanExtras(droplet_id=7)


def test_empty_user_and_vendor_data_are_none() -> None:
    md = parse(user_data="", vendor_data="")
    assert (md.user_data, md.vendor_data) == (None, None)


def test_primary_is_the_first_private_nic_without_a_public_one() -> None:
    private = documented()["interfaces"]["private"]
    md = parse(interfaces={"public": [], "private": private})
    [nic] = md.network_interfaces
    assert nic.mac == PRIVATE_MAC and nic.gateway is None


def test_empty_gateways_are_none() -> None:
    document = documented()
    document["interfaces"]["public"][0]["ipv4"]["gateway"] = ""
    document["interfaces"]["public"][0]["ipv6"]["gateway"] = ""
    public = parse_digitalocean(document).network_interfaces[0]
    assert (public.gateway, public.gateway6) == (None, None)


def test_ipv6_cidr_as_text_like_the_text_tree() -> None:
    document = documented()
    document["interfaces"]["public"][0]["ipv6"]["cidr"] = "64"
    assert parse_digitalocean(document).network_interfaces[0].addresses[1].endswith("/64")


def test_duplicate_keys_are_installed_once() -> None:
    md = parse(public_keys=[ED25519, ED25519])
    assert [k.line for k in md.ssh_keys] == [ED25519]


# -- refusals and holds ---------------------------------------------------------------------------


def test_a_bad_key_is_rejected_and_the_others_apply() -> None:
    md = parse(public_keys=["ssh-ed25519 AAAA-truncated", ED25519])
    assert [k.line for k in md.ssh_keys] == [ED25519]
    [rejection] = md.rejections
    assert rejection.where == "public_keys key 1" and not rejection.holds
    assert rejection.concerns == "accounts"
    assert "AAAA" not in rejection.reason


def test_an_entry_of_several_lines_is_read_line_by_line() -> None:
    bad = [f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{n:03d}cut" for n in range(3)]
    md = parse(public_keys=[ED25519, "\n".join([bad[0], ED25519_BOB, bad[1], ED25519_BOB, "", bad[2]])])
    assert [k.line for k in md.ssh_keys] == [ED25519, ED25519_BOB]
    assert [r.where for r in md.rejections] == [
        "public_keys key 2 line 1",
        "public_keys key 2 line 3",
        "public_keys key 2 line 6",
    ]
    assert not any(r.holds for r in md.rejections)


@pytest.mark.parametrize("keys", [{"0": ED25519}, 5, True])
def test_keys_of_the_wrong_type_hold_accounts(keys: object) -> None:
    md = parse(public_keys=keys)
    assert md.ssh_keys == ()
    assert held(md) == {("public_keys", "accounts")}


def test_a_key_entry_of_the_wrong_type_holds_accounts_but_keeps_the_others() -> None:
    md = parse(public_keys=[{"key": "x"}, ED25519])
    assert [k.line for k in md.ssh_keys] == [ED25519]
    assert held(md) == {("public_keys key 1", "accounts")}


@pytest.mark.parametrize("hostname", [["a"], 7, "two words", "bad\x00name"])
def test_unreadable_hostname_holds_hostname(hostname: object) -> None:
    md = parse(hostname=hostname)
    assert md.hostname == ""
    assert held(md) == {("hostname", "hostname")}


@pytest.mark.parametrize("interfaces", [[], "eth0", 1])
def test_interfaces_not_an_object_hold_every_network_subsystem(interfaces: object) -> None:
    md = parse(interfaces=interfaces)
    assert md.network_interfaces == ()
    assert concerns_held(md) == {"network", "nics", "hostname"}


def test_an_interface_list_of_the_wrong_type_holds_the_network() -> None:
    md = parse(interfaces={"public": {"0": {}}, "private": []})
    assert md.network_interfaces == ()
    assert held(md) == {("interfaces/public", "network"), ("interfaces/public", "nics"),
                        ("interfaces/public", "hostname")}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ipv4", "104.131.20.105"),
        ("ipv4", {"ip_address": "104.131.20.105", "netmask": 18}),
        ("ipv4", {"ip_address": "104.131.20.105", "netmask": "0.0.63.255"}),  # a host mask
        ("ipv4", {"ip_address": "2604:a880::1", "netmask": "255.255.192.0"}),
        ("ipv4", {"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": 1}),
        ("ipv4", {"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": "2604::1"}),
        ("ipv6", {"ip_address": "2604:a880::1", "cidr": "sixty-four"}),
        ("ipv6", {"ip_address": "2604:a880::1", "cidr": 129}),
        ("ipv6", {"ip_address": "104.131.20.105", "cidr": 64}),
        ("ipv6", {"ip_address": "fe80::1%eth0", "cidr": 64}),
        ("mac", "not-a-mac"),
        ("mac", None),
    ],
)
def test_a_garbled_public_interface_holds_every_network_subsystem(field: str, value: object) -> None:
    document = documented()
    document["interfaces"]["public"][0][field] = value
    md = parse_digitalocean(document)
    assert concerns_held(md) == {"network", "nics", "hostname"}
    assert {r.where for r in md.rejections} == {"interfaces/public/0"}
    # The readable private NIC is still described (the held subsystems keep their state anyway).
    assert [n.mac for n in md.network_interfaces] == [PRIVATE_MAC]


def test_a_garbled_private_interface_holds_only_the_network() -> None:
    document = documented()
    document["interfaces"]["private"][0]["ipv4"] = ["10.132.6.205"]
    md = parse_digitalocean(document)
    assert held(md) == {("interfaces/private/0", "network")}
    assert [n.mac for n in md.network_interfaces] == [PUBLIC_MAC]


def test_an_interface_that_is_not_an_object_holds_the_network() -> None:
    md = parse(interfaces={"public": ["eth0"], "private": []})
    assert concerns_held(md) == {"network", "nics", "hostname"}


def test_one_mac_listed_twice_holds_the_network() -> None:
    document = documented()
    document["interfaces"]["private"][0]["mac"] = PUBLIC_MAC.upper()
    md = parse_digitalocean(document)
    assert [n.mac for n in md.network_interfaces] == [PUBLIC_MAC]
    assert held(md) == {("interfaces/private/0", "network")}


def test_a_garbled_anchor_is_not_a_hold() -> None:
    document = documented()
    document["interfaces"]["public"][0]["anchor_ipv4"] = {"ip_address": "x"}
    md = parse_digitalocean(document)
    assert md.rejections == ()
    assert digitalocean(md).anchor_ipv4 is None  # type: ignore[union-attr]


def test_a_mislabelled_type_is_logged_not_held() -> None:
    document = documented()
    document["interfaces"]["private"][0]["type"] = "public"
    md = parse_digitalocean(document)
    [rejection] = md.rejections
    assert rejection.where == "interfaces/private/0/type" and not rejection.holds
    assert md.network_interfaces[1].gateway is None  # still read as the private NIC it is listed as


@pytest.mark.parametrize(
    ("dns", "where"), [("8.8.8.8", "dns"), ({"nameservers": "8.8.8.8"}, "dns/nameservers")]
)
def test_dns_of_the_wrong_type_holds_the_network(dns: object, where: str) -> None:
    md = parse(dns=dns)
    assert md.dns_servers == ()
    assert held(md) == {(where, "network")}


def test_a_bad_nameserver_is_refused_and_the_others_apply() -> None:
    md = parse(dns={"nameservers": ["8.8.8.8", "dns.example", 7, "8.8.8.8"]})
    assert md.dns_servers == ("8.8.8.8",)
    assert [(r.where, r.holds) for r in md.rejections] == [
        ("dns/nameservers entry 2", False),
        ("dns/nameservers entry 3", False),
    ]


@pytest.mark.parametrize(
    ("field", "readers"), [("user_data", {"scripts", "firstboot"}), ("vendor_data", {"scripts"})]
)
def test_data_of_the_wrong_type_holds_what_reads_it(field: str, readers: set[str]) -> None:
    md = parse(**{field: {"runcmd": []}})
    assert getattr(md, field) is None
    assert held(md) == {(field, reader) for reader in readers}


@pytest.mark.parametrize(
    ("field", "readers"), [("user_data", {"scripts", "firstboot"}), ("vendor_data", {"scripts"})]
)
def test_data_over_digitaloceans_limit_holds_only_what_reads_it(field: str, readers: set[str]) -> None:
    md = parse(**{field: "#!/bin/sh\n" + "#" * DATA_MAX})
    assert getattr(md, field) is None
    assert held(md) == {(field, reader) for reader in readers}
    assert [k.line for k in md.ssh_keys] == [SAMMY]  # the keys of the same document apply
    assert parse(**{field: "#" * DATA_MAX}).rejections == ()  # the limit itself is allowed


def test_bad_extras_are_refusals_without_holds() -> None:
    md = parse(
        region=["nyc3"],
        tags=["ok", 7, "with space"],
        features={"dhcp_enabled": "yes", "other": True},
        floating_ip={"ipv4": {"active": True, "ip_address": "not-an-ip"}},
    )
    extras = digitalocean(md)
    assert extras == DigitalOceanExtras(
        droplet_id=2756294, tags=("ok",), features=frozenset({"other"}), anchor_ipv4="10.17.0.160/16"
    )
    assert md.rejections and not any(r.holds for r in md.rejections)
    assert all(isinstance(r, Rejection) and "\n" not in r.describe() for r in md.rejections)


@pytest.mark.parametrize(
    "droplet_id",
    [None, "", "abc", 0, -5, True, 1.5, "1" * 20, 2**63, 10**5000, [1], "١٢٣"],
    ids=range(12),
)
def test_no_usable_droplet_id_is_an_error(droplet_id: object) -> None:
    document = documented()
    document["droplet_id"] = droplet_id
    with pytest.raises(DigitalOceanMetadataError):
        parse_digitalocean(document)


@pytest.mark.parametrize("document", [None, [], "{}", 7])
def test_a_document_that_is_not_an_object_is_an_error(document: object) -> None:
    with pytest.raises(DigitalOceanMetadataError):
        parse_digitalocean(document)


def test_extras_of_another_platform_are_none() -> None:
    assert digitalocean(InstanceMetadata(platform="gce", instance_id="1")) is None


# -- helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "prefix"),
    [("255.255.255.255", 32), ("255.255.192.0", 18), ("255.255.240.0", 20), ("0.0.0.0", 0), ("255.0.0.0", 8)],
)
def test_netmask_prefix(mask: str, prefix: int) -> None:
    assert netmask_prefix(mask) == prefix


@pytest.mark.parametrize("mask", ["0.0.0.255", "255.0.255.0", "24", "255.255.255", ""])
def test_netmask_prefix_refuses_what_is_not_a_netmask(mask: str) -> None:
    with pytest.raises(ValueError, match="netmask"):
        netmask_prefix(mask)


def test_dmi_hint() -> None:
    assert dmi_says_digitalocean({"sys_vendor": "DigitalOcean\n", "product_name": "Droplet"})
    assert dmi_says_digitalocean({"sys_vendor": "QEMU"}) is None
    assert dmi_says_digitalocean({}) is None


@given(st.binary(min_size=6, max_size=6))
def test_link_local_address_is_usable_and_stable(raw: bytes) -> None:
    mac = ":".join(f"{b:02x}" for b in raw)
    address = link_local_address(mac)
    assert address == link_local_address(mac.upper())
    ip, prefix = address.split("/")
    a, b, x, y = (int(part) for part in ip.split("."))
    assert (a, b, prefix) == (169, 254, "16")
    assert 1 <= x <= 254 and 1 <= y <= 254 and x != 169  # RFC 3927's range, never the service's /24


def test_link_local_address_differs_between_nics() -> None:
    assert link_local_address(PUBLIC_MAC) != link_local_address(PRIVATE_MAC)
    with pytest.raises(ValueError, match="MAC"):
        link_local_address("")


LO = Link(index=1, name="lo", mac="00:00:00:00:00:00", up=True, ipv4=("127.0.0.1",))
ETH0 = Link(index=2, name="eth0", mac=PUBLIC_MAC, up=False)
ETH1 = Link(index=3, name="eth1", mac=PRIVATE_MAC, up=True)


def test_bootstrap_link_is_the_first_ethernet_link() -> None:
    assert bootstrap_link([ETH1, LO, ETH0]) == ETH0
    assert bootstrap_link([LO, Link(index=4, name="tun0", mac="", up=True)]) is None


def test_own_ipv4_means_a_routable_address_on_a_link_that_is_up() -> None:
    assert not has_own_ipv4([LO, ETH0, ETH1])
    # Someone else's link-local address reaches the service as well as ours would.
    assert has_own_ipv4([LO, attrs.evolve(ETH1, ipv4=("169.254.7.8",))])
    assert not has_own_ipv4([LO, attrs.evolve(ETH1, ipv4=("169.254.7.8",))], ignore="169.254.7.8/16")
    assert has_own_ipv4([Link(3, "eth1", PRIVATE_MAC, True, ("10.132.6.205",))])
    assert not has_own_ipv4([Link(3, "eth1", PRIVATE_MAC, False, ("10.132.6.205",))])
    assert not has_own_ipv4([Link(3, "eth1", PRIVATE_MAC, True, ("10.132.6.205",))], ignore="10.132.6.205/16")


# -- property: arbitrary input never crashes the parser ---------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
PATHS = [
    ("droplet_id",),
    ("hostname",),
    ("public_keys",),
    ("public_keys", 0),
    ("user_data",),
    ("vendor_data",),
    ("region",),
    ("tags",),
    ("features",),
    ("floating_ip",),
    ("reserved_ip", "ipv4"),
    ("dns",),
    ("dns", "nameservers"),
    ("interfaces",),
    ("interfaces", "public"),
    ("interfaces", "public", 0),
    ("interfaces", "public", 0, "mac"),
    ("interfaces", "public", 0, "ipv4"),
    ("interfaces", "public", 0, "ipv4", "netmask"),
    ("interfaces", "public", 0, "ipv6", "cidr"),
    ("interfaces", "public", 0, "anchor_ipv4"),
    ("interfaces", "private", 0),
    ("interfaces", "private", 0, "ipv4", "ip_address"),
]


def _put(document: Any, path: tuple[str | int, ...], value: object) -> None:
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), JSON), max_size=4))
def test_garbled_fields_only_ever_raise_the_parsers_error(
    changes: list[tuple[tuple[Any, ...], object]],
) -> None:
    document = documented()
    for path, value in changes:
        try:
            _put(document, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced the parent
    try:
        md = parse_digitalocean(document)
    except DigitalOceanMetadataError:
        assert any(path == ("droplet_id",) for path, _ in changes)
        return
    assert md.instance_id.isdigit()
    assert all("\n" not in k.line for k in md.ssh_keys)
    for nic in md.network_interfaces:
        assert nic.static
        for address in nic.addresses:
            ip, prefix = address.split("/")
            assert ip and prefix.isdigit()
    touched = {path[0] for path, _ in changes}
    if "public_keys" not in touched:
        assert [k.line for k in md.ssh_keys] == [SAMMY]
    if "interfaces" not in touched:
        assert [n.mac for n in md.network_interfaces] == [PUBLIC_MAC, PRIVATE_MAC]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(document=JSON)
def test_arbitrary_json_only_ever_raises_the_parsers_error(document: object) -> None:
    with contextlib.suppress(DigitalOceanMetadataError):
        parse_digitalocean(document)
