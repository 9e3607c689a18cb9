"""The SmartOS / Triton metadata protocol, version 2: frames as values. Pure, no I/O.

A frame is one line (Triton's "Metadata Protocol Specification, Version 2"):

    V2 <body length> <crc32 of the body, 8 lower-case hex digits> <body>\\n

and the body is `<request id: 8 lower-case hex digits> <CODE> [<payload in base64>]`.
Requests and answers share the shape: the guest sends `GET`, `KEYS`, `PUT` or
`DELETE` with a fresh request id, the host answers `SUCCESS`, `NOTFOUND` or
`FAILURE` with the same id. The length counts the body's bytes, the CRC is
the usual CRC-32 (polynomial 0xEDB88320, zlib's). A `PUT` payload is itself
`base64(key) + " " + base64(value)`, base64-encoded again by the frame.

Before any frame the guest negotiates on the plain line: `NEGOTIATE V2\\n`,
answered `V2_OK\\n` by a version-2 host; a bare `\\n` is answered
`invalid command\\n` (a way to find a line boundary on a shared serial port).

Everything here decodes hostile input: a line that is not a frame raises
MdataProtocolError (a ValueError) with a reason safe to log, never anything
else, and is bounded by MAX_LINE.
"""

from __future__ import annotations

import binascii
import re
import zlib

import attrs

NEGOTIATE = b"NEGOTIATE V2\n"
V2_OK = "V2_OK"
RESET = b"\n"
INVALID_COMMAND = "invalid command"

GET = "GET"
KEYS = "KEYS"
PUT = "PUT"
DELETE = "DELETE"
SUCCESS = "SUCCESS"
NOTFOUND = "NOTFOUND"
FAILURE = "FAILURE"

# The longest line either side may send. Triton caps a VM's metadata far below
# this; the bound only keeps one hostile line from growing without end.
MAX_LINE = 4 * 1024 * 1024
# A key as the host reads it: it trims the key and splits requests on whitespace.
MAX_KEY = 1024

_REQUEST_ID = re.compile(r"[0-9a-f]{8}")
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_DIGITS = re.compile(r"[1-9][0-9]{0,9}")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_KEY_BAD = re.compile(r"[\x00-\x20\x7f]")


class MdataProtocolError(ValueError):
    """A line that is not a well-formed version-2 frame; str() is safe to log."""


@attrs.frozen
class Frame:
    """One decoded frame. `payload` is the decoded bytes, None when the body has none."""

    request_id: str
    code: str
    payload: bytes | None = None


def crc32_hex(body: bytes) -> str:
    """The frame checksum of `body`: CRC-32, 8 lower-case hex digits."""
    return f"{zlib.crc32(body) & 0xFFFFFFFF:08x}"


def is_request_id(text: str) -> bool:
    return _REQUEST_ID.fullmatch(text) is not None


