"""The .deb itself: what a Debian 12 user installs (no VM needed, so these are quick)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from guestsim.vm import rootfs


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_files(deb: Path) -> set[str]:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1].removeprefix(".") for line in listing.splitlines()}


def test_depends_on_debian_python_libraries(agent_deb: Path):
    depends = deb_field(agent_deb, "Depends")
    # python3-yaml and python3-pycdlib: NoCloud's YAML seed files and cidata ISO.
    for package in ("python3-requests", "python3-attr", "python3-pyroute2", "python3-yaml", "python3-pycdlib"):
        assert package in depends


def test_guest_image_has_every_dependency(agent_deb: Path):
    """The image layer installs the .deb with `dpkg -i`, which fetches nothing: each
    Depends must already be in the base rootfs, or the image build fails minutes later."""
    depends = [d.split("(")[0].strip() for d in deb_field(agent_deb, "Depends").split(",")]
    named = [d for d in depends if d.startswith("python3-")]
    missing = [d for d in named if d not in rootfs.GUEST_PACKAGES]
    assert named and missing == [], f"add to simulator/vm/rootfs.py GUEST_PACKAGES: {missing}"


def test_ships_agent_cli_units_and_config_but_not_the_simulator(agent_deb: Path):
    files = deb_files(agent_deb)
    assert "/usr/bin/guestagent" in files
    assert "/etc/default/instance_configs.cfg" in files
    for unit in ("guestagent", "guestagent-startup-scripts", "guestagent-shutdown-scripts"):
        assert f"/lib/systemd/system/{unit}.service" in files
    assert "/usr/lib/python3/dist-packages/guestagent/__init__.py" in files
    assert not [f for f in files if "guestsim" in f or "simulator" in f]


def test_config_file_is_a_conffile(agent_deb: Path, tmp_path: Path):
    subprocess.run(["dpkg-deb", "--control", str(agent_deb), str(tmp_path)], check=True)
    assert (tmp_path / "conffiles").read_text().split() == ["/etc/default/instance_configs.cfg"]
