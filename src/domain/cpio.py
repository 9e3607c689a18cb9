"""cpio archives read in memory, strictly: the illumos metadata device's format.

The CPIO metadata device (PROTOCOLS.md) has no filesystem: the raw disk holds
`cpio -o` output from LBA 0. The three formats cpio(1) writes are read:

    newc    magic "070701" (and "070702", newc with a checksum), 110-byte
            header of 8-digit hex fields, name and data padded to 4 bytes
    odc     magic "070707", 76-byte header of octal fields, no padding
    binary  magic 0o070707 as a 16-bit word in either byte order (bytes
            C7 71 little-endian, 71 C7 big-endian), 26-byte header of
            16-bit words, name and data padded to 2 bytes

Whatever comes from the device is untrusted, and only a few small files are
wanted, so the reader refuses rather than guesses: regular files only (a
directory entry is skipped, a link, device, FIFO or socket refuses the
archive), relative names without `..` or empty components, no hard links,
no name twice, each file at most `file_max` bytes, all of them together at
most `total_max`, at most `entries_max` entries, and the archive must end
with its `TRAILER!!!` entry inside the bytes given. Any breach raises
CpioError (a ValueError) with a reason safe to log; CpioTruncated says the
bytes ran out before the trailer, so a reader that gave a prefix of the
device can read more and try again.
"""

from __future__ import annotations

import hashlib
import re
import stat
import struct
from collections.abc import Mapping
from types import MappingProxyType

import attrs

NEWC = b"070701"
NEWC_CRC = b"070702"
ODC = b"070707"
BINARY_LE = b"\xc7\x71"
BINARY_BE = b"\x71\xc7"
TRAILER = "TRAILER!!!"
MAGIC_BYTES = 6  # enough to tell every format apart

FILE_MAX = 1024 * 1024
TOTAL_MAX = 8 * 1024 * 1024
ENTRIES_MAX = 256
NAME_MAX = 4096  # PATH_MAX, with the NUL

