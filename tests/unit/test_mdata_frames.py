"""The SmartOS metadata protocol's version-2 frames: the specification's example, checksums,
request ids, PUT's nested base64, and hostile lines that must raise only MdataProtocolError."""

from __future__ import annotations

import base64
import contextlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain import mdata
from guestagent.domain.mdata import Frame, MdataProtocolError

# The specification's example answer: `V2 21 265ae1d8 dc4fae17 SUCCESS W10=` (payload "[]").
SPEC_EXAMPLE = b"V2 21 265ae1d8 dc4fae17 SUCCESS W10=\n"


def frame_of(body: bytes, *, length: int | None = None, crc: str | None = None) -> bytes:
    size = len(body) if length is None else length
    check = f"{zlib.crc32(body) & 0xFFFFFFFF:08x}" if crc is None else crc
    return b"V2 %d %s %s\n" % (size, check.encode(), body)


# ------------------------------------------------------------------ the documented shapes


def test_the_specification_example_decodes() -> None:
    assert mdata.decode_frame(SPEC_EXAMPLE) == Frame("dc4fae17", "SUCCESS", b"[]")


def test_the_specification_example_encodes_byte_for_byte() -> None:
    assert mdata.encode_frame("dc4fae17", "SUCCESS", b"[]") == SPEC_EXAMPLE


def test_crc32_is_the_usual_polynomial() -> None:
    assert mdata.crc32_hex(b"123456789") == "cbf43926"  # the CRC-32 check value
    assert mdata.crc32_hex(b"") == "00000000"
    assert mdata.crc32_hex(b"dc4fae17 SUCCESS W10=") == "265ae1d8"


def test_a_get_request_carries_the_key_in_base64() -> None:
    line = mdata.encode_frame("0123abcd", mdata.GET, b"sdc:uuid")
    body = b"0123abcd GET " + base64.b64encode(b"sdc:uuid")
    assert line == frame_of(body)
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_a_request_without_payload_has_two_fields() -> None:
    assert mdata.encode_frame("0123abcd", mdata.KEYS) == frame_of(b"0123abcd KEYS")
    assert mdata.decode_frame(frame_of(b"0123abcd NOTFOUND")) == Frame("0123abcd", "NOTFOUND", None)


def test_put_payload_is_base64_of_two_base64_words() -> None:
    payload = mdata.put_payload("guestagent:hostkeys/ssh-ed25519", b"AAAA key\nline")
    key_b64, value_b64 = payload.split(b" ")
    assert base64.b64decode(key_b64) == b"guestagent:hostkeys/ssh-ed25519"
    assert base64.b64decode(value_b64) == b"AAAA key\nline"
    line = mdata.encode_frame("0123abcd", mdata.PUT, payload)
    body = line.split(b" ", 3)[3].rstrip(b"\n")
    assert body == b"0123abcd PUT " + base64.b64encode(payload)
    assert mdata.split_put_payload(payload) == ("guestagent:hostkeys/ssh-ed25519", b"AAAA key\nline")


def test_an_empty_success_payload() -> None:
    assert mdata.decode_frame(frame_of(b"0123abcd SUCCESS")).payload is None
    assert mdata.decode_frame(mdata.encode_frame("0123abcd", "SUCCESS", b"")).payload == b""


def test_keys_answer_lists_one_key_per_line() -> None:
    assert mdata.keys_of(b"root_authorized_keys\nuser-script\n\nfoo") == (
        "root_authorized_keys",
        "user-script",
        "foo",
    )
    assert mdata.keys_of(None) == ()
    assert mdata.keys_of(b"") == ()


def test_a_trailing_cr_and_upper_case_checksum_are_accepted() -> None:
    body = b"dc4fae17 SUCCESS W10="
    assert mdata.decode_frame(frame_of(body).rstrip(b"\n") + b"\r\n").payload == b"[]"
    assert mdata.decode_frame(frame_of(body, crc="265AE1D8")).payload == b"[]"


def test_failure_messages_are_printable_and_short() -> None:
    assert mdata.failure_message(b'Cannot update the "sdc" Namespace.') == 'Cannot update the "sdc" Namespace.'
    assert mdata.failure_message(b"bad\x1b[31mred\nx") == "bad?[31mred?x"
    assert len(mdata.failure_message(b"x" * 10_000)) == 200
    assert mdata.failure_message(None) == ""


