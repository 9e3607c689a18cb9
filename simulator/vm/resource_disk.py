"""Azure's resource disk as a raw image file, for a guest's extra writable disk (/dev/vdb).

Azure hands every VM with a temporary disk a disk holding one MBR partition
(type 7) with an NTFS volume labelled "Temporary Storage", whose root holds
DATALOSS_WARNING_README.txt only. This builds that layout in a plain file
with the host's ntfs-3g and util-linux (no loop device, nothing mounted):

    truncate -s 63M p.img; mkfs.ntfs -F -Q -L "Temporary Storage" p.img
    ntfscp -f p.img warn.txt DATALOSS_WARNING_README.txt
    truncate -s 1M res.img; cat p.img >> res.img; truncate -s 64M res.img
    printf 'label: dos\\nstart=2048, size=129024, type=7\\n' | sfdisk res.img

`extra_files` adds more files to the volume: a resource disk someone put data
on, which the agent must never format.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

LABEL = "Temporary Storage"
WARNING_NAME = "DATALOSS_WARNING_README.txt"
# Azure's text, shortened: what matters is the name and that it is the only file.
WARNING_TEXT = (
    "WARNING: THIS IS A TEMPORARY DISK.\r\n\r\n"
    "Any data stored on this drive is SUBJECT TO LOSS and THERE IS NO WAY TO RECOVER IT.\r\n"
)
TOOLS = ("mkfs.ntfs", "ntfscp", "sfdisk", "truncate")
MIB = 1024 * 1024
START_SECTOR = 2048  # 1 MiB, as Azure's partition starts
SECTOR = 512


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def build_resource_disk(
    out: Path, *, size_mb: int = 64, extra_files: Mapping[str, bytes] | None = None
) -> Path:
    """Write the resource disk image to `out` (`size_mb` MiB); return `out`."""
    if size_mb < 16:
        raise ValueError("a resource disk image needs at least 16 MiB")
    for name in extra_files or {}:
        if not name or "/" in name or name.startswith("-"):
            raise ValueError(f"a file in the volume's root, not {name!r}")
    part_bytes = (size_mb - 1) * MIB  # the partition runs from 1 MiB to the end
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guestsim-resdisk-") as tmp:
        part = Path(tmp) / "p.img"
        with part.open("wb") as f:
            f.truncate(part_bytes)
        subprocess.run(
            ["mkfs.ntfs", "-F", "-Q", "-L", LABEL, str(part)],
            check=True,
            capture_output=True,
        )
        files = {WARNING_NAME: WARNING_TEXT.encode(), **(extra_files or {})}
        for name, data in files.items():
            src = Path(tmp) / "file"
            src.write_bytes(data)
            subprocess.run(["ntfscp", "-f", str(part), str(src), name], check=True, capture_output=True)
        with out.open("wb") as disk:
            disk.truncate(START_SECTOR * SECTOR)
            disk.seek(START_SECTOR * SECTOR)
            with part.open("rb") as src_part:
                shutil.copyfileobj(src_part, disk, 1 << 20)
            disk.truncate(size_mb * MIB)
        table = f"label: dos\nstart={START_SECTOR}, size={part_bytes // SECTOR}, type=7\n"
        subprocess.run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
            input=table.encode(),
            check=True,
            capture_output=True,
        )
    return out
