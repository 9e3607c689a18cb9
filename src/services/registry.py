"""The subsystems the agent runs, in the order a pass runs them."""

from __future__ import annotations

from guestagent.services.subsystem import Subsystem

# Subsystems in one lane run in this order; lanes run side by side (see Scheduler).
# Accounts and OS Login share a lane: both decide who may log in.
LANES = (("instance_setup",), ("accounts", "oslogin"), ("nics", "routes"), ("hostname",), ("clock",))


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

    # NICs before routes (same lane): the kernel refuses a route on a link that is down.
    return [
        InstanceSetupSubsystem(),
        AccountsSubsystem(),
        OsLoginSubsystem(),
        NicsSubsystem(),
        RoutesSubsystem(),
        HostnameSubsystem(),
        ClockSubsystem(),
    ]
