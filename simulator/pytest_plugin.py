"""pytest plugin (entry point `pytest11: guestsim`): a running simulator in one line.

    def test_keys(make_simulator):
        sim = make_simulator("demo.yaml", platforms=("gce",))
        ...  # sim.url("gce"), sim.set(...), sim.add_fault(...)

    def test_default(guestsim):          # the bundled demo scenario on GCE
        assert guestsim.get("instance/name") == "demo-vm"

A bare file name is looked up in the bundled scenarios (guestsim/scenarios/).
Every simulator a test made is stopped at teardown, also on failure. The
simulator modules are imported only when a fixture is used, so this plugin
costs nothing to test runs that never ask for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .sim import Simulator

BUNDLED = Path(__file__).resolve().parent / "scenarios"

MakeSimulator = Callable[..., "Simulator"]


def bundled_scenario(name: str) -> Path:
    """Path of a scenario shipped with guestsim (`demo.yaml`, `fleet.yaml`, ...)."""
    path = BUNDLED / name
    if not path.exists():
        raise FileNotFoundError(f"no bundled scenario {name!r} in {BUNDLED}")
    return path


def _resolve(scenario: Any) -> Any:
    if isinstance(scenario, str) and "/" not in scenario and not Path(scenario).exists():
        return bundled_scenario(scenario)
    return scenario


@pytest.fixture
def make_simulator() -> Iterator[MakeSimulator]:
    from .sim import Simulator

    started: list[Simulator] = []

    def factory(scenario: Any = "demo.yaml", **kwargs: Any) -> Simulator:
        sim = Simulator(_resolve(scenario), **kwargs).start()
        started.append(sim)
        return sim

    yield factory
    for sim in reversed(started):
        sim.stop()


@pytest.fixture
def guestsim(make_simulator: MakeSimulator) -> Simulator:
    return make_simulator("demo.yaml", platforms=("gce",))
