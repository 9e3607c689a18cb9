"""USER:KEY lines: validation is remembered per exact line, and that memory changes nothing
a caller can see (the same keys, the same refusals with the same reasons) and stays bounded."""

from __future__ import annotations

import pytest

from guestagent.domain import ssh_keys
from guestagent.domain.ssh_keys import (
    MEMO_ENTRIES,
    MEMO_LINE_MAX,
    key_for_user,
    parse_key_text,
    parse_user_key_lines,
)
from guestagent.domain.validation import Invalid
from tests.keys import ED25519, RSA

TRUNCATED = ED25519.split()[0] + " " + ED25519.split()[1][:-8] + " cut"


def test_a_document_parsed_twice_gives_the_same_keys_and_refusals() -> None:
    text = f"alice:{ED25519}\nbob:{TRUNCATED}\nroot:{ED25519}\nno-colon-here\n"
    first = parse_user_key_lines(text, "instance ssh-keys")
    again = parse_user_key_lines(text, "instance ssh-keys")
    assert first == again
    keys, rejections = again
    assert [(k.user, k.line) for k in keys] == [("alice", ED25519), ("root", ED25519)]
    assert ["key data is truncated" in r.describe() for r in rejections] == [True, False]


@pytest.mark.parametrize("_", range(2))
def test_a_refused_line_is_refused_each_time_with_its_reason(_: int) -> None:
    with pytest.raises(Invalid, match="key data is truncated"):
        key_for_user("alice", TRUNCATED)
    with pytest.raises(Invalid, match="username has characters outside"):
        key_for_user("al ice", ED25519)


def test_one_line_for_two_users_is_each_user_s_key() -> None:
    assert key_for_user("alice", ED25519).user == "alice"
    assert key_for_user("bob", ED25519).user == "bob"
    assert key_for_user(None, ED25519).user is None


def test_lines_too_long_to_remember_are_still_checked() -> None:
    long_comment = RSA + " " + "x" * MEMO_LINE_MAX
    assert key_for_user("alice", long_comment).line == long_comment
    with pytest.raises(Invalid, match="key data is truncated"):
        key_for_user("alice", "ssh-rsa " + "A" * (MEMO_LINE_MAX + 4) + " long")


def test_the_memory_is_bounded_however_many_lines_metadata_brings() -> None:
    for i in range(MEMO_ENTRIES + 50):
        key_for_user(f"user{i}", ED25519)
    assert ssh_keys._remembered.cache_info().currsize <= MEMO_ENTRIES


def test_a_key_text_of_several_lines_is_checked_line_by_line() -> None:
    bad = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIcut"
    keys, refused = parse_key_text("alice", f"# a comment\n{ED25519}\r\n\n{bad}\n", "entry 2")
    assert [(k.user, k.line) for k in keys] == [("alice", ED25519)]
    assert [r.where for r in refused] == ["entry 2 line 4"]
    # One key line, blank lines around it: named as the one entry it is.
    keys, refused = parse_key_text(None, f"\n{bad}\n", "entry 3")
    assert keys == [] and [r.where for r in refused] == ["entry 3"]
    assert "AAAA" not in refused[0].reason
