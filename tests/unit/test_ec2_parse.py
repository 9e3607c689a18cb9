"""EC2's pure parser, fed with IMDS answers written out by hand as AWS documents them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.ec2 import (
    Ec2Extras,
    Ec2Fetched,
    Ec2MetadataError,
    dmi_says_ec2,
    ec2,
    key_indices,
    mac_entries,
    parse_ec2,
)
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA

MAC0 = "0e:49:61:0f:c3:11"
MAC1 = "0e:49:61:0f:c3:77"
NIC = "network/interfaces/macs/"

# "Instance identity documents" in the EC2 user guide (values as there, with a valid instanceId).
IDENTITY = """{
    "accountId" : "0123456789",
    "architecture" : "x86_64",
    "availabilityZone" : "us-west-2b",
    "billingProducts" : null,
    "devpayProductCodes" : null,
    "marketplaceProductCodes" : [ "1abc2defghijklm3nopqrs4tu" ],
    "imageId" : "ami-5fb8c835",
    "instanceId" : "i-1234567890abcdef0",
    "instanceType" : "t2.micro",
    "kernelId" : null,
    "pendingTime" : "2016-11-19T16:32:11Z",
    "privateIp" : "10.158.112.84",
    "ramdiskId" : null,
    "region" : "us-west-2",
    "version" : "2017-09-30"
}"""


def nic(mac: str, device: str, ipv4s: str, block: str, ipv6s: str | None = None) -> dict[str, str]:
    out = {
        f"{NIC}{mac}/device-number": device,
        f"{NIC}{mac}/local-ipv4s": ipv4s,
        f"{NIC}{mac}/subnet-ipv4-cidr-block": block,
    }
    if ipv6s is not None:
        out[f"{NIC}{mac}/ipv6s"] = ipv6s
    return out


def documented(**extra: str) -> dict[str, str]:
    """The meta-data paths of a one-NIC instance with one key pair, as IMDS answers them."""
    return {
        "instance-id": "i-1234567890abcdef0",
        "local-hostname": "ip-10-251-50-12.ec2.internal",
        "hostname": "ip-10-251-50-12.ec2.internal",
        "mac": MAC0,
        "public-keys/": "0=my-public-key",
        "public-keys/0/openssh-key": ED25519 + "\n",
        NIC: MAC0 + "/",
        **nic(MAC0, "0", "10.251.50.12", "10.251.50.0/24"),
        **extra,
    }


def parse(
    meta: dict[str, str], user_data: bytes | None = None, identity: str | None = IDENTITY
) -> InstanceMetadata:
    return parse_ec2(Ec2Fetched(meta_data=meta, user_data=user_data, identity=identity))


def lines(md: InstanceMetadata) -> list[tuple[str | None, str]]:
    return [(k.user, k.line) for k in md.ssh_keys]


def test_documented_instance() -> None:
    md = parse(documented(), user_data=b"#!/bin/bash\necho hello\n")
    assert md.platform == "ec2"
    assert md.instance_id == "i-1234567890abcdef0"
    assert md.hostname == "ip-10-251-50-12.ec2.internal"
    assert lines(md) == [(None, ED25519)]
    assert md.users() == frozenset()  # the key is the default user's
    [eth0] = md.network_interfaces
    assert (eth0.mac, eth0.ip, eth0.prefix_length, eth0.ipv6) == (MAC0, "10.251.50.12", 24, ())
    assert md.user_data == b"#!/bin/bash\necho hello\n"
    assert md.rejections == ()
    assert ec2(md) == Ec2Extras(
        region="us-west-2",
        availability_zone="us-west-2b",
        instance_type="t2.micro",
        account_id="0123456789",
        image_id="ami-5fb8c835",
    )


def test_no_keys_and_no_user_data() -> None:
    meta = documented()
    del meta["public-keys/"], meta["public-keys/0/openssh-key"]  # both 404
    md = parse(meta, user_data=None)
    assert md.ssh_keys == ()
    assert md.user_data is None
    assert md.rejections == ()


def test_several_keys_in_listing_order() -> None:
    md = parse(
        documented(
            **{
                "public-keys/": "0=alice\n1=bob-ci\n2=ops",
                "public-keys/0/openssh-key": ED25519 + "\n",
                "public-keys/1/openssh-key": 'from="10.0.0.0/8",no-port-forwarding ' + RSA + "\n",
                "public-keys/2/openssh-key": ECDSA,
            }
        )
    )
    assert [line for _, line in lines(md)] == [
        ED25519,
        'from="10.0.0.0/8",no-port-forwarding ' + RSA,
        ECDSA,
    ]
    assert {k.user for k in md.ssh_keys} == {None}
    assert [k.key_type for k in md.ssh_keys] == ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"]


def test_a_bad_key_is_rejected_and_the_others_apply() -> None:
    md = parse(
        documented(
            **{
                "public-keys/": "0=good\n1=broken\n2=also-good",
                "public-keys/0/openssh-key": ED25519,
                "public-keys/1/openssh-key": "ssh-rsa not-base64!! oops",
                "public-keys/2/openssh-key": ED25519_BOB,
            }
        )
    )
    assert [line for _, line in lines(md)] == [ED25519, ED25519_BOB]
    [rejection] = md.rejections
    assert rejection.concerns == "accounts"
    assert not rejection.holds
    assert rejection.where.startswith("meta-data/public-keys/1/openssh-key")
    assert "not-base64" not in rejection.describe()  # no key material in logs


def test_garbled_key_listing_holds_accounts_but_keeps_readable_keys() -> None:
    md = parse(documented(**{"public-keys/": "0=good\n<html>portal</html>"}))
    assert lines(md) == [(None, ED25519)]
    assert md.held("accounts")
    assert md.held("accounts")[0].where == "meta-data/public-keys/ line 2"
    assert not md.held("hostname")


def test_listed_key_that_could_not_be_read_holds_accounts() -> None:
    meta = documented(**{"public-keys/": "0=a\n1=b"})  # 1/openssh-key answered 404
    md = parse(meta)
    assert lines(md) == [(None, ED25519)]
    [held] = md.held("accounts")
    assert held.where == "meta-data/public-keys/1/openssh-key"


def test_duplicate_keys_are_installed_once() -> None:
    md = parse(documented(**{"public-keys/": "0=a\n1=b", "public-keys/1/openssh-key": ED25519}))
    assert lines(md) == [(None, ED25519)]


def test_interfaces_by_mac_primary_first_then_device_number() -> None:
    mac2 = "0e:49:61:0f:c3:22"
    meta = documented(
        mac=MAC1,  # the instance's primary NIC is not the first one listed
        **{NIC: f"{MAC0}/\n{mac2}/\n{MAC1}/"},
        **nic(MAC0, "2", "10.0.2.5", "10.0.2.0/24"),
        **nic(mac2, "1", "10.0.1.5\n10.0.1.6", "10.0.1.0/24", ipv6s="2600:1F18:0:0::1\n2600:1f18::2"),
        **nic(MAC1, "0", "10.0.0.5", "10.0.0.0/20"),
    )
    md = parse(meta)
    assert [(n.mac, n.ip, n.prefix_length) for n in md.network_interfaces] == [
        (MAC1, "10.0.0.5", 20),
        (mac2, "10.0.1.5", 24),
        (MAC0, "10.0.2.5", 24),
    ]
    assert md.network_interfaces[1].ipv6 == ("2600:1f18::1", "2600:1f18::2")
    assert md.rejections == ()


def test_upper_case_macs_are_canonical() -> None:
    upper = MAC0.upper()
    meta = documented(mac=upper, **{NIC: upper + "/"}, **nic(upper, "0", "10.251.50.12", "10.251.50.0/24"))
    del meta[f"{NIC}{MAC0}/device-number"]
    assert [n.mac for n in parse(meta).network_interfaces] == [MAC0]


def test_garbled_mac_listing_holds_every_network_subsystem() -> None:
    md = parse(documented(**{NIC: f"{MAC0}/\nnot-a-mac/"}))
    assert md.network_interfaces == ()
    assert {r.concerns for r in md.rejections if r.holds} == {"nics", "routes", "hostname"}
    assert not md.held("accounts")


def test_garbled_device_number_holds_the_network() -> None:
    md = parse(documented(**{f"{NIC}{MAC0}/device-number": "zero"}))
    assert md.network_interfaces == ()
    assert md.held("nics")


def test_bad_primary_address_holds_the_hostname() -> None:
    md = parse(documented(**{f"{NIC}{MAC0}/local-ipv4s": "10.251.50.999"}))
    [eth0] = md.network_interfaces
    assert eth0.ip is None
    assert md.held("hostname")


def test_bad_ipv6_and_subnet_hold_nics() -> None:
    md = parse(
        documented(**{f"{NIC}{MAC0}/ipv6s": "2600::1\nnope", f"{NIC}{MAC0}/subnet-ipv4-cidr-block": "x/99"})
    )
    [eth0] = md.network_interfaces
    assert (eth0.ipv6, eth0.prefix_length) == ((), None)
    assert len(md.held("nics")) == 2


def test_hostname_falls_back_to_hostname() -> None:
    meta = documented(hostname="ip-10-0-0-1.eu-west-1.compute.internal")
    del meta["local-hostname"]
    assert parse(meta).hostname == "ip-10-0-0-1.eu-west-1.compute.internal"


def test_several_dhcp_domains_give_the_first_name() -> None:
    # local-hostname when the VPC's DHCP option set lists two domain names
    md = parse(documented(**{"local-hostname": "ip-192-168-112-168.my.domain eu-west-1.compute.internal"}))
    assert md.hostname == "ip-192-168-112-168.my.domain"
    assert md.rejections == ()


def test_garbled_hostname_holds_hostname() -> None:
    md = parse(documented(**{"local-hostname": "ip-10-0-0-1\x00.ec2.internal"}))
    assert md.hostname == ""
    assert md.held("hostname")


@pytest.mark.parametrize("value", [None, "", "  \n", "i-123 456", "i-\x00"])
def test_no_usable_instance_id_is_an_error(value: str | None) -> None:
    meta = documented()
    if value is None:
        del meta["instance-id"]
    else:
        meta["instance-id"] = value
    with pytest.raises(Ec2MetadataError):
        parse(meta)


def test_only_what_the_transport_read_is_accepted() -> None:
    with pytest.raises(Ec2MetadataError):
        parse_ec2({"meta-data": {"instance-id": "i-1"}})


def test_identity_document_absent_uses_placement_leaves() -> None:
    md = parse(
        documented(
            **{
                "placement/region": "eu-west-1",
                "placement/availability-zone": "eu-west-1a",
                "instance-type": "m5.large",
            }
        ),
        identity=None,
    )
    assert ec2(md) == Ec2Extras(region="eu-west-1", availability_zone="eu-west-1a", instance_type="m5.large")


@pytest.mark.parametrize("identity", ["{not json", "[1, 2]", json.dumps({"region": 5})])
def test_unreadable_identity_document_is_a_rejection_not_an_error(identity: str) -> None:
    md = parse(documented(), identity=identity)
    assert md.instance_id == "i-1234567890abcdef0"
    assert [r.concerns for r in md.rejections] == ["instance_setup"]


def test_extras_of_another_platform_are_empty() -> None:
    assert ec2(InstanceMetadata(platform="gce", instance_id="1")) == Ec2Extras()


def test_listing_helpers() -> None:
    assert key_indices("0=a\n\n1=b=c\n01=again\nbad\n") == (["0", "1"], [5])
    assert mac_entries(f"{MAC0}/\n{MAC0}\nzz/\n") == ([MAC0], [3])


@pytest.mark.parametrize(
    ("dmi", "says"),
    [
        ({"sys_vendor": "Amazon EC2", "product_name": "m5.large"}, True),
        ({"sys_vendor": "Xen", "product_version": "4.11.amazon"}, True),
        ({"sys_vendor": "Xen", "bios_version": "4.2.AMAZON"}, True),
        ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, False),
        ({}, False),
    ],
)
def test_dmi_hint(dmi: dict[str, str], says: bool) -> None:
    reason = dmi_says_ec2(dmi)
    assert (reason is not None) == says
    if reason is not None:
        assert "\n" not in reason


# -- property: arbitrary text never crashes the parser ----------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=80)
LISTING = st.lists(st.one_of(TEXT, st.sampled_from(["0=k", "1=k", f"{MAC0}/", "zz/"])), max_size=4).map(
    "\n".join
)
FIELDS = (
    "instance-id",
    "local-hostname",
    "hostname",
    "mac",
    "public-keys/",
    "public-keys/0/openssh-key",
    "public-keys/1/openssh-key",
    NIC,
    f"{NIC}{MAC0}/device-number",
    f"{NIC}{MAC0}/local-ipv4s",
    f"{NIC}{MAC0}/subnet-ipv4-cidr-block",
    f"{NIC}{MAC0}/ipv6s",
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    garbled=st.dictionaries(st.sampled_from(FIELDS), st.one_of(TEXT, LISTING), max_size=6),
    identity=st.one_of(st.none(), TEXT, st.just(IDENTITY)),
    user_data=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_arbitrary_text_only_ever_raises_the_parsers_error(
    garbled: dict[str, str], identity: str | None, user_data: bytes | None
) -> None:
    meta: dict[str, Any] = {**documented(), **garbled}
    try:
        md = parse(meta, user_data=user_data, identity=identity)
    except Ec2MetadataError:
        assert "instance-id" in garbled
        return
    assert md.user_data == user_data
    assert all("\n" not in k.line for k in md.ssh_keys)
    # What was left valid is still read.
    if not {"public-keys/", "public-keys/0/openssh-key"} & garbled.keys():
        assert (None, ED25519) in lines(md)
    if not any(k.startswith(NIC) or k == "mac" for k in garbled):
        assert [n.mac for n in md.network_interfaces] == [MAC0]
