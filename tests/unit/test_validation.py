from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain.validation import Invalid, check_username, parse_key_line
from tests.keys import ECDSA, ED25519, RSA


@pytest.mark.parametrize("name", ["alice", "a", "user.name", "_svc", "bob-2", "x" * 32, "Alice_1"])
def test_accepts_ordinary_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("-rf", "starts with '-'"),
        ("a;reboot", "outside"),
        ("a b", "outside"),
        ("../etc", "outside"),
        ("a/b", "outside"),
        ("$(id)", "outside"),
        ("x" * 33, "longer than 32"),
        ("jos\u00e9", "non-ASCII"),
        ("..", "'.'"),
        ("1234", "all digits"),
        ("root", "system account"),
        ("daemon", "system account"),
    ],
)
def test_rejects_unsafe_usernames_with_reason(name: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason.replace("(", r"\(").replace("$", r"\$")):
        check_username(name)


def test_system_account_allowed_when_config_says_so() -> None:
    assert check_username("root", allowed_system_users=("root",)) == "root"


@given(st.text())
def test_no_string_becomes_an_unsafe_username(name: str) -> None:
    try:
        accepted = check_username(name)
    except Invalid:
        return
    assert set(accepted) <= set(string.ascii_letters + string.digits + "._-")
    assert not accepted.startswith("-") and 0 < len(accepted) <= 32


@pytest.mark.parametrize("key", [ED25519, ECDSA, RSA])
def test_accepts_real_keys_verbatim(key: str) -> None:
    parsed = parse_key_line(key)
    assert parsed.text == key
    assert parsed.options == ""


def test_keeps_options_with_quoted_spaces() -> None:
    line = 'from="10.0.0.0/8",command="echo hello world",no-port-forwarding ' + ED25519
    parsed = parse_key_line(line)
    assert parsed.text == line
    assert parsed.options == 'from="10.0.0.0/8",command="echo hello world",no-port-forwarding'
    assert parsed.key_type == "ssh-ed25519"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (ED25519 + '\ncommand="sh" ' + RSA, "newline"),
        (ED25519.replace("AAAA", "AA\x00AA"), "newline or NUL"),
        ("ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQrd", "unknown"),
        ("ssh-ed25519 not!base64 c", "base64"),
        # a valid RSA blob presented as ed25519: type and data disagree
        ("ssh-ed25519 " + RSA.split()[1], "does not match"),
        ('command="unterminated ' + ED25519, "unterminated"),
        ("ssh-ed25519", "missing key data"),
        ("", "empty"),
    ],
)
def test_rejects_bad_key_lines(line: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason) as info:
        parse_key_line(line)
    # the reason is loggable: it never repeats the key material
    assert "AAAA" not in str(info.value)


@given(st.text(), st.sampled_from([ED25519, ECDSA, RSA]))
def test_accepted_key_lines_never_contain_line_breaks(noise: str, key: str) -> None:
    for line in (noise, key + noise, noise + key, key[:20] + noise + key[20:]):
        try:
            parsed = parse_key_line(line)
        except Invalid:
            continue
        assert "\n" not in parsed.text and "\r" not in parsed.text and "\x00" not in parsed.text


def test_truncated_paste_is_refused() -> None:
    """A key cut short still decodes as base64 and names its type; its fields do not add up."""
    with pytest.raises(Invalid, match=r"truncated|wrong length"):
        parse_key_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQ c")
    with pytest.raises(Invalid, match="truncated"):
        parse_key_line(RSA[:120])
