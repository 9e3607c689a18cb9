"""`guestagent scripts KIND` from the command line, against the simulator on loopback."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from guestagent.entrypoints import cli, scripts_cmd


def _parse(argv: list[str]) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="guestagent")
    sub = top.add_subparsers(dest="command", required=True)
    scripts_cmd.add_parser(sub, cli._common())
    return top.parse_args(argv)


def test_startup_scripts_from_the_simulator(
    tmp_path: Path, make_simulator: object, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    sim = make_simulator(  # type: ignore[operator]
        {"scripts": {"startup": f"echo hello-from-sim; touch {marker}"}}, platforms=("gce",)
    )
    root = tmp_path / "root"
    root.mkdir()
    base = ["scripts", "startup", "--metadata-url", sim.url("gce"), "--root", str(root)]

    # a sandbox root only lists the scripts: they would run on this machine
    with caplog.at_level(logging.INFO, logger="guestagent"):
        assert scripts_cmd.run(_parse([*base, "--wait", "5"])) == 0
    assert not marker.exists()
    assert any("would run startup-script" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="guestagent"):
        code = scripts_cmd.run(_parse([*base, "--wait", "5", "--run-on-this-machine"]))
    assert code == 0
    assert marker.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert "startup-script: hello-from-sim" in messages
    assert "startup-script exit status 0" in messages


def test_no_metadata_exits_2(tmp_path: Path) -> None:
    # a closed port on loopback: nothing listens there
    args = _parse(
        ["scripts", "shutdown", "--metadata-url", "http://127.0.0.1:9/computeMetadata/v1/",
         "--root", str(tmp_path), "--wait", "0.5", "--platform", "gce"]
    )  # fmt: skip
    assert scripts_cmd.run(args) == scripts_cmd.EXIT_NO_METADATA
