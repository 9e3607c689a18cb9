"""NoCloud's pure parser: the meta-data shapes cloud-init documents, and hostile values."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.nocloud import (
    MAX_KEYS,
    NO_EXTRAS,
    CmdlineSeed,
    NoCloudError,
    NoCloudExtras,
    Unreadable,
    cmdline_seed,
    nocloud,
    parse_nocloud,
    shape_problem,
)
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA


def keys(md: InstanceMetadata) -> list[tuple[str | None, str]]:
    return [(k.user, k.line) for k in md.ssh_keys]


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


# ------------------------------------------------------------------ documented meta-data


def test_instance_id_only() -> None:
    md = parse_nocloud({"instance-id": "iid-local01"})
    assert md.platform == "nocloud"
    assert md.instance_id == "iid-local01"
    assert (md.hostname, md.ssh_keys, md.rejections) == ("", (), ())
    assert (md.user_data, md.vendor_data) == (None, None)
    assert nocloud(md).network_config is None


def test_numeric_instance_id_is_read_as_text() -> None:
    assert parse_nocloud({"instance-id": 1234}).instance_id == "1234"


def test_local_hostname() -> None:
    md = parse_nocloud({"instance-id": "iid-1", "local-hostname": "myhost"})
    assert md.hostname == "myhost"


def test_public_keys_as_a_string_of_lines() -> None:
    text = f"{ED25519}\n\n# a comment\n{RSA}\n"
    md = parse_nocloud({"instance-id": "i", "public-keys": text})
    assert keys(md) == [(None, ED25519), (None, RSA)]
    assert md.users() == frozenset()  # the default user's keys have no name
    assert md.rejections == ()


def test_public_keys_as_a_list() -> None:
    md = parse_nocloud({"instance-id": "i", "public-keys": [ED25519, ECDSA]})
    assert keys(md) == [(None, ED25519), (None, ECDSA)]


def test_public_keys_as_a_mapping_of_names_to_keys_or_lists() -> None:
    md = parse_nocloud(
        {"instance-id": "i", "public-keys": {"laptop": ED25519, "ci": [RSA, ED25519_BOB], "empty": None}}
    )
    assert keys(md) == [(None, ED25519), (None, RSA), (None, ED25519_BOB)]


def test_repeated_keys_are_installed_once() -> None:
    md = parse_nocloud({"instance-id": "i", "public-keys": [ED25519, ED25519]})
    assert keys(md) == [(None, ED25519)]


def test_a_bad_key_line_is_rejected_and_the_others_kept() -> None:
    md = parse_nocloud({"instance-id": "i", "public-keys": [ED25519, "ssh-ed25519 not-base64!"]})
    assert keys(md) == [(None, ED25519)]
    [rejection] = md.rejections
    assert rejection.concerns == "accounts"
    assert not rejection.holds
    assert rejection.where == "meta-data public-keys[1] key 1"
    assert "not-base64" not in rejection.describe()


@pytest.mark.parametrize("value", [42, 4.2, True, datetime.date(2025, 1, 1), b"bytes"])
def test_public_keys_of_an_unreadable_type_hold_accounts(value: object) -> None:
    md = parse_nocloud({"instance-id": "i", "public-keys": value})
    assert md.ssh_keys == ()
    assert held(md) == {("meta-data public-keys", "accounts")}


def test_a_key_that_became_a_yaml_mapping_holds_accounts_but_keeps_the_others() -> None:
    # `- ssh-ed25519 AAAA... me: laptop` is a mapping in YAML: the key is unreadable.
    md = parse_nocloud({"instance-id": "i", "public-keys": [ED25519, {ED25519_BOB: "laptop"}]})
    assert keys(md) == [(None, ED25519)]
    assert held(md) == {("meta-data public-keys[1]", "accounts")}
    assert ED25519_BOB.split()[1] not in repr(md.rejections)


def test_more_keys_than_the_bound_hold_accounts() -> None:
    line = ED25519.rsplit(" ", 1)[0]
    md = parse_nocloud({"instance-id": "i", "public-keys": [f"{line} k{n}" for n in range(MAX_KEYS + 5)]})
    assert len(md.ssh_keys) == MAX_KEYS
    assert ("meta-data public-keys", "accounts") in held(md)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"local-hostname": "h"}, "no instance-id"),
        ({"instance-id": None}, "no instance-id"),
        ({"instance-id": ""}, "not one printable word"),
        ({"instance-id": "two words"}, "not one printable word"),
        ({"instance-id": True}, "boolean"),
        ({"instance-id": ["i"]}, "list"),
        (None, "empty"),
        ("instance-id: i", "string, not a mapping"),
        ([{"instance-id": "i"}], "list, not a mapping"),
        (Unreadable("meta-data is larger than 1048576 bytes"), "larger than"),
    ],
)
def test_meta_data_that_cannot_describe_an_instance_is_refused(meta: object, reason: str) -> None:
    with pytest.raises(NoCloudError, match=reason):
        parse_nocloud(meta)


@pytest.mark.parametrize("value", [["a"], {"a": "b"}, False])
def test_a_hostname_of_the_wrong_type_holds_the_hostname(value: object) -> None:
    md = parse_nocloud({"instance-id": "i", "local-hostname": value})
    assert md.hostname == ""
    assert held(md) == {("meta-data local-hostname", "hostname")}


def test_a_hostname_with_spaces_holds_the_hostname() -> None:
    md = parse_nocloud({"instance-id": "i", "local-hostname": "my host"})
    assert (md.hostname, held(md)) == ("", {("meta-data local-hostname", "hostname")})


# ------------------------------------------------------------------ data and network-config


def test_user_data_and_vendor_data_are_kept_apart() -> None:
    md = parse_nocloud({"instance-id": "i"}, user_data=b"#cloud-config\n{}", vendor_data=b"#!/bin/sh\n")
    assert (md.user_data, md.vendor_data) == (b"#cloud-config\n{}", b"#!/bin/sh\n")


def test_unreadable_user_data_holds_scripts() -> None:
    md = parse_nocloud({"instance-id": "i"}, user_data=Unreadable("user-data is larger than 1 MiB"))
    assert md.user_data is None
    assert held(md) == {("user-data", "scripts")}


def test_network_config_is_kept_read_only() -> None:
    config = {"version": 2, "ethernets": {"eth0": {"addresses": ["10.0.0.5/24"], "dhcp4": False}}}
    md = parse_nocloud({"instance-id": "i"}, network_config=config)
    kept: Any = nocloud(md).network_config
    assert kept["ethernets"]["eth0"]["addresses"] == ("10.0.0.5/24",)
    with pytest.raises(TypeError):
        kept["version"] = 1
    assert config["version"] == 2  # the caller's value is untouched


def test_extras_keep_meta_data_but_never_show_keys() -> None:
    md = parse_nocloud(
        {"instance-id": "i", "public-keys": [ED25519], "network-interfaces": "auto eth0"}, source="s"
    )
    extras = nocloud(md)
    assert isinstance(extras, NoCloudExtras)
    assert extras.meta_data["network-interfaces"] == "auto eth0"
    assert extras.source == "s"
    assert ED25519.split()[1] not in repr(md.extras)


def test_other_platforms_have_empty_nocloud_extras() -> None:
    assert nocloud(InstanceMetadata(platform="gce", instance_id="1")) is NO_EXTRAS


def _laughs(levels: int, width: int = 10) -> object:
    """What yaml.safe_load makes of a billion-laughs document: shared lists, not copies."""
    value: object = "lol"
    for _ in range(levels):
        value = [value] * width
    return value


def test_a_billion_laughs_network_config_holds_the_network_only() -> None:
    md = parse_nocloud({"instance-id": "i", "public-keys": ED25519}, network_config=_laughs(9))
    assert nocloud(md).network_config is None
    assert held(md) == {("network-config", "nics"), ("network-config", "routes")}
    assert keys(md) == [(None, ED25519)]
    assert any("aliases" in r.reason for r in md.rejections)


def test_a_billion_laughs_meta_data_is_refused() -> None:
    with pytest.raises(NoCloudError, match="aliases"):
        parse_nocloud({"instance-id": "i", "lol": _laughs(9)})


def test_a_self_referencing_anchor_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)  # `a: &x [*x]`
    with pytest.raises(NoCloudError, match="deeper"):
        parse_nocloud({"instance-id": "i", "a": loop})
    md = parse_nocloud({"instance-id": "i"}, network_config={"a": loop})
    assert ("network-config", "nics") in held(md)


def test_aliased_long_strings_count_as_expanded() -> None:
    big = "x" * 1024 * 1024
    assert shape_problem([big] * 4) is None
    assert "characters" in (shape_problem([big] * 20) or "")


# ------------------------------------------------------------------ the kernel command line


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("ro quiet", None),
        ("ds=nocloudx", None),
        ("root=/dev/vda1 ds=nocloud", CmdlineSeed("nocloud")),
        ("ds=nocloud;s=http://10.0.0.2:8000/", CmdlineSeed("nocloud", seedfrom="http://10.0.0.2:8000/")),
        (
            "ds=nocloud-net;seedfrom=http://h/p/?a=b;i=iid-9;h=vm9 console=ttyS0",
            CmdlineSeed("nocloud-net", seedfrom="http://h/p/?a=b", instance_id="iid-9", hostname="vm9"),
        ),
        ('"ds=nocloud;s=file:///seed/"', CmdlineSeed("nocloud", seedfrom="file:///seed/")),
        ("ds=NoCloud;s=http://a/", CmdlineSeed("nocloud", seedfrom="http://a/")),
        (
            "ds=nocloud;s=http://first/ ds=nocloud;s=http://last/",
            CmdlineSeed("nocloud", seedfrom="http://last/"),
        ),
    ],
)
def test_cmdline_seed(cmdline: str, expected: CmdlineSeed | None) -> None:
    assert cmdline_seed(cmdline) == expected


def test_cmdline_overrides_use_meta_data_names() -> None:
    seed = CmdlineSeed("nocloud", instance_id="iid-9", hostname="vm9")
    assert seed.overrides() == {"instance-id": "iid-9", "local-hostname": "vm9"}


# ------------------------------------------------------------------ property


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.dates()
    | st.datetimes()
    | st.sampled_from([ED25519, RSA, f"{ED25519}\n{ECDSA}", "ssh-rsa AAAA", "# c"])
)
_keys = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=10)
    | st.sampled_from(["instance-id", "local-hostname", "public-keys", "network-interfaces"])
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(_keys, children, max_size=5)
        | st.frozensets(st.text(max_size=10), max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(meta=_values, network=_values, data=st.none() | st.binary(max_size=20))
def test_any_yaml_value_is_parsed_or_refused_with_the_parsers_error(
    meta: object, network: object, data: bytes | None
) -> None:
    with contextlib.suppress(NoCloudError):
        parse_nocloud(meta, user_data=data, vendor_data=data, network_config=network)


@settings(max_examples=300, deadline=None)
@given(instance_id=_values, hostname=_values, public_keys=_values, network=_values)
def test_any_field_value_is_parsed_or_refused_with_the_parsers_error(
    instance_id: object, hostname: object, public_keys: object, network: object
) -> None:
    meta = {"instance-id": instance_id, "local-hostname": hostname, "public-keys": public_keys}
    try:
        md = parse_nocloud(meta, network_config=network)
    except NoCloudError:
        return
    assert all(k.user is None for k in md.ssh_keys)
    assert md.instance_id.strip() == md.instance_id != ""
