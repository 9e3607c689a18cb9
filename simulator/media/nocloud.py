"""NoCloud seed: a directory (`/var/lib/cloud/seed/nocloud/` layout) or an
ISO9660 volume labelled `cidata`, with the same files the `nocloud`
platform serves over HTTP."""

from __future__ import annotations

from pathlib import Path

from ..platforms.nocloud import seed_files
from ..scenario import Scenario
from .iso import build_iso

LABEL = "cidata"


def build_seed_dir(scn: Scenario, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, content in seed_files(scn).items():
        (out / name).write_text(content, encoding="utf-8")
    return out


def build_cidata_iso(scn: Scenario, out: Path) -> Path:
    return build_iso({k: v.encode() for k, v in seed_files(scn).items()}, out, LABEL)