def check_key(key: str) -> str:
    """`key` if the host can read it back as sent; MdataProtocolError otherwise.

    The host trims keys and splits plain-text requests on whitespace, so a key
    with a space, a control character or nothing in it would name another key.
    """
    if not key:
        raise MdataProtocolError("an empty key")
    if len(key) > MAX_KEY:
        raise MdataProtocolError(f"a key longer than {MAX_KEY} characters")
    if _KEY_BAD.search(key):
        raise MdataProtocolError("a key with whitespace or control characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MdataProtocolError("a key that is not valid Unicode text") from exc
    return key


def b64encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def b64decode(data: bytes) -> bytes:
    """Strict base64 (the alphabet, padding, length); MdataProtocolError otherwise."""
    if len(data) % 4 or not _BASE64.fullmatch(data):
        raise MdataProtocolError("payload is not base64")
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise MdataProtocolError("payload is not base64") from exc


def encode_frame(request_id: str, code: str, payload: bytes | None = None) -> bytes:
    """The line (with its newline) that carries one request or answer."""
    if not is_request_id(request_id):
        raise MdataProtocolError("a request id is 8 lower-case hex digits")
    if not _CODE.fullmatch(code):
        raise MdataProtocolError("a code is one upper-case word")
    body = f"{request_id} {code}".encode("ascii")
    if payload is not None:
        body += b" " + b64encode(payload)
    frame = b"V2 %d %s " % (len(body), crc32_hex(body).encode("ascii")) + body + b"\n"
    if len(frame) > MAX_LINE:
        raise MdataProtocolError(f"a frame longer than {MAX_LINE} bytes")
    return frame


def decode_frame(line: bytes) -> Frame:
    """Decode one line (its trailing newline, and a CR before it, are allowed).

    Checks, in order: the `V2 ` marker, the length (decimal, the body's exact
    byte count), the CRC (8 hex digits, compared as a number), the request id
    (8 lower-case hex digits), the code (an upper-case word) and the payload
    (strict base64). Raises MdataProtocolError for the first that fails.
    """
    if not isinstance(line, bytes | bytearray):
        raise MdataProtocolError("a frame is bytes")
    if len(line) > MAX_LINE:
        raise MdataProtocolError(f"a line longer than {MAX_LINE} bytes")
    data = bytes(line)
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    if not data.startswith(b"V2 "):
        raise MdataProtocolError("not a V2 frame")
    parts = data[3:].split(b" ", 2)
    if len(parts) != 3:
        raise MdataProtocolError("a V2 frame needs a length, a checksum and a body")
    length, checksum, body = parts
    try:
        length_text, checksum_text = length.decode("ascii"), checksum.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MdataProtocolError("the frame header is not ASCII") from exc
    if not _DIGITS.fullmatch(length_text):
        raise MdataProtocolError("the frame length is not a positive decimal number")
    if int(length_text) != len(body):
        raise MdataProtocolError(f"the frame says {length_text} bytes, the body has {len(body)}")
    if not _HEX8.fullmatch(checksum_text):
        raise MdataProtocolError("the frame checksum is not 8 hex digits")
    if int(checksum_text, 16) != zlib.crc32(body) & 0xFFFFFFFF:
        raise MdataProtocolError("the frame checksum does not match its body")
    fields = body.split(b" ")
    if len(fields) not in (2, 3):
        raise MdataProtocolError("a frame body is a request id, a code and at most one payload")
    try:
        request_id, code = fields[0].decode("ascii"), fields[1].decode("ascii")
    except UnicodeDecodeError as exc:
        raise MdataProtocolError("the frame body is not ASCII") from exc
    if not is_request_id(request_id):
        raise MdataProtocolError("the request id is not 8 lower-case hex digits")
    if not _CODE.fullmatch(code):
        raise MdataProtocolError("the code is not an upper-case word")
    payload = b64decode(fields[2]) if len(fields) == 3 else None
    return Frame(request_id, code, payload)


def put_payload(key: str, value: bytes) -> bytes:
    """What a PUT frame carries (before the frame's own base64): base64(key) SP base64(value)."""
    check_key(key)
    return b64encode(key.encode("utf-8")) + b" " + b64encode(value)


def split_put_payload(payload: bytes) -> tuple[str, bytes]:
    """(key, value) of a PUT payload; MdataProtocolError when it is not one."""
    parts = payload.split(b" ")
    if len(parts) != 2:
        raise MdataProtocolError("a PUT payload is two base64 words")
    try:
        key = b64decode(parts[0]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MdataProtocolError("a PUT key is not UTF-8") from exc
    return check_key(key), b64decode(parts[1])


def keys_of(payload: bytes | None) -> tuple[str, ...]:
    """The key names a KEYS answer lists (one per line; empty lines skipped)."""
    if not payload:
        return ()
    text = payload.decode("utf-8", "replace")
    return tuple(line for line in text.split("\n") if line)


def failure_message(payload: bytes | None, limit: int = 200) -> str:
    """A FAILURE answer's message, printable and short enough to log."""
    if not payload:
        return ""
    text = payload[: limit * 4].decode("utf-8", "replace")
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown[:limit]
