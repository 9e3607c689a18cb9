"""The strict cpio reader: archives GNU cpio wrote in every format, and everything it refuses."""

from __future__ import annotations

import hashlib
import stat
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain.cpio import (
    ENTRIES_MAX,
    FILE_MAX,
    TOTAL_MAX,
    CpioError,
    CpioTruncated,
    clean_name,
    parse_archive,
    read_bound,
    sniff,
)

# `printf 'nodename\nfirstboot.sh\n' | cpio -o -H FORMAT --reproducible` (GNU cpio 2.13) with
# nodename = "web-1\n" (0644) and firstboot.sh = "#!/bin/sh\necho hi\n" (0755); each padded
# with zeros to 512 bytes, as cpio writes it. Trailing zeros are cut here and put back below.
GNU = {
    "binary-le": (
        "c77100000000a48100000000010000000e6b334e0900000006006e6f64656e616d6500007765622d310ac77100000100"
        "ed8100000000010000000e6b334e0d00000012006669727374626f6f742e7368000023212f62696e2f73680a6563686f"
        "2068690ac7710000000000000000000001000000000000000b0000000000545241494c4552212121"
    ),
    "odc": (
        "303730373037303030303030303030303030313030363434303030303030303030303030303030303031303030303030"
        "313533303334343730363330303030313130303030303030303030366e6f64656e616d65007765622d310a3037303730"
        "373030303030303030303030313130303735353030303030303030303030303030303030313030303030303135333033"
        "34343730363330303030313530303030303030303032326669727374626f6f742e73680023212f62696e2f73680a6563"
        "686f2068690a303730373037303030303030303030303030303030303030303030303030303030303030303030303031"
        "30303030303030303030303030303030303030303031333030303030303030303030545241494c4552212121"
    ),
    "newc": (
        "303730373031303030303030303030303030383141343030303030303030303030303030303030303030303030313642"
        "304534453333303030303030303630303030303030303030303030303030303030303030303030303030303030303030"
        "30303030303930303030303030306e6f64656e616d6500007765622d310a000030373037303130303030303030313030"
        "303038314544303030303030303030303030303030303030303030303031364230453445333330303030303031323030"
        "303030303030303030303030303030303030303030303030303030303030303030303030304430303030303030306669"
        "727374626f6f742e7368000023212f62696e2f73680a6563686f2068690a000030373037303130303030303030303030"
        "303030303030303030303030303030303030303030303030303030303031303030303030303030303030303030303030"
        "303030303030303030303030303030303030303030303030303030303030303030303030304230303030303030305452"
        "41494c4552212121"
    ),
    "newc-crc": (
        "303730373032303030303030303030303030383141343030303030303030303030303030303030303030303030313642"
        "304534453333303030303030303630303030303030303030303030303030303030303030303030303030303030303030"
        "30303030303930303030303141366e6f64656e616d6500007765622d310a000030373037303230303030303030313030"
        "303038314544303030303030303030303030303030303030303030303031364230453445333330303030303031323030"
        "303030303030303030303030303030303030303030303030303030303030303030303030304430303030303535416669"
        "727374626f6f742e7368000023212f62696e2f73680a6563686f2068690a000030373037303230303030303030303030"
        "303030303030303030303030303030303030303030303030303030303031303030303030303030303030303030303030"
        "303030303030303030303030303030303030303030303030303030303030303030303030304230303030303030305452"
        "41494c4552212121"
    ),
}
FILES = {"nodename": b"web-1\n", "firstboot.sh": b"#!/bin/sh\necho hi\n"}


def gnu(fmt: str) -> bytes:
    data = bytes.fromhex(GNU[fmt])
    return data + b"\0" * (512 - len(data))


# ------------------------------------------------------------------ writers for the cases GNU cpio won't make


def newc(name: str, data: bytes = b"", mode: int = 0o100644, nlink: int = 1, *, crc: bool = False,
         check: int | None = None) -> bytes:  # fmt: skip
    encoded = name.encode() + b"\0"
    if check is None:
        check = sum(data) & 0xFFFFFFFF if crc else 0
    fields = (1, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), check)
    out = (b"070702" if crc else b"070701") + b"".join(f"{f:08X}".encode() for f in fields) + encoded
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def newc_archive(*entries: bytes, crc: bool = False) -> bytes:
    return b"".join(entries) + newc("TRAILER!!!", mode=0, crc=crc)


def odc(name: str, data: bytes = b"", mode: int = 0o100644, nlink: int = 1) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (0, 1, mode, 0, 0, nlink, 0, 0, len(encoded), len(data))  # ..., rdev, mtime, namesize, filesize
    header = b"070707" + b"%06o%06o%06o%06o%06o%06o%06o%011o%06o%011o" % fields
    assert len(header) == 76
    return header + encoded + data


