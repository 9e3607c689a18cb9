"""Password hashes for /etc/shadow: SHA-512-crypt ($6$) and SHA-256-crypt ($5$), pure Python.

Why written out here: the standard library's `crypt` module is deprecated
(PEP 594) and removed in Python 3.13, and the alternatives each cost
something the agent should not pay. `openssl passwd -6` and `mkpasswd` are
extra programs whose password must travel through their argv or stdin
(argv is world-readable in /proc) and are not on every image; passlib is
unmaintained. The algorithm is short and completely specified by its author
(Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512"), uses only
hashlib, and is checked in the tests against the specification's vectors
and against `openssl passwd`. Hashing is pure (the salt is an argument), so
the caller decides where randomness comes from (`secrets` in the service).

WALinuxAgent's `Provisioning.PasswordCryptId`: 6 (SHA-512, the default) and 5
(SHA-256) are made here; 1 (MD5-crypt, broken) and 2a (bcrypt, needs a C
library) are refused with a reason and SHA-512 is used instead.
"""

from __future__ import annotations

import hashlib

SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SALT_MAX = 16
ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SUPPORTED = ("6", "5")
DEFAULT_ID = "6"
DEFAULT_SALT_LENGTH = 10
# A password is a human's; the fabric limits it to 123 characters. Far longer is refused
# (the algorithm's cost grows with the length).
PASSWORD_MAX = 1024

_B64 = SALT_CHARS
_ORDER_512 = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip
_ORDER_256 = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
    (27, 7, 17), (18, 28, 8), (9, 19, 29),
)  # fmt: skip


class PasswordHashError(ValueError):
    """The hash cannot be made as asked (bad salt, unsupported id); str() never holds the password."""


def _b64(b2: int, b1: int, b0: int, count: int) -> str:
    word = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(count):
        out.append(_B64[word & 0x3F])
        word >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    whole, rest = divmod(length, len(digest))
    return digest * whole + digest[:rest]


def _sha_crypt(name: str, password: bytes, salt: bytes, rounds: int) -> bytes:
    def new() -> hashlib._Hash:
        return hashlib.new(name)

    size = new().digest_size
    b = new()
    b.update(password + salt + password)
    digest_b = b.digest()
    a = new()
    a.update(password + salt)
    a.update(_repeat(digest_b, len(password)))
    length = len(password)
    while length:
        a.update(digest_b if length & 1 else password)
        length >>= 1
    digest_a = a.digest()
    dp = new()
    for _ in range(len(password)):
        dp.update(password)
    p_bytes = _repeat(dp.digest(), len(password))
    ds = new()
    for _ in range(16 + digest_a[0]):
        ds.update(salt)
    s_bytes = ds.digest()[: len(salt)]
    c = digest_a
    for i in range(rounds):
        step = new()
        step.update(p_bytes if i & 1 else c)
        if i % 3:
            step.update(s_bytes)
        if i % 7:
            step.update(p_bytes)
        step.update(c if i & 1 else p_bytes)
        c = step.digest()
    assert len(c) == size
    return c


def _encode(digest: bytes) -> str:
    if len(digest) == 64:
        text = "".join(_b64(digest[x], digest[y], digest[z], 4) for x, y, z in _ORDER_512)
        return text + _b64(0, 0, digest[63], 2)
    text = "".join(_b64(digest[x], digest[y], digest[z], 4) for x, y, z in _ORDER_256)
    return text + _b64(0, digest[31], digest[30], 3)


def check_salt(salt: str) -> str:
    """The salt as the algorithm uses it (at most 16 characters of [./0-9A-Za-z])."""
    if not salt or any(ch not in SALT_CHARS for ch in salt):
        raise PasswordHashError("a salt is 1 to 16 characters of [./0-9A-Za-z]")
    return salt[:SALT_MAX]


def sha_crypt(password: str, salt: str, crypt_id: str = DEFAULT_ID, rounds: int | None = None) -> str:
    """`$6$salt$hash` (or `$5$...`; with `rounds`, `$6$rounds=N$salt$hash`)."""
    if crypt_id not in SUPPORTED:
        raise PasswordHashError(f"crypt id {crypt_id!r} is not supported (only {', '.join(SUPPORTED)})")
    data = password.encode("utf-8", "surrogateescape")
    if len(data) > PASSWORD_MAX:
        raise PasswordHashError(f"password longer than {PASSWORD_MAX} bytes")
    salt = check_salt(salt)
    count = ROUNDS_DEFAULT if rounds is None else min(max(rounds, ROUNDS_MIN), ROUNDS_MAX)
    digest = _sha_crypt("sha512" if crypt_id == "6" else "sha256", data, salt.encode("ascii"), count)
    prefix = f"${crypt_id}$" if rounds is None else f"${crypt_id}$rounds={count}$"
    return f"{prefix}{salt}${_encode(digest)}"


def choose_id(configured: str) -> tuple[str, str | None]:
    """(the id to use, a note when the configured one was refused)."""
    wanted = configured.strip()
    if wanted in SUPPORTED:
        return wanted, None
    return DEFAULT_ID, (
        f"Provisioning.PasswordCryptId {wanted[:8]!r} is not supported (MD5 is broken, bcrypt needs a "
        f"C library): SHA-512 ($6$) is used"
    )


def salt_length(configured: int) -> int:
    """PasswordCryptSaltLength clamped to what the algorithm uses (1 to 16)."""
    return max(1, min(SALT_MAX, configured))
