"""Where instance metadata comes from: one port for every platform."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import attrs

from guestagent.domain.metadata import InstanceMetadata


@attrs.frozen
class Snapshot:
    """One consistent view of the metadata and the version tag it came with."""

    metadata: InstanceMetadata
    etag: str


class MetadataUnavailable(Exception):
    """The source could not answer (down, timing out, answering garbage)."""


class MetadataSource(Protocol):
    def get(self) -> Snapshot:
        """Fetch the current metadata now; raises MetadataUnavailable."""
        ...

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        """Yield a snapshot whenever the metadata differs from `last_etag`.

        Retries with backoff internally; returns only when `close()` is called.
        """
        ...

    def close(self) -> None:
        """Stop any pending watch promptly (used on SIGTERM)."""
        ...


class GuestAttributes(Protocol):
    """The platform's read-write channel (GCE guest attributes)."""

    def put_guest_attribute(self, key: str, value: str) -> None:
        """Write `namespace/key`; raises MetadataUnavailable."""
        ...
