"""The .deb itself: what a Debian 12 user installs (no VM needed, so these are quick)."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
    for package in ("python3-requests", "python3-attr", "python3-pyroute2"):
        assert package in depends


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
