"""The simulator plays the cloud: nothing under simulator/ may import the agent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SIMULATOR = Path(__file__).resolve().parents[2] / "simulator"


def test_no_module_imports_guestagent() -> None:
    offenders = []
    for path in SIMULATOR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(SIMULATOR)}: {n}" for n in names
                          if n == "guestagent" or n.startswith("guestagent.")]
    assert offenders == []


def test_running_a_simulator_loads_no_agent_code() -> None:
    code = (
        "import sys, requests\n"
        "from guestsim import Simulator\n"
        "with Simulator(None, platforms=('gce','ec2','openstack','azure','do','nocloud')) as s:\n"
        "    requests.get(s.url() + 'instance/id', headers={'Metadata-Flavor': 'Google'})\n"
        "from guestsim.media import build_media\n"
        "import guestsim.cli, guestsim.control, guestsim.bench\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'guestagent'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
