"""The one shape every subsystem has, so the daemon can run them side by side."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import attrs

from guestagent.domain.metadata import InstanceMetadata
from guestagent.services.context import Context


@attrs.frozen
class Outcome:
    """What one reconcile pass did: descriptions of actions, and failures."""

    subsystem: str
    actions: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    # The subsystem wants to run again at this time even without a metadata change
    # (an SSH key expiring, for instance).
    wake_at: datetime | None = None
    # True when config (or metadata) had the subsystem switched off for this pass.
    skipped: bool = False
    # Why the subsystem kept its state: inputs it acts on could not be read (Rejection.holds).
    held: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


class Subsystem(Protocol):
    name: str

    def enabled(self, ctx: Context, metadata: InstanceMetadata) -> bool:
        """False when config (or metadata, e.g. OS Login for accounts) turns it off."""
        ...

    def inputs(self, metadata: InstanceMetadata) -> object:
        """The part of metadata this subsystem depends on (hashable/comparable).

        The daemon runs reconcile only when this changed since the last
        successful pass, or when a wake time has come.
        """
        ...

    def reconcile(self, ctx: Context, metadata: InstanceMetadata) -> Outcome:
        """Observe, plan, apply (or only plan when ctx.dry_run). Must not raise for
        expected failures: report them in Outcome.failures."""
        ...
