"""Strict checks for what metadata asks the agent to put on disk.

Usernames end up in argv of useradd and in paths under /home; key lines end
up in authorized_keys, where an embedded newline would smuggle in a second
key with options of the attacker's choosing. Everything is refused unless it
is clearly safe, and every refusal has a reason that carries no key material.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Collection

import attrs

from guestagent.domain.ec_curves import ec_point_is_valid

USERNAME_MAX = 32
KEY_LINE_MAX = 16 * 1024

# ASCII letters, digits, dot, underscore and hyphen; never a leading hyphen
# (it would read as an option to useradd). This is the old Python agent's
# rule, which the Go agent relaxed to "not empty"; we keep the strict one.
_USERNAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")
# Control characters other than tab (newline, CR and NUL are refused before this).
_BLANKS = re.compile(r"[ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Names that exist on every Debian/RHEL base system. The passwd view adds the
# machine's own accounts below UID_MIN at run time.
BASE_SYSTEM_USERS = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail",
        "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats",
        "nobody", "systemd-network", "systemd-resolve", "messagebus", "sshd",
        "adm", "halt", "shutdown", "operator", "ftp", "_apt", "polkitd",
    }
)  # fmt: skip

PLAIN_KEY_TYPES = frozenset(
    {
        "ssh-rsa",
        "ssh-dss",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
KEY_TYPES = PLAIN_KEY_TYPES | frozenset(t.split("@")[0] + "-cert-v01@openssh.com" for t in PLAIN_KEY_TYPES)


class Invalid(ValueError):
    """A value was refused; str(exc) is a reason that is safe to log."""


def check_username(
    name: str,
    system_users: Collection[str] = BASE_SYSTEM_USERS,
    allowed_system_users: Collection[str] = (),
) -> str:
    """Return `name` if it is a safe account name for the agent to manage."""
    if not name:
        raise Invalid("empty username")
    if len(name) > USERNAME_MAX:
        raise Invalid(f"username longer than {USERNAME_MAX} characters")
    if not name.isascii():
        raise Invalid("username has non-ASCII characters")
    if name.startswith("-"):
        raise Invalid("username starts with '-'")
    if _USERNAME.fullmatch(name) is None:
        raise Invalid("username has characters outside [A-Za-z0-9._-]")
    if name in {".", ".."} or name.isdigit():
        raise Invalid("username is '.', '..' or all digits")
    if name in system_users and name not in allowed_system_users:
        raise Invalid(f"username {name!r} is a system account")
    return name


@attrs.frozen
class KeyLine:
    """A parsed authorized_keys line. `text` is the line to install, verbatim."""

    text: str
    options: str
    key_type: str
    comment: str


def _split_options(line: str) -> tuple[str, str]:
    """Split a leading options field off, honouring double quotes.

    authorized_keys options may hold quoted strings with spaces
    (command="echo hi"), so a plain split() would cut them apart.
    """
    in_quotes = False
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch in " \t" and not in_quotes:
            return line[:i], line[i:].lstrip(" \t")
    if in_quotes:
        raise Invalid("unterminated quote in key options")
    return line, ""


def _fields(blob: bytes) -> list[bytes]:
    """Split an SSH wire blob into its length-prefixed fields; Invalid unless they fill it exactly."""
    fields = []
    offset = 0
    while offset < len(blob):
        if len(blob) - offset < 4:
            raise Invalid("key data is truncated")
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        offset += 4
        if length > len(blob) - offset:
            raise Invalid("key data is truncated")
        fields.append(blob[offset : offset + length])
        offset += length
    return fields


def _decode_base64(b64: str) -> bytes:
    """OpenSSH's decoder: the standard alphabet, padding exactly as long as needed, and
    zero bits past the last byte. Python's decoder is laxer (extra `=` pass), and a
    line sshd cannot read would create an account with no usable key."""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid("key data is not valid base64") from exc
    if base64.b64encode(blob).decode("ascii") != b64:
        raise Invalid("key data is not canonical base64 (padding or trailing bits)")
    return blob


# The fields of each plain key type after its name: "s" a string, "m" an mpint, "e" a
# curve point. OpenSSH refuses a blob with fields left over, so the count is exact.
_LAYOUT = {
    "ssh-rsa": "mm",
    "ssh-dss": "mmmm",
    "ssh-ed25519": "s",
    "ecdsa-sha2-nistp256": "se",
    "ecdsa-sha2-nistp384": "se",
    "ecdsa-sha2-nistp521": "se",
    "sk-ssh-ed25519@openssh.com": "ss",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ses",
}
RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
RSA_MAX_BITS = 16384


def _mpint(field: bytes) -> int:
    if field and field[0] & 0x80:
        raise Invalid("key data holds a negative number")
    return int.from_bytes(field, "big")


def _check_plain(fields: list[bytes], key_type: str) -> None:
    layout = _LAYOUT[key_type]
    if len(fields) < 1 + len(layout):
        raise Invalid("key data is truncated")
    if len(fields) > 1 + len(layout):
        raise Invalid("key data has extra fields")
    values = fields[1:]
    for kind, field in zip(layout, values, strict=True):
        if kind == "m":
            _mpint(field)
    if key_type == "ssh-rsa":
        bits = _mpint(values[1]).bit_length()
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise Invalid(f"RSA key of {bits} bits (OpenSSH accepts {RSA_MIN_BITS} to {RSA_MAX_BITS})")
    elif key_type.endswith("ed25519") or key_type.startswith("sk-ssh-ed25519"):
        if len(values[0]) != 32:
            raise Invalid("key data has the wrong length for ed25519")
    elif "ecdsa" in key_type:
        curve = key_type.split("-")[-1].split("@")[0]
        if values[0] != curve.encode():
            raise Invalid("key data names another curve than its key type")
        if not ec_point_is_valid(curve, values[1]):
            raise Invalid("key data is not a point on its curve")


def _check_blob(b64: str, key_type: str) -> None:
    blob = _decode_base64(b64)
    if key_type in PLAIN_KEY_TYPES:
        # A public key is its type followed by length-prefixed fields that fill the blob
        # exactly; a cut-off paste fails here instead of in sshd at login time.
        fields = _fields(blob)
    else:
        # Certificates carry fixed-width integers too; their type string is what we can check.
        fields = _fields(blob[: 4 + struct.unpack(">I", blob[:4])[0]]) if len(blob) >= 4 else []
    if not fields or fields[0] != key_type.encode():
        raise Invalid("key data does not match its key type")
    if key_type in PLAIN_KEY_TYPES:
        _check_plain(fields, key_type)


def parse_key_line(line: str) -> KeyLine:
    """Validate one authorized_keys line; the returned text is safe to write."""
    if any(c in line for c in "\n\r\x00"):
        raise Invalid("key line contains a newline or NUL")
    text = line.strip(" \t")
    if not text:
        raise Invalid("empty key")
    if len(text) > KEY_LINE_MAX:
        raise Invalid(f"key line longer than {KEY_LINE_MAX} characters")
    if not text.isascii() or _CONTROL.search(text):
        raise Invalid("key line has control or non-ASCII characters")
    options = ""
    first, rest = _split_options(text)
    if first not in KEY_TYPES:
        options, text_after = first, rest
        first, rest = _split_options(text_after) if text_after else ("", "")
    if first not in KEY_TYPES:
        raise Invalid("unknown or missing key type")
    # The key data ends at a space or a tab, as OpenSSH reads it.
    b64, *tail = _BLANKS.split(rest, maxsplit=1)
    comment = tail[0] if tail else ""
    if not b64:
        raise Invalid("missing key data")
    _check_blob(b64, first)
    return KeyLine(text=text, options=options, key_type=first, comment=comment.strip())
