"""The platform's fabric, where a VM reports its provisioning health (Azure's WireServer)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from guestagent.domain.platforms.azure import HealthStatus


@runtime_checkable
class FabricHealth(Protocol):
    def report_health(self, status: HealthStatus) -> None:
        """Deliver one health report (Ready, or NotReady with a reason); raises
        MetadataUnavailable when the fabric did not accept it (the caller retries later)."""
        ...
