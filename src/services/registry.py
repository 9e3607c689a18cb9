"""The subsystems the agent runs, in the order a pass runs them."""

from __future__ import annotations

from guestagent.services.subsystem import Subsystem


def all_subsystems() -> list[Subsystem]:
    # Fresh instances each call: subsystems keep per-process memory (what was logged,
    # the last clock token), and an embedding program may want its own set.
    from guestagent.services.accounts import AccountsSubsystem

    return [AccountsSubsystem()]
