"""Provisioning media built from a scenario: ISO images (OpenStack config
drive, Azure OVF DVD, NoCloud cidata), Azure's UDF-only OVF DVD, a NoCloud
seed directory, and the illumos raw CPIO device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..scenario import Fleet, Scenario, ScenarioLike, load_scenario
from .configdrive import build_config_drive
from .cpio import build_cpio_device
from .nocloud import build_cidata_iso, build_seed_dir
from .ovf import build_ovf_iso, build_ovf_udf

BUILDERS: dict[str, Callable[[Scenario, Path], Path]] = {
    "config-drive": build_config_drive,
    "azure-ovf": build_ovf_iso,
    "azure-ovf-udf": build_ovf_udf,
    "nocloud-iso": build_cidata_iso,
    "nocloud-dir": build_seed_dir,
    "cpio": build_cpio_device,
}


def build_media(kind: str, scenario: ScenarioLike, out: Path) -> Path:
    """Build `kind` (one of BUILDERS) for the scenario at `out`."""
    scn = load_scenario(scenario)
    if isinstance(scn, Fleet):
        raise ValueError("media are built for one VM, not a fleet")
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown media kind {kind!r}; one of {', '.join(BUILDERS)}") from None
    return builder(scn, out)


__all__ = ["BUILDERS", "build_cidata_iso", "build_config_drive", "build_cpio_device",
           "build_media", "build_ovf_iso", "build_ovf_udf", "build_seed_dir"]
