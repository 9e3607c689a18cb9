"""docs/library.md's example program, run as written: the guide cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestsim import Simulator
from tests.integration.conftest import passwd_entry, read, scenario
from tests.keys import ED25519

pytestmark = pytest.mark.root
EXAMPLE = Path(__file__).resolve().parents[2] / "docs/examples/embed_accounts.py"


def test_the_embedding_example_plans_then_applies_through_its_own_runner(sandbox: Path) -> None:
    with Simulator(scenario({"alice": [ED25519]}), platforms=("ec2",)) as sim:
        base = [sys.executable, str(EXAMPLE), "--platform", "ec2", "--metadata-url", sim.url("ec2"),
                "--root", str(sandbox), "--default-user", "debian"]  # fmt: skip
        planned = subprocess.run(base, capture_output=True, text=True, check=False, timeout=60)
        assert planned.returncode == 0, planned.stderr
        assert "plan: create user debian in groups adm,sudo,guestagent-sudoers" in planned.stdout
        assert passwd_entry(sandbox, "debian") is None  # planning changed nothing
        applied = subprocess.run([*base, "--apply"], capture_output=True, text=True, check=False, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"runs: useradd --prefix {sandbox} " in applied.stdout
    assert ED25519 in (read(sandbox / "home/debian/.ssh/authorized_keys") or "")
