"""SHA-crypt ($6$, $5$) in pure Python, against the vectors of its specification
(Drepper, "Unix crypt using SHA-256 and SHA-512") and against `openssl passwd` output
recorded here (the comparison with a live openssl is in tests/integration)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.passwords import (
    SALT_CHARS,
    PasswordHashError,
    choose_id,
    salt_length,
    sha_crypt,
)

# (id, salt, rounds, password, expected): the specification's test vectors.
VECTORS = [
    ("6", "saltstring", None, "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("6", "saltstringsaltstring", 10000, "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/"
     "y3RnOaw5v."),
    ("6", "toolongsaltstring", 5000, "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl"
     "8audkUEm0"),
    ("6", "roundstoolow", 10, "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaH"
     "HrsX."),
    ("5", "saltstring", None, "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("5", "saltstringsaltstring", 10000, "Hello world!",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("5", "roundstoolow", 10, "the minimum number is still observed",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
]  # fmt: skip


@pytest.mark.parametrize(("crypt_id", "salt", "rounds", "password", "expected"), VECTORS)
def test_specification_vectors(
    crypt_id: str, salt: str, rounds: int | None, password: str, expected: str
) -> None:
    assert sha_crypt(password, salt, crypt_id, rounds) == expected


def test_openssl_passwd_agrees() -> None:
    # `openssl passwd -6 -salt saltstringsaltst 'Hello world!'` (OpenSSL 3.0, Debian 12).
    assert sha_crypt("Hello world!", "saltstringsaltst") == (
        "$6$saltstringsaltst$e.3mR68CqZEpesEX1HlFZT6sEanSOjM/b5UoDyDo00a8syek2cJldMjrbtKP86.FJvzluVR7nc3DNzelAwTxj."
    )


@pytest.mark.parametrize("salt", ["", "bad salt", "sa$lt", "ünï"])
def test_bad_salts_are_refused(salt: str) -> None:
    with pytest.raises(PasswordHashError):
        sha_crypt("pw", salt)


def test_unsupported_ids_are_refused_and_chosen_around() -> None:
    with pytest.raises(PasswordHashError):
        sha_crypt("pw", "salt", "1")
    assert choose_id("6") == ("6", None)
    assert choose_id(" 5 ") == ("5", None)
    crypt_id, note = choose_id("1")
    assert crypt_id == "6" and note is not None and "MD5" in note
    assert choose_id("2a")[0] == "6"


def test_salt_length_is_clamped() -> None:
    assert [salt_length(n) for n in (0, 1, 10, 16, 40)] == [1, 1, 10, 16, 16]


def test_an_overlong_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(PasswordHashError) as caught:
        sha_crypt("s3cr3t" * 500, "salt")
    assert "s3cr3t" not in str(caught.value)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40), st.text(alphabet=SALT_CHARS, min_size=1, max_size=20))
def test_shape_of_every_hash(password: str, salt: str) -> None:
    hashed = sha_crypt(password, salt)
    prefix, _, rest = hashed.partition(f"$6${salt[:16]}$")
    assert prefix == ""
    assert len(rest) == 86 and set(rest) <= set(SALT_CHARS)
