"""The CPIO metadata device's parser: the files the illumos metadata agent's README documents,
the instance identity, and hostile archives."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.cpio import (
    MAX_KEYS,
    NO_EXTRAS,
    CpioMetadataError,
    cpio,
    parse_cpio,
    smbios_uuid,
)
from guestagent.domain.platforms.nocloud import parse_nocloud
from tests.keys import ED25519, ED25519_BOB, RSA
from tests.unit.test_cpio_archive import newc, newc_archive

UUID = "4c4c4544-0042-3510-8052-b4c04f4e4d32"


def device(**files: bytes) -> bytes:
    """An archive as the metadata device holds it: newc from LBA 0, zeros after."""
    data = newc_archive(*(newc(name.replace("_", ".") if name == "config_toml" else name, body)
                          for name, body in files.items()))  # fmt: skip
    return data + b"\0" * (-len(data) % 512 + 512)


def held(md: InstanceMetadata) -> set[tuple[str, str]]:
    return {(r.where, r.concerns) for r in md.rejections if r.holds}


# ------------------------------------------------------------------ the README's files


def test_nodename_first_line_is_the_hostname() -> None:
    md = parse_cpio(device(nodename=b"illumos-vm\nanything else\n"), product_uuid=UUID)
    assert md.platform == "cpio"
    assert md.hostname == "illumos-vm"
    assert (md.ssh_keys, md.rejections, dict(md.scripts)) == ((), (), {})


def test_authorized_keys_are_roots() -> None:
    text = f"# operator keys\n{ED25519}\n\n{RSA}\r\n{ED25519}\n".encode()
    md = parse_cpio(device(authorized_keys=text), product_uuid=UUID)
    assert [(k.user, k.line) for k in md.ssh_keys] == [("root", ED25519), ("root", RSA)]
    assert md.users() == frozenset({"root"})  # named explicitly: never the default user


def test_a_bad_key_line_is_refused_alone() -> None:
    md = parse_cpio(device(authorized_keys=f"ssh-ed25519 AAAA-truncated\n{ED25519_BOB}\n".encode()))
    assert [k.line for k in md.ssh_keys] == [ED25519_BOB]
    assert [(r.where, r.concerns, r.holds) for r in md.rejections] == [("authorized_keys line 1", "accounts", False)]
    assert "AAAA" not in md.rejections[0].describe()


def test_config_toml_network_skip() -> None:
    # The README's example, verbatim in shape.
    md = parse_cpio(device(config_toml=b"[network]\nskip = true\n"))
    assert cpio(md).network_skip is True
    assert cpio(md).config == {"network": {"skip": True}}
    assert cpio(parse_cpio(device(config_toml=b"[network]\nskip = false\n"))).network_skip is False


def test_network_skip_defaults_to_false() -> None:
    assert cpio(parse_cpio(device(nodename=b"h\n"))).network_skip is False
    assert cpio(parse_cpio(device(config_toml=b"# nothing yet\n"))).network_skip is False


def test_firstboot_script_is_a_firstboot_kind_script() -> None:
    body = b"#!/bin/bash\n\necho ok\n"
    md = parse_cpio(device(**{"firstboot.sh": body}))
    (script,) = md.scripts["firstboot"]
    assert (script.key, script.is_url, script.scope) == ("firstboot.sh", False, "cpio device")
    assert script.value.encode("utf-8", "surrogateescape") == body
    assert script.describe() == "run firstboot.sh (cpio device metadata)"


def test_non_utf8_script_bytes_survive() -> None:
    body = b"#!/bin/sh\necho \xff\xfe\n"
    (script,) = parse_cpio(device(**{"firstboot.sh": body})).scripts["firstboot"]
    assert script.value.encode("utf-8", "surrogateescape") == body


def test_everything_at_once_and_extras() -> None:
    md = parse_cpio(
        device(nodename=b"web-1\n", authorized_keys=f"{ED25519}\n".encode(), config_toml=b"[network]\nskip = true\n",
               **{"firstboot.sh": b"#!/bin/sh\ntrue\n", "unknown-file": b"ignored"}),
        product_uuid=UUID,
        device="/dev/vdb",
    )  # fmt: skip
    extras = cpio(md)
    assert (md.instance_id, md.hostname, len(md.ssh_keys), md.rejections) == (UUID, "web-1", 1, ())
    assert extras.device == "/dev/vdb" and extras.archive_format == "newc"
    assert extras.files == ("authorized_keys", "config.toml", "firstboot.sh", "nodename", "unknown-file")
    assert extras.identity == "smbios" and len(extras.digest) == 64
    assert ED25519 not in repr(md.extras)


def test_empty_archive_is_an_instance_with_nothing_to_do() -> None:
    md = parse_cpio(device())
    assert md.instance_id.startswith("cpio-") and md.hostname == "" and md.ssh_keys == ()


def test_extras_of_another_platform() -> None:
    assert cpio(parse_nocloud({"instance-id": "i"})) is NO_EXTRAS


# ------------------------------------------------------------------ identity


def test_smbios_uuid_is_the_instance_id_lower_case() -> None:
    md = parse_cpio(device(nodename=b"h\n"), product_uuid=UUID.upper() + "\n")
    assert md.instance_id == UUID and cpio(md).identity == "smbios"


@pytest.mark.parametrize(
    "value", [None, "", "not-a-uuid", "00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"]
)
def test_without_a_usable_uuid_the_archive_digest_is_the_id(value: str | None) -> None:
    assert smbios_uuid(value) is None
    first = parse_cpio(device(nodename=b"h\n"), product_uuid=value)
    again = parse_cpio(device(nodename=b"h\n") + b"stale bytes after the archive", product_uuid=value)
    other = parse_cpio(device(nodename=b"h2\n"), product_uuid=value)
    assert first.instance_id == again.instance_id != other.instance_id
    assert first.instance_id == f"cpio-{cpio(first).digest[:32]}"
    assert cpio(first).identity == "archive"


# ------------------------------------------------------------------ refusals


def test_a_malformed_archive_is_the_parsers_own_error() -> None:
    with pytest.raises(CpioMetadataError, match="symbolic link") as caught:
        parse_cpio(newc_archive(newc("authorized_keys", b"/root/.ssh/id_rsa.pub", mode=0o120777)))
    assert isinstance(caught.value, ValueError) and not caught.value.truncated


def test_truncation_is_marked() -> None:
    data = newc_archive(newc("nodename", b"x" * 100))
    with pytest.raises(CpioMetadataError) as caught:
        parse_cpio(data[:150])
    assert caught.value.truncated


def test_nodename_not_one_word_holds_the_hostname() -> None:
    md = parse_cpio(device(nodename=b"two words\n"))
    assert md.hostname == "" and held(md) == {("nodename", "hostname")}
    md = parse_cpio(device(nodename=b"\xff\xfe\n"))
    assert md.hostname == "" and held(md) == {("nodename", "hostname")}


def test_empty_nodename_is_no_hostname() -> None:
    md = parse_cpio(device(nodename=b"\n"))
    assert (md.hostname, md.rejections) == ("", ())


def test_authorized_keys_not_text_holds_accounts() -> None:
    md = parse_cpio(device(authorized_keys=b"\xff" + ED25519.encode()))
    assert md.ssh_keys == () and held(md) == {("authorized_keys", "accounts")}


def test_too_many_keys_hold_accounts() -> None:
    lines = "".join(f"{ED25519} k{i}\n" for i in range(MAX_KEYS + 1))
    md = parse_cpio(device(authorized_keys=lines.encode()))
    assert len(md.ssh_keys) == MAX_KEYS and held(md) == {("authorized_keys", "accounts")}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"[network\nskip = true\n", "config.toml"),
        (b"network = 1\n", "config.toml network"),
        (b"[network]\nskip = \"yes\"\n", "config.toml network.skip"),
        (b"\xff = 1\n", "config.toml"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "config.toml"),
        (b"a = " + b"9" * 5000 + b"\n", "config.toml"),
        (b"# pad\n" * 20000, "config.toml"),
    ],
)
def test_config_toml_problems_hold_the_network(text: bytes, where: str) -> None:
    md = parse_cpio(device(nodename=b"h\n", config_toml=text))
    assert held(md) == {(where, "nics"), (where, "routes")}
    assert cpio(md).network_skip is False
    assert md.hostname == "h"  # the rest of the device still applies


# ------------------------------------------------------------------ property: only the parser's own error


_names = st.sampled_from(["nodename", "authorized_keys", "config.toml", "firstboot.sh", "other", "./nodename"])


@settings(max_examples=300, deadline=None)
@given(files=st.dictionaries(_names, st.binary(max_size=200) | st.text(max_size=200).map(str.encode), max_size=5),
       uuid=st.none() | st.text(max_size=40))  # fmt: skip
def test_arbitrary_files_never_raise(files: dict[str, bytes], uuid: str | None) -> None:
    with contextlib.suppress(CpioMetadataError):
        md = parse_cpio(newc_archive(*(newc(name, body) for name, body in files.items())), product_uuid=uuid)
        assert md.instance_id


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=800))
def test_arbitrary_device_bytes_never_raise(data: bytes) -> None:
    with contextlib.suppress(CpioMetadataError):
        parse_cpio(b"070701" + data)
