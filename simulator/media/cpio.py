"""The illumos metadata-agent's raw CPIO device: a `newc` archive written from
LBA 0 of a disk, no filesystem. Files: nodename, authorized_keys, config.toml,
firstboot.sh (all optional).

newc is a plain text-header format (magic 070701, 13 eight-digit hex
fields, name, 4-byte alignment); writing it here avoids depending on the
host's cpio(1). Tests read it back with `cpio -t`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..scenario import Scenario

SECTOR = 512


def _entry(name: str, data: bytes, mode: int, ino: int, mtime: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def newc_archive(files: dict[str, tuple[bytes, int]], mtime: int | None = None) -> bytes:
    """{"name": (bytes, mode)} -> a newc archive ending with TRAILER!!!."""
    when = int(time.time()) if mtime is None else mtime
    out = b"".join(_entry(name, data, 0o100000 | mode, i + 1, when)
                   for i, (name, (data, mode)) in enumerate(sorted(files.items())))
    return out + _entry("TRAILER!!!", b"", 0, 0, 0)


def cpio_files(scn: Scenario) -> dict[str, tuple[bytes, int]]:
    files: dict[str, tuple[bytes, int]] = {
        "nodename": ((scn.short_hostname + "\n").encode(), 0o644),
    }
    keys = [k.authorized_line() for _, k in scn.all_keys()]
    if keys:
        files["authorized_keys"] = (("\n".join(keys) + "\n").encode(), 0o600)
    cfg = (scn.overrides.get("cpio") or {}).get("config.toml")
    if cfg is None and scn.interfaces and not scn.interfaces[0].dhcp:
        cfg = "[network]\nskip = true\n"
    if cfg is not None:
        files["config.toml"] = (str(cfg).encode(), 0o644)
    script = scn.scripts.startup
    if script is not None and script.startswith("#!"):
        files["firstboot.sh"] = (script.encode(), 0o755)
    return files


def build_cpio_device(scn: Scenario, out: Path, size: int | None = None) -> Path:
    """A raw disk image starting with the archive, padded to whole sectors
    (or to `size` bytes, for a fixed-size virtual disk)."""
    data = newc_archive(cpio_files(scn))
    total = max(size or 0, len(data) + (-len(data) % SECTOR))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data + b"\0" * (total - len(data)))
    return out
