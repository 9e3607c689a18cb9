"""VMware guestinfo: decoding (base64, gzip+base64, bombs) and the metadata cloud-init's
VMware datasource documents, parsed into the neutral model."""

from __future__ import annotations

import base64
import contextlib
import gzip
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.nocloud import Unreadable
from guestagent.domain.platforms.vmware import (
    DECODED_MAX,
    MAX_KEYS,
    NO_EXTRAS,
    GuestinfoDecodeError,
    VmwareError,
    decode_guestinfo,
    dmi_says_vmware,
    is_empty,
    parse_vmware,
    vmware,
)
from tests.keys import ECDSA, ED25519, RSA

UUID = "564d2c52-5e7a-4c1c-8ad3-29a7f1bd0a3e"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gzb64(data: bytes) -> str:
    return b64(gzip.compress(data, mtime=0))


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        ("#cloud-config\n", None),
        ("#cloud-config\n", ""),
        (b64(b"#cloud-config\n"), "base64"),
        (b64(b"#cloud-config\n"), "b64"),
        (gzb64(b"#cloud-config\n"), "gzip+base64"),
        (gzb64(b"#cloud-config\n"), "gz+b64"),
        (gzb64(b"#cloud-config\n"), " GZIP+BASE64 "),
        # govc and PowerShell wrap long base64 lines: whitespace is not data.
        ("\n".join(b64(b"#cloud-config\n")[i : i + 4] for i in range(0, 20, 4)), "base64"),
    ],
)
def test_decodings(value: str, encoding: str | None) -> None:
    assert decode_guestinfo(value, encoding) == b"#cloud-config\n"


def test_several_gzip_members_are_one_value() -> None:
    value = b64(gzip.compress(b"part one, ", mtime=0) + gzip.compress(b"part two", mtime=0))
    assert decode_guestinfo(value, "gzip+base64") == b"part one, part two"


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzb64(b"\0" * (DECODED_MAX + 1))
    assert len(bomb) < 20_000
    with pytest.raises(GuestinfoDecodeError, match="inflates to more than"):
        decode_guestinfo(bomb, "gzip+base64")
    with pytest.raises(GuestinfoDecodeError, match="inflates to more than 100 bytes"):
        decode_guestinfo(gzb64(b"x" * 101), "gzip+base64", limit=100)
    assert decode_guestinfo(gzb64(b"x" * 100), "gzip+base64", limit=100) == b"x" * 100


def test_plain_and_base64_values_are_bounded_too() -> None:
    with pytest.raises(GuestinfoDecodeError, match="larger than 10 bytes"):
        decode_guestinfo("x" * 11, None, limit=10)
    with pytest.raises(GuestinfoDecodeError, match="larger than 10 bytes"):
        decode_guestinfo(b64(b"x" * 11), "base64", limit=10)


@pytest.mark.parametrize(
    ("value", "encoding", "reason"),
    [
        ("not base64!", "base64", "not valid base64"),
        ("abc", "base64", "not valid base64"),
        (b64(b"plain, not gzip"), "gzip+base64", "not valid gzip"),
        (b64(gzip.compress(b"hello world", mtime=0)[:-6]), "gzip+base64", "cut short"),
        (b64(gzip.compress(b"a", mtime=0) + b"junk"), "gzip+base64", "not valid gzip"),
        ("x", "rot13", "unknown encoding 'rot13'"),
    ],
)
def test_decoding_failures(value: str, encoding: str, reason: str) -> None:
    with pytest.raises(GuestinfoDecodeError, match=reason):
        decode_guestinfo(value, encoding)


def test_empty_values() -> None:
    assert is_empty(None) and is_empty("") and is_empty("  \n") and is_empty("---") and is_empty("--- \n")
    assert not is_empty("{}")


# ------------------------------------------------------------------ metadata (cloud-init's VMware docs)


def test_documented_metadata() -> None:
    meta = {
        "instance-id": "cloud-vm",
        "local-hostname": "cloud-vm",
        "network": {
            "version": 2,
            "ethernets": {"nics": {"match": {"name": "ens*"}, "dhcp4": True}},
        },
    }
    md = parse_vmware(meta)
    assert (md.platform, md.instance_id, md.hostname) == ("vmware", "cloud-vm", "cloud-vm")
    assert md.rejections == ()
    network: Any = vmware(md).network
    assert network["ethernets"]["nics"]["dhcp4"] is True
    with pytest.raises(TypeError):
        network["version"] = 1  # read-only


def test_encoded_network_is_kept_decoded_and_raw() -> None:
    text = b"version: 2\nethernets:\n  ens192:\n    dhcp4: true\n"
    md = parse_vmware({"instance-id": "i", "network": gzb64(text), "network.encoding": "gzip+base64"})
    assert vmware(md).network == text


def test_bad_network_holds_the_network_subsystems() -> None:
    md = parse_vmware({"instance-id": "i", "network": "%%%", "network.encoding": "base64"})
    assert vmware(md).network is None
    assert held(md) == {("guestinfo.metadata network", "nics"), ("guestinfo.metadata network", "routes")}
    md = parse_vmware({"instance-id": "i", "network": [1, 2]})
    assert held(md) == {("guestinfo.metadata network", "nics"), ("guestinfo.metadata network", "routes")}


@pytest.mark.parametrize("field", ["public-keys", "public_keys", "public-keys-data", "public_keys_data"])
def test_keys_go_to_the_default_user(field: str) -> None:
    md = parse_vmware({"instance-id": "i", field: f"{ED25519}\n{RSA}\n"})
    assert [(k.user, k.line) for k in md.ssh_keys] == [(None, ED25519), (None, RSA)]