_NEWC_HEADER = 110
_ODC_HEADER = 76
_BINARY_HEADER = 26
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
_OCTAL = re.compile(rb"[0-7]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_bound(file_max: int = FILE_MAX, total_max: int = TOTAL_MAX, entries_max: int = ENTRIES_MAX) -> int:
    """The most bytes a well-formed archive within these limits can take, trailer
    included: a reader never needs more than this from the device."""
    per_entry = _NEWC_HEADER + NAME_MAX + 3 + 3  # header, name, both paddings
    return total_max + (entries_max + 1) * per_entry


class CpioError(ValueError):
    """The bytes are not an archive this reader accepts; str() is safe to log."""


class CpioTruncated(CpioError):
    """The bytes end before the archive's trailer (a longer read may complete it)."""


def _frozen(value: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return MappingProxyType(dict(value))


@attrs.frozen
class CpioArchive:
    """The regular files of an archive, by name ("./" prefixes dropped).

    `size` is how many bytes the archive took, trailer and padding included
    (a device holds zeros or stale data after it); `digest` is the SHA-256
    of exactly those bytes.
    """

    format: str  # "newc", "newc-crc", "odc", "binary-le" or "binary-be"
    files: Mapping[str, bytes] = attrs.field(converter=_frozen, repr=False)
    size: int = 0
    digest: str = ""


def sniff(head: bytes) -> str | None:
    """The format whose magic `head` starts with, or None (not a cpio archive)."""
    if head.startswith(NEWC):
        return "newc"
    if head.startswith(NEWC_CRC):
        return "newc-crc"
    if head.startswith(ODC):
        return "odc"
    if head.startswith(BINARY_LE):
        return "binary-le"
    if head.startswith(BINARY_BE):
        return "binary-be"
    return None


@attrs.frozen
class _Header:
    mode: int
    nlink: int
    namesize: int
    filesize: int
    check: int | None
    length: int  # header bytes
    align: int  # name and data are padded to this


def _shown(name: str) -> str:
    """A name fit for a log line: control characters escaped, bounded."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _need(data: bytes, offset: int, size: int, what: str) -> bytes:
    if offset + size > len(data):
        raise CpioTruncated(f"the archive ends inside {what} at byte {offset} (no {TRAILER} entry)")
    return data[offset : offset + size]


def _hex_fields(raw: bytes) -> list[int]:
    fields = []
    for i in range(0, len(raw), 8):
        chunk = raw[i : i + 8]
        if not _HEX8.fullmatch(chunk):
            raise CpioError("a newc header field is not 8 hexadecimal digits")
        fields.append(int(chunk, 16))
    return fields


def _octal(raw: bytes) -> int:
    if not _OCTAL.fullmatch(raw):
        raise CpioError("an odc header field is not octal digits")
    return int(raw, 8)


def _header(fmt: str, data: bytes, offset: int) -> _Header:
    if fmt in ("newc", "newc-crc"):
        raw = _need(data, offset, _NEWC_HEADER, "a header")
        if raw[:6] != (NEWC if fmt == "newc" else NEWC_CRC):
            raise CpioError(f"no newc magic at byte {offset}")
        (_ino, mode, _uid, _gid, nlink, _mtime, filesize, _dmaj, _dmin, _rmaj, _rmin, namesize,
         check) = _hex_fields(raw[6:])  # fmt: skip
        return _Header(mode, nlink, namesize, filesize, check if fmt == "newc-crc" else None,
                       _NEWC_HEADER, 4)  # fmt: skip
    if fmt == "odc":
        raw = _need(data, offset, _ODC_HEADER, "a header")
        if raw[:6] != ODC:
            raise CpioError(f"no odc magic at byte {offset}")
        mode = _octal(raw[18:24])
        nlink = _octal(raw[36:42])
        namesize = _octal(raw[59:65])
        filesize = _octal(raw[65:76])
        return _Header(mode, nlink, namesize, filesize, None, _ODC_HEADER, 1)
    raw = _need(data, offset, _BINARY_HEADER, "a header")
    words = struct.unpack("<13H" if fmt == "binary-le" else ">13H", raw)
    if words[0] != 0o070707:
        raise CpioError(f"no binary cpio magic at byte {offset}")
    mode, nlink, namesize = words[3], words[6], words[10]
    filesize = (words[11] << 16) | words[12]  # the most significant word first
    return _Header(mode, nlink, namesize, filesize, None, _BINARY_HEADER, 2)


def _align(offset: int, align: int) -> int:
    return offset + (-offset % align)


def _name(raw: bytes) -> str:
    if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
        raise CpioError("an entry name is not one NUL-terminated string")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CpioError("an entry name is not UTF-8") from exc


def clean_name(name: str) -> str:
    """The archive name as a relative path ("./x" and "x" are the same file);
    CpioError for an absolute name, `..`, or an empty component. "." is returned as is."""
    path = name
    while path.startswith("./"):
        path = path[2:]
    if path in (".", ""):
        return "."
    if path.startswith("/"):
        raise CpioError(f"entry {_shown(name)} has an absolute name")
    if _CONTROL.search(path):
        raise CpioError(f"entry {_shown(name)} has control characters in its name")
    parts = path.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        raise CpioError(f"entry {_shown(name)} climbs out with '..'")
    if any(part in ("", ".") for part in parts):
        raise CpioError(f"entry {_shown(name)} has an empty or '.' path component")
    return "/".join(parts)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
    }
    return kinds.get(stat.S_IFMT(mode), f"of unknown type {stat.S_IFMT(mode):o}")


def parse_archive(
    data: bytes,
    *,
    file_max: int = FILE_MAX,
    total_max: int = TOTAL_MAX,
    entries_max: int = ENTRIES_MAX,
) -> CpioArchive:
    """The regular files of the archive at the start of `data` (see the module docstring).

    Raises CpioError, and nothing else, for anything this reader does not accept;
    CpioTruncated when `data` ends before the trailer.
    """
    fmt = sniff(data[:MAGIC_BYTES])
    if fmt is None:
        if 0 < len(data) < MAGIC_BYTES and any(m.startswith(data) for m in (NEWC, NEWC_CRC, ODC)):
            raise CpioTruncated("the archive ends inside its first header")
        raise CpioError("not a cpio archive (no newc, odc or binary magic at byte 0)")
    files: dict[str, bytes] = {}
    offset = total = entries = 0
    while True:
        entries += 1
        if entries > entries_max + 1:  # the trailer is an entry too
            raise CpioError(f"more than {entries_max} entries")
        head = _header(fmt, data, offset)
        if not 1 <= head.namesize <= NAME_MAX:
            raise CpioError(f"an entry name size of {head.namesize} at byte {offset}")
        name_at = offset + head.length
        name = _name(_need(data, name_at, head.namesize, "an entry name"))
        data_at = _align(name_at + head.namesize, head.align)
        if name == TRAILER:
            # The padding after the trailer is not required: an archive cut right after
            # its last name is complete.
            end = max(name_at + head.namesize, min(_align(data_at + head.filesize, head.align), len(data)))
            return CpioArchive(fmt, files, end, hashlib.sha256(data[:end]).hexdigest())
        path = clean_name(name)
        mode = head.mode
        if stat.S_ISDIR(mode):
            if head.filesize:
                raise CpioError(f"directory entry {_shown(name)} has data")
            offset = data_at
            continue
        if not stat.S_ISREG(mode):
            raise CpioError(f"entry {_shown(name)} is {_kind(mode)}, not a regular file")
        if head.nlink > 1:
            raise CpioError(f"entry {_shown(name)} is a hard link ({head.nlink} links)")
        if path == ".":
            raise CpioError("a regular file named '.'")
        if head.filesize > file_max:
            raise CpioError(f"entry {_shown(name)} is larger than {file_max} bytes ({head.filesize})")
        total += head.filesize
        if total > total_max:
            raise CpioError(f"the files together are larger than {total_max} bytes")
        if path in files:
            raise CpioError(f"entry {_shown(name)} appears twice")
        body = _need(data, data_at, head.filesize, f"the data of {_shown(name)}")
        if head.check is not None and sum(body) & 0xFFFFFFFF != head.check:
            raise CpioError(f"entry {_shown(name)} fails its newc checksum")
        files[path] = body
        offset = _align(data_at + head.filesize, head.align)
