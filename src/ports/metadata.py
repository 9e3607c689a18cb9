"""Where instance metadata comes from: one port for every platform."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import attrs

from guestagent.domain.metadata import InstanceMetadata


@attrs.frozen
class Snapshot:
    """One consistent view of the metadata and the version tag it came with.

    `etag` is the platform's own version tag where it has one (GCE), else a
    digest of the content: equal tags mean nothing changed.
    """

    metadata: InstanceMetadata
    etag: str


class MetadataUnavailable(Exception):
    """The source could not answer (down, timing out, answering garbage)."""


class MetadataDisabled(MetadataUnavailable):
    """The platform says its metadata service is switched off (EC2's 403 on the token
    PUT): asking again will not help, so callers stop instead of retrying."""


class MetadataSource(Protocol):
    """A platform's transport: fetch, follow changes, stop."""

    platform: str

    def get(self) -> Snapshot:
        """Fetch the current metadata now; raises MetadataUnavailable."""
        ...

    def watch(self, last_etag: str | None) -> Iterator[Snapshot]:
        """Yield a snapshot whenever the metadata differs from `last_etag`.

        Long-polls where the platform can, polls elsewhere; retries with
        backoff internally; returns only when `close()` is called (or the
        platform disabled its service).
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
