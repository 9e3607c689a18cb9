"""Shared fixtures for the simulator's own tests (everything talks to loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from guestsim import Simulator

SCENARIOS = Path(__file__).resolve().parents[2] / "simulator" / "scenarios"
DEMO = SCENARIOS / "demo.yaml"
FLAVOR = {"Metadata-Flavor": "Google"}


@pytest.fixture
def demo_sim() -> Iterator[Simulator]:
    with Simulator(DEMO, platforms=("gce",)) as sim:
        yield sim


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s