def binary(name: str, data: bytes = b"", mode: int = 0o100644, nlink: int = 1, order: str = "<", *,
           ino: int = 1, mtime: int = 0) -> bytes:  # fmt: skip
    encoded = name.encode() + b"\0"
    size = len(data)
    header = struct.pack(f"{order}13H", 0o070707, 0, ino, mode, 0, 0, nlink, 0, mtime >> 16, mtime & 0xFFFF,
                         len(encoded), size >> 16, size & 0xFFFF)  # fmt: skip
    out = header + encoded + b"\0" * (len(encoded) % 2) + data
    return out + b"\0" * (len(out) % 2)


def binary_archive(*entries: tuple[str, bytes, int], order: str = "<") -> bytes:
    out = b"".join(binary(n, d, m, order=order) for n, d, m in entries)
    return out + binary("TRAILER!!!", mode=0, order=order)


# ------------------------------------------------------------------ every format cpio writes


@pytest.mark.parametrize("fmt", sorted(GNU))
def test_archives_gnu_cpio_wrote_are_read(fmt: str) -> None:
    data = gnu(fmt)
    assert sniff(data) == fmt
    archive = parse_archive(data)
    assert archive.format == fmt
    assert dict(archive.files) == FILES
    assert archive.size < 512  # the zeros after the trailer are not the archive's
    assert archive.digest == hashlib.sha256(data[: archive.size]).hexdigest()


def test_the_binary_writer_here_matches_gnu_cpio() -> None:
    # Byte for byte (mtime words most significant first, name padded to even), so the
    # big-endian archives below, which GNU cpio on x86 does not write, are trustworthy.
    ours = binary("nodename", FILES["nodename"], 0o100644, ino=0, mtime=0x6B0E4E33)
    assert gnu("binary-le").startswith(ours)


def test_binary_big_endian() -> None:
    data = binary_archive(("nodename", b"web-1\n", 0o100644), order=">")
    assert data[:2] == b"\x71\xc7"
    archive = parse_archive(data)
    assert (archive.format, dict(archive.files)) == ("binary-be", {"nodename": b"web-1\n"})


def test_binary_file_size_spans_two_words() -> None:
    big = bytes(range(256)) * 300  # 76800 bytes: more than one 16-bit word holds
    archive = parse_archive(binary_archive(("blob", big, 0o100644)))
    assert archive.files["blob"] == big


def test_odc_written_here() -> None:
    data = odc("nodename", b"host\n") + odc("TRAILER!!!", mode=0)
    assert dict(parse_archive(data).files) == {"nodename": b"host\n"}


def test_dot_slash_names_and_directory_entries() -> None:
    # `find . | cpio -o` writes "." and "./name".
    data = newc_archive(newc(".", mode=0o040755, nlink=2), newc("./nodename", b"h\n"), newc("sub", mode=0o040755),
                        newc("sub/file", b"x"))  # fmt: skip
    assert dict(parse_archive(data).files) == {"nodename": b"h\n", "sub/file": b"x"}


def test_an_archive_cut_right_after_the_trailer_name_is_complete() -> None:
    data = newc_archive(newc("nodename", b"h\n"))
    trailer_name_end = data.index(b"TRAILER!!!") + len(b"TRAILER!!!\0")
    assert parse_archive(data[:trailer_name_end]).files == {"nodename": b"h\n"}


def test_junk_after_the_archive_changes_nothing() -> None:
    data = newc_archive(newc("nodename", b"h\n"))
    assert parse_archive(data + b"\xff" * 4096) == parse_archive(data)


def test_empty_archive() -> None:
    assert dict(parse_archive(newc_archive()).files) == {}


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (newc("nodename", b"/etc/shadow", mode=stat.S_IFLNK | 0o777), "symbolic link"),
        (newc("disk", mode=stat.S_IFBLK | 0o600), "block device"),
        (newc("tty", mode=stat.S_IFCHR | 0o600), "character device"),
        (newc("pipe", mode=stat.S_IFIFO | 0o600), "FIFO"),
        (newc("sock", mode=stat.S_IFSOCK | 0o600), "socket"),
        (newc("odd", mode=0o644), "unknown type"),
        (newc("/etc/passwd", b"x"), "absolute name"),
        (newc("../nodename", b"x"), "'..'"),
        (newc("a/../../b", b"x"), "'..'"),
        (newc("a//b", b"x"), "empty or '.'"),
        (newc("nodename", b"x", nlink=2), "hard link"),
        (newc("node\nname", b"x"), "control characters"),
        (newc(".", b"x"), "named '.'"),
        (newc("dir", b"x", mode=0o040755), "has data"),
    ],
)
def test_entries_that_refuse_the_archive(entry: bytes, reason: str) -> None:
    with pytest.raises(CpioError, match=reason) as caught:
        parse_archive(newc_archive(newc("nodename", b"ok\n"), entry))
    assert "\n" not in str(caught.value)


