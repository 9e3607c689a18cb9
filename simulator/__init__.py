"""guestsim: a metadata simulator for every platform the agent speaks to.

It plays the cloud; it never imports the agent (`guestagent`).
"""

from .faults import Fault, FaultError
from .scenario import Fleet, Scenario, ScenarioError, load_scenario
from .sim import Simulator, free_port

__all__ = ["Fault", "FaultError", "Fleet", "Scenario", "ScenarioError", "Simulator",
           "free_port", "load_scenario"]
