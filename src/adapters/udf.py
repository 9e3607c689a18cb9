"""UDF volumes (Azure's provisioning DVD), read without mounting: a small bounded reader.

Azure hands the VM its ovf-env.xml on a DVD formatted in UDF (cloud-init's
and azure-init's documentation say so; udftools #65 shows the kernel side).
pycdlib reads UDF only on ISO9660/UDF bridge discs (it insists on an ISO9660
primary volume descriptor), so a UDF-only disc needs a reader of its own. A
provisioning DVD holds one small file in its root directory; this reader
covers what such a disc uses (ECMA-167 / OSTA UDF 1.02 to 2.60 without a
metadata partition): the volume recognition sequence, the anchor at sector
256, the main volume descriptor sequence (partition and logical volume
descriptors), the file set descriptor, file entries and extended file entries
with short, long or embedded allocation descriptors, and file identifier
descriptors with OSTA compressed-unicode names.

Everything is bounded: descriptor tags are checked (identifier, checksum,
location), directories are read up to 1 MiB, a file up to the caller's limit,
at most 4096 extents, and nothing is followed outside the partition. Any
failure is a media.MediaError with a reason safe to log.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from guestagent.adapters.media import FileTooLarge, MediaError

SECTOR = 2048
VRS_START = 16 * SECTOR
VRS_MAX = 64  # descriptors looked at in the recognition sequence
ANCHOR_SECTOR = 256
DIR_MAX = 1024 * 1024
MAX_EXTENTS = 4096
MAX_VDS = 256

TAG_PVD, TAG_ANCHOR, TAG_PARTITION, TAG_LVD, TAG_TERMINATOR = 1, 2, 5, 6, 8
TAG_FSD, TAG_FID, TAG_FE, TAG_EFE = 256, 257, 261, 266


def _read(fp: BinaryIO, offset: int, size: int) -> bytes:
    fp.seek(offset)
    data = fp.read(size)
    if len(data) != size:
        raise MediaError(f"UDF: short read at byte {offset} (the volume ends early)")
    return data


def _tag(block: bytes, wanted: tuple[int, ...], location: int | None) -> int:
    """The descriptor tag's identifier, after its checksum (and location) are checked."""
    if len(block) < 16:
        raise MediaError("UDF: descriptor cut short")
    ident, _version, checksum = struct.unpack_from("<HHB", block, 0)
    total = (sum(block[0:4]) + sum(block[5:16])) & 0xFF
    if total != checksum:
        raise MediaError(f"UDF: descriptor tag checksum wrong (tag {ident})")
    if ident not in wanted:
        raise MediaError(f"UDF: expected descriptor {wanted[0]}, found {ident}")
    (where,) = struct.unpack_from("<I", block, 12)
    if location is not None and where != location:
        raise MediaError(f"UDF: descriptor {ident} claims block {where}, read at {location}")
    return int(ident)


def _dstring(field: bytes) -> str:
    """A dstring (last byte: length used) in OSTA compressed unicode."""
    if not field:
        return ""
    used = field[-1]
    return _cs0(field[: min(used, len(field) - 1)])


