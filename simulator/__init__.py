"""guestsim: a metadata simulator for every platform the agent speaks to.

It plays the cloud; it never imports the agent (`guestagent`).
"""

from .faults import Fault, FaultError
from .scenario import Fleet, Scenario, ScenarioError, load_scenario
from .sim import Simulator

__all__ = ["Fault", "FaultError", "Fleet", "Scenario", "ScenarioError", "Simulator",
           "load_scenario"]
