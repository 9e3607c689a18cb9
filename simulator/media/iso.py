"""ISO9660 images with Rock Ridge and Joliet, built by pycdlib.

Rock Ridge keeps the long lower-case names cloud-init and waagent look for
(`meta_data.json`, `ovf-env.xml`); the ISO9660 8.3 names are derived and
only have to be unique.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pycdlib


def _clean(text: str, limit: int) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", text.upper())[:limit] or "_"


def _iso_name(name: str, taken: set[str], is_dir: bool) -> str:
    """A unique ISO9660 level-1 (8.3) name for `name` within one directory."""
    if not is_dir and "." in name:
        stem, _, ext = name.rpartition(".")
        ext = "." + _clean(ext, 3)
    else:
        stem, ext = name, ""
    base = _clean(stem, 8)
    candidate, counter = base + ext, 1
    while candidate in taken:
        suffix = str(counter)
        candidate = base[: 8 - len(suffix)] + suffix + ext
        counter += 1
    taken.add(candidate)
    return candidate


def build_iso(files: dict[str, bytes], out: Path, label: str) -> Path:
    """Write an ISO holding `files` ({"dir/name": bytes}) with volume `label`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=label, sys_ident="LINUX", joliet=3,
            rock_ridge="1.09")
    dirs: dict[str, str] = {"": ""}  # posix dir -> iso dir path
    taken: dict[str, set[str]] = {"": set()}
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            posix = "/".join(parts[:depth])
            if posix in dirs:
                continue
            parent = "/".join(parts[: depth - 1])
            name = _iso_name(parts[depth - 1], taken[parent], is_dir=True)
            iso_dir = f"{dirs[parent]}/{name}"
            iso.add_directory(iso_dir, rr_name=parts[depth - 1], joliet_path="/" + posix)
            dirs[posix] = iso_dir
            taken[posix] = set()
        parent = "/".join(parts[:-1])
        name = _iso_name(parts[-1], taken[parent], is_dir=False)
        data = files[path]
        iso.add_fp(io.BytesIO(data), len(data), f"{dirs[parent]}/{name};1", rr_name=parts[-1],
                   joliet_path="/" + path.strip("/"), file_mode=0o100444)
    out.parent.mkdir(parents=True, exist_ok=True)
    iso.write(str(out))
    iso.close()
    return out


def read_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    """(volume label, {"dir/name": bytes}) by Rock Ridge names: for tests and checks."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    found: dict[str, bytes] = {}
    for dirname, _dirs, names in iso.walk(rr_path="/"):
        for name in names:
            full = f"{dirname.rstrip('/')}/{name}"
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=full)
            found[full.lstrip("/")] = buf.getvalue()
    iso.close()
    return label, found