def test_keys_as_list_and_mapping() -> None:
    md = parse_vmware({"instance-id": "i", "public-keys": [ED25519, ECDSA, None]})
    assert [k.line for k in md.ssh_keys] == [ED25519, ECDSA]
    md = parse_vmware({"instance-id": "i", "public-keys": {"laptop": ED25519, "ci": [RSA]}})
    assert [k.line for k in md.ssh_keys] == [ED25519, RSA]


def test_wrong_typed_keys_hold_accounts() -> None:
    md = parse_vmware({"instance-id": "i", "public-keys": 7})
    assert md.ssh_keys == () and held(md) == {("guestinfo.metadata public-keys", "accounts")}
    md = parse_vmware({"instance-id": "i", "public-keys": [ED25519, {"a": "b"}]})
    assert [k.line for k in md.ssh_keys] == [ED25519]
    assert held(md) == {("guestinfo.metadata public-keys[1]", "accounts")}


def test_too_many_keys_hold_accounts() -> None:
    md = parse_vmware({"instance-id": "i", "public-keys": [f"{ED25519} k{i}" for i in range(MAX_KEYS + 1)]})
    assert len(md.ssh_keys) == MAX_KEYS and ("guestinfo.metadata public-keys", "accounts") in held(md)


def test_user_and_vendor_data_are_kept_apart() -> None:
    md = parse_vmware({"instance-id": "i"}, user_data=b"#!/bin/sh\nuser\n", vendor_data=b"#cloud-config\n")
    assert (md.user_data, md.vendor_data) == (b"#!/bin/sh\nuser\n", b"#cloud-config\n")


def test_unreadable_user_data_holds_the_script_runners() -> None:
    md = parse_vmware({"instance-id": "i"}, user_data=Unreadable("guestinfo.userdata is not valid base64"))
    assert md.user_data is None
    assert held(md) == {("guestinfo.userdata", "scripts"), ("guestinfo.userdata", "firstboot")}


# ------------------------------------------------------------------ identity


def test_without_instance_id_the_smbios_uuid_is_used_lower_case() -> None:
    md = parse_vmware({"local-hostname": "h"}, product_uuid=UUID.upper() + "\n")
    assert md.instance_id == UUID


def test_no_metadata_at_all_but_user_data() -> None:
    md = parse_vmware(None, user_data=b"#!/bin/sh\n", product_uuid=UUID)
    assert (md.instance_id, md.hostname, md.user_data) == (UUID, "", b"#!/bin/sh\n")


@pytest.mark.parametrize(
    ("meta", "uuid", "reason"),
    [
        ({}, None, "no instance-id and the SMBIOS UUID"),
        ({"instance-id": ["a"]}, UUID, "not a string"),
        ({"instance-id": "two words"}, UUID, "one printable word"),
        ([1, 2], UUID, "not a mapping"),
        ("just text", UUID, "not a mapping"),
        (Unreadable("guestinfo.metadata is not valid base64"), UUID, "not valid base64"),
    ],
)
def test_metadata_that_cannot_describe_an_instance(meta: object, uuid: str | None, reason: str) -> None:
    with pytest.raises(VmwareError, match=reason):
        parse_vmware(meta, product_uuid=uuid)


def test_hostname_problems_hold_the_hostname() -> None:
    md = parse_vmware({"instance-id": "i", "local-hostname": "two words"})
    assert md.hostname == "" and held(md) == {("guestinfo.metadata local-hostname", "hostname")}
    md = parse_vmware({"instance-id": "i", "local-hostname": {"a": 1}})
    assert held(md) == {("guestinfo.metadata local-hostname", "hostname")}


def test_extras() -> None:
    md = parse_vmware({"instance-id": "i", "public-keys": ED25519, "custom": [1, 2]})
    assert vmware(md).metadata["custom"] == (1, 2)
    assert ED25519 not in repr(md.extras)
    from guestagent.domain.platforms.nocloud import parse_nocloud

    assert vmware(parse_nocloud({"instance-id": "i"})) is NO_EXTRAS


# ------------------------------------------------------------------ DMI


@pytest.mark.parametrize(
    ("dmi", "found"),
    [
        ({"sys_vendor": "VMware, Inc.", "product_name": "VMware7,1"}, True),
        ({"product_name": "VMware Virtual Platform"}, True),
        ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, False),
        ({"sys_vendor": "Amazon EC2"}, False),
        ({}, False),
    ],
)
def test_dmi(dmi: dict[str, str], found: bool) -> None:
    assert (dmi_says_vmware(dmi) is not None) == found


# ------------------------------------------------------------------ property: only the parser's own errors


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(["instance-id", "local-hostname", "public-keys", "public_keys", "network",
                           "network.encoding", "other"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(meta=st.dictionaries(_fields, _json, max_size=6) | _json, data=st.none() | st.binary(max_size=30),
       uuid=st.none() | st.text(max_size=40))  # fmt: skip
def test_arbitrary_metadata_never_raises_anything_else(meta: object, data: bytes | None, uuid: str | None) -> None:
    with contextlib.suppress(VmwareError):
        parse_vmware(meta, user_data=data, vendor_data=data, product_uuid=uuid)


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.characters(blacklist_categories=()), max_size=200), encoding=st.sampled_from([None, "base64", "gzip+base64", "b64", "x"]))
def test_arbitrary_values_never_raise_anything_else(value: str, encoding: str | None) -> None:
    with contextlib.suppress(GuestinfoDecodeError):
        decode_guestinfo(value, encoding, limit=1000)
