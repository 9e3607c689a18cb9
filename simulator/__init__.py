"""guestsim: a metadata simulator for every platform the agent speaks to.

It plays the cloud; it never imports the agent (`guestagent`).

The names below are imported on first use (PEP 562), not when the package is: every
`guestsim.*` import runs this file first, and the `guestsim` command must get as far
as its main() without the `sim` extra (PyYAML, ...) to say what is missing instead of
dying in a traceback. mypy sees plain imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .faults import Fault, FaultError
    from .scenario import Fleet, Scenario, ScenarioError, load_scenario
    from .sim import Simulator, free_port

__all__ = ["Fault", "FaultError", "Fleet", "Scenario", "ScenarioError", "Simulator",
           "free_port", "load_scenario"]

_HOME = {
    "Fault": "faults", "FaultError": "faults",
    "Fleet": "scenario", "Scenario": "scenario", "ScenarioError": "scenario",
    "load_scenario": "scenario",
    "Simulator": "sim", "free_port": "sim",
}

if not TYPE_CHECKING:  # hidden from mypy, so a misspelt name stays a type error

    def __getattr__(name: str) -> Any:
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
