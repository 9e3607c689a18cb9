"""The subsystems the agent runs, in the order a pass runs them."""

from __future__ import annotations

from guestagent.services.subsystem import Subsystem


def all_subsystems() -> list[Subsystem]:
    # Fresh instances each call: subsystems keep per-process memory (what was logged,
    # the last clock token), and an embedding program may want its own set.
    from guestagent.services.accounts import AccountsSubsystem
    from guestagent.services.clock import ClockSubsystem
    from guestagent.services.hostname import HostnameSubsystem
    from guestagent.services.instance_setup import InstanceSetupSubsystem
    from guestagent.services.nics import NicsSubsystem
    from guestagent.services.oslogin import OsLoginSubsystem
    from guestagent.services.routes import RoutesSubsystem

    # Host keys first (sshd may already be waiting), then who may log in; NICs
    # before routes, because the kernel refuses a route on a link that is down.
    return [
        InstanceSetupSubsystem(),
        AccountsSubsystem(),
        OsLoginSubsystem(),
        NicsSubsystem(),
        RoutesSubsystem(),
        HostnameSubsystem(),
        ClockSubsystem(),
    ]
