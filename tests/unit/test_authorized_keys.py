from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from guestagent.domain.authorized_keys import MARKER, split_managed, with_managed
from tests.keys import ED25519, ED25519_BOB, RSA


def test_users_own_lines_survive_byte_for_byte() -> None:
    own = "# my laptop\r\n" + RSA + "  \n\n"
    current = own + f"{MARKER}\n{ED25519}\n"
    assert with_managed(current, [ED25519_BOB]) == own + f"{MARKER}\n{ED25519_BOB}\n"
    assert with_managed(current, []) == own


def test_missing_final_newline_is_not_glued_to_a_managed_key() -> None:
    assert with_managed(RSA, [ED25519]) == f"{RSA}\n{MARKER}\n{ED25519}\n"


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40)), st.booleans())
def test_managed_block_round_trips_for_any_user_text(lines: list[str], final_newline: bool) -> None:
    own_lines = [line for line in lines if line != MARKER]
    own = "\n".join(own_lines) + ("\n" if final_newline and own_lines else "")
    text = with_managed(own, [ED25519, RSA])
    _, managed = split_managed(text)
    assert managed == [ED25519, RSA]
    restored = with_managed(text, [])
    assert restored.rstrip("\n") == own.rstrip("\n")
    assert with_managed(restored, [ED25519, RSA]) == text