def _cs0(data: bytes) -> str:
    if not data:
        return ""
    kind, body = data[0], data[1:]
    if kind in (8, 254):
        return body.decode("latin-1")
    if kind in (16, 255):
        return body[: len(body) // 2 * 2].decode("utf-16-be", "replace")
    raise MediaError("UDF: a name is not in OSTA compressed unicode")


def is_udf(fp: BinaryIO) -> bool:
    """A UDF volume recognition sequence (BEA01 ... NSR02/NSR03) at byte 32768."""
    began = False
    for index in range(VRS_MAX):
        try:
            block = _read(fp, VRS_START + index * SECTOR, 7)
        except MediaError:
            return False
        ident = block[1:6]
        if ident == b"BEA01":
            began = True
        elif ident in (b"NSR02", b"NSR03"):
            return began
        elif ident == b"TEA01" or ident not in (b"CD001", b"CDW02", b"BOOT2"):
            return False
    return False


class UdfVolume:
    """An opened UDF volume: `label` and `read(path, limit)` (a media.VolumeReader)."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        if not is_udf(fp):
            raise MediaError("not a UDF volume (no volume recognition sequence)")
        anchor = _read(fp, ANCHOR_SECTOR * SECTOR, SECTOR)
        _tag(anchor, (TAG_ANCHOR,), ANCHOR_SECTOR)
        length, location = struct.unpack_from("<II", anchor, 16)
        self.volume_label = ""
        self.label = ""
        partitions: dict[int, tuple[int, int]] = {}
        lvd: bytes | None = None
        for index in range(min(MAX_VDS, max(1, length // SECTOR))):
            sector = location + index
            block = _read(fp, sector * SECTOR, SECTOR)
            ident = struct.unpack_from("<H", block, 0)[0]
            if ident == 0:
                break
            _tag(block, (ident,), sector)
            if ident == TAG_TERMINATOR:
                break
            if ident == TAG_PVD:
                self.volume_label = _dstring(block[24:56])
            elif ident == TAG_PARTITION:
                (number,) = struct.unpack_from("<H", block, 22)
                start, size = struct.unpack_from("<II", block, 188)
                partitions[number] = (start, size)
            elif ident == TAG_LVD and lvd is None:
                lvd = block
        if lvd is None or not partitions:
            raise MediaError("UDF: no logical volume or partition descriptor")
        (block_size,) = struct.unpack_from("<I", lvd, 212)
        if block_size != SECTOR:
            raise MediaError(f"UDF: logical block size {block_size} is not supported")
        self.label = _dstring(lvd[84:212]) or self.volume_label
        maps_count = struct.unpack_from("<I", lvd, 268)[0]
        self._maps: list[tuple[int, int]] = []  # partition reference -> (start, length)
        offset = 440
        for _ in range(min(maps_count, 16)):
            kind, size = lvd[offset], lvd[offset + 1]
            if kind != 1 or size != 6:
                raise MediaError("UDF: only type 1 partition maps are supported (no metadata partition)")
            (number,) = struct.unpack_from("<H", lvd, offset + 4)
            if number not in partitions:
                raise MediaError(f"UDF: partition map names missing partition {number}")
            self._maps.append(partitions[number])
            offset += size
        if not self._maps:
            raise MediaError("UDF: no partition map")
        _fsd_length, fsd_block, fsd_ref = struct.unpack_from("<IIH", lvd, 248)
        fsd = self._block(fsd_ref, fsd_block)
        _tag(fsd, (TAG_FSD,), fsd_block)
        _root_length, root_block, root_ref = struct.unpack_from("<IIH", fsd, 400)
        self._root = (root_ref, root_block)

    # -- blocks and extents

    def _block(self, ref: int, lbn: int) -> bytes:
        if ref >= len(self._maps):
            raise MediaError(f"UDF: partition reference {ref} out of range")
        start, size = self._maps[ref]
        if lbn >= size:
            raise MediaError("UDF: a block lies outside its partition")
        return _read(self._fp, (start + lbn) * SECTOR, SECTOR)

    def _extent(self, ref: int, lbn: int, length: int) -> bytes:
        start, size = self._maps[ref] if ref < len(self._maps) else (0, 0)
        blocks = -(-length // SECTOR)
        if ref >= len(self._maps) or lbn + blocks > size:
            raise MediaError("UDF: an extent lies outside its partition")
        return _read(self._fp, (start + lbn) * SECTOR, length)

    def _entry(self, ref: int, lbn: int) -> tuple[bool, int, bytes, int]:
        """(is directory, information length, allocation descriptors, allocation type) of an ICB."""
        block = self._block(ref, lbn)
        ident = _tag(block, (TAG_FE, TAG_EFE), lbn)
        file_type = block[27]
        (flags,) = struct.unpack_from("<H", block, 34)
        (length,) = struct.unpack_from("<Q", block, 56)
        if ident == TAG_FE:
            ea, ad = struct.unpack_from("<II", block, 168)
            base = 176
        else:
            ea, ad = struct.unpack_from("<II", block, 208)
            base = 216
        if base + ea + ad > SECTOR:
            raise MediaError("UDF: file entry descriptors overflow the block")
        return file_type == 4, int(length), block[base + ea : base + ea + ad], flags & 7

    def _content(self, ref: int, lbn: int, limit: int, name: str) -> tuple[bool, bytes]:
        is_dir, length, descriptors, kind = self._entry(ref, lbn)
        if length > limit:
            raise FileTooLarge(name, length, limit)
        if kind == 3:  # embedded in the entry
            return is_dir, descriptors[:length]
        data = bytearray()
        extents = 0
        pending = [(descriptors, ref)]
        while pending and len(data) < length:
            chunk, current_ref = pending.pop(0)
            step = 8 if kind == 0 else 16
            if kind not in (0, 1):
                raise MediaError("UDF: extended allocation descriptors are not supported")
            for offset in range(0, len(chunk) - step + 1, step):
                extents += 1
                if extents > MAX_EXTENTS:
                    raise MediaError(f"UDF: more than {MAX_EXTENTS} extents")
                raw_length, position = struct.unpack_from("<II", chunk, offset)
                part = current_ref
                if kind == 1:
                    (part,) = struct.unpack_from("<H", chunk, offset + 8)
                extent_type, size = raw_length >> 30, raw_length & 0x3FFFFFFF
                if size == 0:
                    break
                if extent_type == 3:  # the next block of allocation descriptors
                    pending.append((self._block(part, position)[16 : 16 + min(size, SECTOR - 16)], part))
                    break
                want = min(size, length - len(data))
                data += self._extent(part, position, want) if extent_type == 0 else bytes(want)
                if len(data) >= length:
                    break
        if len(data) < length:
            raise MediaError(f"UDF: {name} ends before its recorded length")
        return is_dir, bytes(data[:length])

    # -- directories

    def _children(self, ref: int, lbn: int, where: str) -> dict[str, tuple[bool, int, int]]:
        is_dir, data = self._content(ref, lbn, DIR_MAX, where or "/")
        if not is_dir:
            raise MediaError(f"UDF: {where or '/'} is not a directory")
        found: dict[str, tuple[bool, int, int]] = {}
        offset = 0
        while offset + 38 <= len(data):
            _tag(data[offset : offset + 16], (TAG_FID,), None)
            characteristics, name_length = data[offset + 18], data[offset + 19]
            _icb_length, icb_block, icb_ref = struct.unpack_from("<IIH", data, offset + 20)
            (iu_length,) = struct.unpack_from("<H", data, offset + 36)
            start = offset + 38 + iu_length
            raw_name = data[start : start + name_length]
            offset += 4 * ((38 + iu_length + name_length + 3) // 4)
            if characteristics & 0x0C:  # deleted or the parent entry
                continue
            name = _cs0(raw_name)
            found.setdefault(name, (bool(characteristics & 0x02), icb_ref, icb_block))
        return found

    def read(self, path: str, limit: int) -> bytes | None:
        """A file's bytes by path ("ovf-env.xml"), None when absent or a directory."""
        ref, lbn = self._root
        parts = [p for p in path.split("/") if p]
        try:
            for index, part in enumerate(parts):
                children = self._children(ref, lbn, "/".join(parts[:index]))
                entry = children.get(part)
                if entry is None:
                    return None
                is_dir, ref, lbn = entry
                if index == len(parts) - 1:
                    if is_dir:
                        return None
                    is_dir, data = self._content(ref, lbn, limit, path)
                    return None if is_dir else data
                if not is_dir:
                    return None
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise MediaError(f"UDF: {path}: malformed descriptors ({exc.__class__.__name__})") from exc
        return None

    def close(self) -> None:
        pass