# ------------------------------------------------------------------ what is refused


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "not a V2 frame"),
        (b"SUCCESS\n", "not a V2 frame"),
        (b"invalid command\n", "not a V2 frame"),
        (b"V2_OK\n", "not a V2 frame"),
        (b"V2 21 265ae1d8\n", "needs a length"),
        (frame_of(b"dc4fae17 SUCCESS W10=", length=22), "says 22 bytes"),
        (frame_of(b"dc4fae17 SUCCESS W10=", length=0), "positive decimal"),
        (frame_of(b"dc4fae17 SUCCESS W10=", crc="265ae1d9"), "checksum does not match"),
        (frame_of(b"dc4fae17 SUCCESS W10=", crc="65ae1d8"), "not 8 hex digits"),
        (frame_of(b"dc4fae17 SUCCESS W10=", crc="-65ae1d8"), "not 8 hex digits"),
        (frame_of(b"DC4FAE17 SUCCESS W10="), "request id"),
        (frame_of(b"dc4fae1 SUCCESS W10="), "request id"),
        (frame_of(b"dc4fae17 success W10="), "code"),
        (frame_of(b"dc4fae17 SUCCESS W10"), "base64"),
        (frame_of(b"dc4fae17 SUCCESS W=10"), "base64"),
        (frame_of(b"dc4fae17 SUCCESS W1 0="), "at most one payload"),
        (frame_of(b"dc4fae17"), "request id, a code"),
        (frame_of("dc4fae17 SUCCÈS".encode()), "not ASCII"),
        (b"V2 \xff\xfe 265ae1d8 x\n", "header is not ASCII"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(MdataProtocolError, match=reason):
        mdata.decode_frame(line)


def test_an_over_long_line_is_refused() -> None:
    with pytest.raises(MdataProtocolError, match="longer than"):
        mdata.decode_frame(b"V2 " + b"1" * mdata.MAX_LINE)


def test_encode_refuses_what_the_host_could_not_read() -> None:
    with pytest.raises(MdataProtocolError):
        mdata.encode_frame("DC4FAE17", "GET", b"x")
    with pytest.raises(MdataProtocolError):
        mdata.encode_frame("dc4fae17", "get", b"x")


@pytest.mark.parametrize("key", ["", "two words", "tab\there", "new\nline", "nul\x00", "x" * 1025, "\ud800"])
def test_keys_the_host_would_misread_are_refused(key: str) -> None:
    with pytest.raises(MdataProtocolError):
        mdata.check_key(key)
    with pytest.raises(MdataProtocolError):
        mdata.put_payload(key, b"v")


def test_split_put_payload_refuses_garbage() -> None:
    for payload in (b"", b"onlyone", b"a b c", b"!!!! QQ==", base64.b64encode(b"x y") + b" QQ=="):
        with pytest.raises(MdataProtocolError):
            mdata.split_put_payload(payload)


# ------------------------------------------------------------------ properties

request_ids = st.text("0123456789abcdef", min_size=8, max_size=8)
codes = st.from_regex(r"[A-Z][A-Z0-9_]{0,31}", fullmatch=True)
payloads = st.none() | st.binary(max_size=2048)


@given(request_ids, codes, payloads)
@settings(max_examples=300, deadline=None)
def test_every_frame_round_trips(request_id: str, code: str, payload: bytes | None) -> None:
    line = mdata.encode_frame(request_id, code, payload)
    assert mdata.decode_frame(line) == Frame(request_id, code, payload)


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_garbage_raises_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(MdataProtocolError):
        mdata.decode_frame(data)


@given(st.binary(max_size=300).map(lambda b: b"V2 " + b))
@settings(max_examples=300, deadline=None)
def test_near_frames_raise_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(MdataProtocolError):
        mdata.decode_frame(data)


@given(request_ids, st.binary(min_size=1, max_size=256), st.data())
@settings(max_examples=300, deadline=None)
def test_any_one_changed_byte_in_the_body_is_caught(request_id: str, payload: bytes, data: st.DataObject) -> None:
    line = mdata.encode_frame(request_id, "SUCCESS", payload)
    header_end = line.index(b" ", line.index(b" ", 3) + 1) + 1
    position = data.draw(st.integers(header_end, len(line) - 2))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[position] and b != 0x0A))
    mutated = line[:position] + bytes([new]) + line[position + 1 :]
    with pytest.raises(MdataProtocolError):
        mdata.decode_frame(mutated)


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x10FFFF), min_size=1, max_size=100), st.binary())
@settings(max_examples=200, deadline=None)
def test_put_payload_round_trips(key: str, value: bytes) -> None:
    try:
        mdata.check_key(key)
    except MdataProtocolError:
        return  # (surrogates, DEL, too long): refused both ways, see the next test
    assert mdata.split_put_payload(mdata.put_payload(key, value)) == (key, value)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_split_put_payload_raises_only_the_protocol_error(data: bytes) -> None:
    with contextlib.suppress(MdataProtocolError):
        mdata.split_put_payload(data)