def test_a_name_twice() -> None:
    with pytest.raises(CpioError, match="twice"):
        parse_archive(newc_archive(newc("nodename", b"a"), newc("./nodename", b"b")))


def test_per_file_limit() -> None:
    parse_archive(newc_archive(newc("f", b"x" * 100)), file_max=100)
    with pytest.raises(CpioError, match="larger than 100 bytes"):
        parse_archive(newc_archive(newc("f", b"x" * 101)), file_max=100)


def test_total_limit() -> None:
    data = newc_archive(newc("a", b"x" * 60), newc("b", b"x" * 60))
    with pytest.raises(CpioError, match="together are larger than 100"):
        parse_archive(data, total_max=100)


def test_entry_limit() -> None:
    entries = [newc(f"f{i}", b"") for i in range(5)]
    parse_archive(newc_archive(*entries), entries_max=5)
    with pytest.raises(CpioError, match="more than 4 entries"):
        parse_archive(newc_archive(*entries), entries_max=4)


def test_the_default_limits() -> None:
    assert (FILE_MAX, TOTAL_MAX, ENTRIES_MAX) == (1024 * 1024, 8 * 1024 * 1024, 256)
    assert TOTAL_MAX < read_bound() < TOTAL_MAX + 2 * 1024 * 1024


@pytest.mark.parametrize("cut", [3, 50, 115, 125, 150])
def test_truncated_archives_say_so(cut: int) -> None:
    data = newc_archive(newc("nodename", b"x" * 40))
    with pytest.raises(CpioTruncated):
        parse_archive(data[:cut])


def test_no_trailer_is_truncation() -> None:
    with pytest.raises(CpioTruncated, match="TRAILER"):
        parse_archive(newc("nodename", b"h\n"))


def test_not_cpio() -> None:
    for data in (b"", b"\0" * 512, b"\xebX\x90mkfs.fat", b"070708" + b"0" * 200):
        with pytest.raises(CpioError, match="not a cpio archive") as caught:
            parse_archive(data)
        assert not isinstance(caught.value, CpioTruncated)


def test_header_fields_must_be_plain_digits() -> None:
    good = newc("nodename", b"h\n")
    # int(" 1", 16) and int("+1", 16) would be accepted by Python: not by the reader.
    for bad in (b" 0000001", b"+0000001", b"0000_001"):
        with pytest.raises(CpioError, match="8 hexadecimal"):
            parse_archive(newc_archive(good[:6] + bad + good[14:]))
    odd = odc("nodename", b"h\n")
    with pytest.raises(CpioError, match="octal"):
        parse_archive(odd[:18] + b"10064+" + odd[24:] + odc("TRAILER!!!", mode=0))


def test_newc_checksum_is_checked() -> None:
    assert parse_archive(newc_archive(newc("f", b"abc", crc=True), crc=True)).files == {"f": b"abc"}
    with pytest.raises(CpioError, match="checksum"):
        parse_archive(newc_archive(newc("f", b"abc", crc=True, check=1), crc=True))


def test_names_must_be_utf8_and_nul_terminated() -> None:
    raw = newc("nodename", b"h\n")
    with pytest.raises(CpioError, match="UTF-8"):
        parse_archive(newc_archive(raw.replace(b"nodename", b"nod\xffname")))
    with pytest.raises(CpioError, match="NUL-terminated"):
        parse_archive(newc_archive(raw.replace(b"nodename\0", b"nodenameX")))


def test_clean_name() -> None:
    assert clean_name("./././a/b/") == "a/b"
    assert clean_name("./") == "."
    with pytest.raises(CpioError):
        clean_name("/a")


# ------------------------------------------------------------------ hostile input never escapes as anything else


def _parse_or_refuse(data: bytes) -> None:
    try:
        archive = parse_archive(data, file_max=4096, total_max=16384, entries_max=16)
    except CpioError:
        return
    assert all(len(body) <= 4096 for body in archive.files.values())
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in archive.files)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=400, deadline=None)
@given(fmt=st.sampled_from(sorted(GNU)), edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 512))  # fmt: skip
def test_mutated_real_archives(fmt: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(gnu(fmt))
    for where, value in edits:
        data[where] = value
    _parse_or_refuse(bytes(data[:cut]))
    _parse_or_refuse(bytes(data))
